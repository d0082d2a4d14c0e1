/*
 * watchdog.h - reports a callback or task step that holds the loop too long.
 * See watchdog.c.
 */
#ifndef GH_WATCHDOG_H
#define GH_WATCHDOG_H

#include <Python.h>
#include <stdatomic.h>

#include "state.h"

/* The watchdog's part of the loop (gh_Loop.watch).  `ticks` moves each time
 * the loop starts a callback or comes back from a blocking poll, and
 * `polling` is set while it waits in the poll: a native thread that sees
 * `ticks` stand still while the loop is not polling knows one callback has
 * held the loop since.  Written only by the loop's thread, read by the
 * watchdog thread without the GIL, hence atomics (relaxed: plain loads and
 * stores on the platforms greenhub supports). */
typedef struct {
    _Atomic(unsigned long) ticks;
    _Atomic(int) polling;
    PyObject *running_handle;    /* borrowed: the handle being run now, or NULL */
    PyThreadState *run_tstate;   /* borrowed: the thread running _run(), or NULL */
    double threshold;            /* seconds; 0 when the watchdog is off */
    PyObject *handler;           /* owned or NULL: set_watchdog()'s handler */
    struct gh_watchdog *running; /* owned (malloc) while the watchdog thread runs */
} gh_loop_watch;

/* A new callback starts, or the loop is back from a blocking poll: the
 * watchdog's sign of progress.  Only the loop's thread writes `ticks`, so a
 * relaxed load and store (no locked instruction) are enough. */
static inline void
gh_watch_tick(gh_loop_watch *w)
{
    unsigned long t = atomic_load_explicit(&w->ticks, memory_order_relaxed);
    atomic_store_explicit(&w->ticks, t + 1, memory_order_relaxed);
}

/* The run loop's side (run.c), inline because it is on the hot path: a
 * callback starts (the watchdog may report `h` if it holds the loop) and
 * ends; a poll that may block starts and ends. */
static inline void
gh_watch_callback_begin(gh_loop_watch *w, PyObject *h)
{
    gh_watch_tick(w);
    w->running_handle = h;
}

static inline void
gh_watch_callback_end(gh_loop_watch *w)
{
    w->running_handle = NULL;
}

static inline void
gh_watch_poll_begin(gh_loop_watch *w)
{
    atomic_store_explicit(&w->polling, 1, memory_order_relaxed);
}

static inline void
gh_watch_poll_end(gh_loop_watch *w)
{
    gh_watch_tick(w);
    atomic_store_explicit(&w->polling, 0, memory_order_relaxed);
}

/* The part's traverse and clear (the thread itself is joined before _run()
 * returns, so a loop being cleared or freed has none). */
static inline int
gh_watch_traverse(gh_loop_watch *w, visitproc visit, void *arg)
{
    Py_VISIT(w->handler);
    return 0;
}

static inline void
gh_watch_clear(gh_loop_watch *w)
{
    Py_CLEAR(w->handler);
}

/* _run() starts: records the running thread and starts the watchdog thread
 * if one is configured.  -1 with an exception set if it cannot start. */
int gh_watchdog_run_begin(gh_Loop *loop);

/* _run() ends (also on error; keeps a pending exception): stops and joins
 * the watchdog thread, releasing the GIL while it waits. */
void gh_watchdog_run_end(gh_Loop *loop);

/* The threshold the GREENHUB_WATCHDOG environment variable sets for a new loop
 * (0: off).  -1 with ValueError if it is not a number of seconds. */
int gh_watchdog_env_threshold(double *threshold);

/* Loop.set_watchdog() and Loop.get_watchdog(). */
PyObject *gh_loop_set_watchdog(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
PyObject *gh_loop_get_watchdog(PyObject *op, PyObject *ignored);

/* _core._check_watchdog_threshold(obj): raises what set_watchdog() would. */
PyObject *gh_check_watchdog_threshold(PyObject *module, PyObject *obj);

/* _core._watchdog_atexit(): the interpreter is exiting; stops every
 * watchdog thread and starts no new one, so none takes the GIL while the
 * interpreter is finalized. */
PyObject *gh_watchdog_atexit(PyObject *module, PyObject *ignored);

#endif /* GH_WATCHDOG_H */
