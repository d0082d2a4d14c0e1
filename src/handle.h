/*
 * handle.h - Handle and TimerHandle: what call_soon() and call_later()
 * return, and what the ready and timer queues hold.
 *
 * They are subclasses of asyncio.Handle and asyncio.TimerHandle, so
 * isinstance() checks and asyncio's helpers that inspect handles accept
 * them, and they behave as asyncio's do (cancel(), cancelled(), when(),
 * get_context(), repr, ordering).  The base classes are Python classes with
 * __slots__; greenhub's data lives in a C struct placed after the base
 * layout (at gh_handle_data_offset, the same for both types), and the
 * underscore attributes (_callback, _args, _when, ...) are read-only
 * properties over it that shadow the unused base slots.
 */
#ifndef GH_HANDLE_H
#define GH_HANDLE_H

#include <Python.h>

#include "state.h"

typedef struct {
    PyObject *callback;         /* owned; NULL once cancelled */
    PyObject *args;             /* owned tuple, or NULL: no arguments / cancelled */
    PyObject *context;          /* owned contextvars.Context the callback runs in */
    PyObject *loop;             /* owned: the loop that made the handle */
    PyObject *source_traceback; /* owned or NULL; only made in debug mode */
    PyObject *repr;             /* owned or NULL: repr frozen by cancel() in debug mode */
    PyObject *when_obj;         /* owned or NULL: a timer's `when` as given, if not a float */
    PyObject *lock;             /* owned threading.RLock of a thread-safe handle, else NULL */
    double when;                /* a timer's deadline on the loop.time() clock */
    char cancelled;
    char scheduled; /* a timer the loop's timer queue holds */
} gh_handle_data;

/* Where gh_handle_data starts inside a handle object; set once by
 * gh_handle_types_init().  A plain C integer, the same for every
 * interpreter (it depends only on asyncio's classes). */
extern Py_ssize_t gh_handle_data_offset;

static inline gh_handle_data *
gh_hd(PyObject *h)
{
    return (gh_handle_data *)((char *)h + gh_handle_data_offset);
}

/* Makes st->HandleType and st->TimerHandleType and adds them to `mod`. */
int gh_handle_types_init(PyObject *mod, gh_state *st);

/* Makes a handle for callback(*args) in `context` (NULL or None: a copy of
 * the current context).  `tp` is st->HandleType or st->TimerHandleType; a
 * timer's deadline is set by the caller.  Returns a new reference. */
PyObject *gh_handle_new(gh_state *st, PyTypeObject *tp, PyObject *loop, PyObject *callback,
                        PyObject *const *args, Py_ssize_t nargs, PyObject *context);

/* Runs the callback in its context.  An exception other than SystemExit and
 * KeyboardInterrupt goes to the loop's exception handler, as asyncio does;
 * returns -1 (exception set) only for those two, or if reporting failed.  A
 * thread-safe handle holds its lock meanwhile, and does nothing if it was
 * cancelled by the time it has the lock (as asyncio's _ThreadSafeHandle). */
int gh_handle_run(gh_state *st, PyObject *h);

/* Cancels as Handle.cancel() does. */
int gh_handle_cancel(PyObject *h);

static inline int
gh_is_timer(gh_state *st, PyObject *h)
{
    return Py_IS_TYPE(h, st->TimerHandleType);
}

#endif /* GH_HANDLE_H */
