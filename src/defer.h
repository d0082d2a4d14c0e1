/*
 * defer.h - greenhub.defer_cancellation(): blocks of synchronous code whose
 * waits a cancellation does not interrupt.  See defer.c.
 */
#ifndef GH_DEFER_H
#define GH_DEFER_H

#include <Python.h>

#include "state.h"
#include "vthread.h"

/* gh_suspend() for a step inside a defer_cancellation() block (w->defer_cancel
 * > 0): same contract.  A CancelledError thrown into the step while it waits
 * is kept on `w` instead of being returned, and the wait goes on. */
int gh_suspend_deferring(gh_state *st, gh_GreenCoro *w, PyObject *yielded, PyObject **value,
                         PyObject **exc);

/* A new RuntimeError for a native `await` that yielded inside a block (the
 * worker throws it in at that await, as for no_switch), or NULL. */
static inline PyObject *
gh_defer_await_error(void)
{
    return PyObject_CallFunction(
        PyExc_RuntimeError, "s",
        "an `await` inside a greenhub.defer_cancellation() block: the block defers the "
        "cancellation of synchronous waits only (blocking calls, greenhub.await_()); "
        "in async code use asyncio.shield()");
}

/* The module functions (module.c lists them). */
PyObject *gh_defer_enter(PyObject *module, PyObject *ignored);
PyObject *gh_defer_exit(PyObject *module, PyObject *token);

#endif /* GH_DEFER_H */
