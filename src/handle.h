/*
 * handle.h - Handle and TimerHandle: what call_soon() and call_later()
 * return, and what the ready and timer queues hold.
 *
 * They behave as asyncio.Handle and asyncio.TimerHandle do (cancel(),
 * cancelled(), when(), get_context(), repr, comparisons) and expose the same
 * underscore attributes read-only, so asyncio's helpers that inspect handles
 * (format_helpers, the debug-mode slow-callback warning) work on them.
 */
#ifndef GH_HANDLE_H
#define GH_HANDLE_H

#include <Python.h>

#include "state.h"

typedef struct {
    PyObject_HEAD
    PyObject *callback;         /* owned; NULL once cancelled */
    PyObject *args;             /* owned tuple, or NULL: no arguments / cancelled */
    PyObject *context;          /* owned contextvars.Context the callback runs in */
    PyObject *loop;             /* owned: the loop that made the handle */
    PyObject *source_traceback; /* owned or NULL; only made in debug mode */
    PyObject *repr;             /* owned or NULL: repr frozen by cancel() in debug mode */
    PyObject *weakreflist;      /* managed by CPython's weakref machinery */
    char cancelled;
} gh_Handle;

typedef struct {
    gh_Handle base;
    double when;        /* deadline on the loop.time() clock */
    PyObject *when_obj; /* owned or NULL: `when` as given, if it was not a float */
    char scheduled;     /* 1 while the loop's timer queue holds it */
} gh_TimerHandle;

extern PyType_Spec gh_handle_spec;
extern PyType_Spec gh_timerhandle_spec;

/* Makes a handle for callback(*args) in `context` (NULL: a copy of the
 * current context).  `tp` is st->HandleType or st->TimerHandleType; a
 * TimerHandle's deadline is set by the caller.  Returns a new reference. */
gh_Handle *gh_handle_new(gh_state *st, PyTypeObject *tp, PyObject *loop,
                         PyObject *callback, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *context);

/* Runs the callback in its context.  An exception other than SystemExit and
 * KeyboardInterrupt goes to the loop's exception handler, as asyncio does;
 * returns -1 (exception set) only for those two, or if reporting failed. */
int gh_handle_run(gh_state *st, gh_Handle *h);

/* Cancels as Handle.cancel() does (also used by the loop on close). */
int gh_handle_cancel(gh_Handle *h);

static inline int
gh_is_timer(gh_state *st, PyObject *h)
{
    return Py_IS_TYPE(h, st->TimerHandleType);
}

#endif /* GH_HANDLE_H */
