/*
 * defer.c - greenhub.defer_cancellation(): a block of synchronous code whose
 * waits a cancellation of the task does not interrupt.
 *
 * Why.  Synchronous libraries were written for threads, which nothing
 * interrupts.  In a virtual thread every blocking call can raise
 * CancelledError (Task.cancel(), asyncio.timeout()), a BaseException that
 * their `except Exception` clean-ups let through, so code holding something
 * across a wait - a pool handing a connection to a queued client, a
 * connection half set up - loses it.  A block marks code that must run to
 * its end; the cancellation is delivered after it.  docs/guide-cancellation.md
 * has the rule this serves.
 *
 * How.  A depth counter on the task's GreenCoro, as for no_switch
 * (switches.c).  While it is positive, gh_suspend() (bridge.c) does not give
 * the Task the future the synchronous code waits on (the "inner" future: a
 * lock's waiter, a socket wait's) but a stand-in made for this suspension,
 * which the inner future's done callback completes (greenhub/_cancel.py,
 * _DeferredWait).  Task.cancel() cancels the stand-in and never the inner
 * future; the CancelledError the Task then throws into the step is kept on
 * the GreenCoro (the first one: later ones repeat the same request), and the
 * wait goes on with a new stand-in.  When the inner future is done the step
 * resumes with None and the awaitable reads the inner future's outcome itself
 * (Future.__await__ returns its result()): the wait ends as it would have
 * without the cancel.  A bare yield (asyncio.sleep(0)) needs no stand-in; a
 * CancelledError thrown in after it is kept the same way.
 *
 * When the outermost block ends, _defer_exit() hands the kept CancelledError
 * back to Python, which re-arms it on the task: uncancel() then cancel(msg),
 * so the task's count of cancel requests is what it was and asyncio.timeout()
 * still recognises its own.  Unless the request was withdrawn meanwhile: a
 * timeout inside the block (greenhub.timeout(), asyncio.timeout() under
 * await_()) that expires cancels the task, and the end of its own block
 * uncancels it again.  So the task's cancelling() is read as the outermost
 * block begins, when the first CancelledError is kept, and at the end (see
 * withdrawn()): nothing is re-armed when every request was taken back.  A cancel()
 * of a running task is delivered at its next suspension, exactly as on the
 * stock loop: the next wait outside a block, the next `await`, or the end of
 * the coroutine (the task then ends cancelled).
 *
 * Only the suspensions of synchronous code go through gh_suspend().  A native
 * `await` in the task's coroutine, inside a block, would hand its future to
 * the Task directly; the worker refuses it instead (RuntimeError thrown in at
 * that await, task_step.c): async code has asyncio.shield().
 */
#include "defer.h"

#include "compat.h"
#include "loop.h"

static int
is_cancellation(gh_state *st, PyObject *exc)
{
    return PyObject_TypeCheck(exc, (PyTypeObject *)st->CancelledError);
}

/* The current task's count of cancel requests (Task.cancelling()), or -1
 * if it cannot be read (no current task, an error: cleared). */
static Py_ssize_t
task_cancel_requests(gh_state *st, gh_GreenCoro *w)
{
    Py_ssize_t n = -1;
    PyObject *task = PyObject_CallOneArg(st->current_task, w->loop);
    if (task != NULL && task != Py_None) {
        PyObject *count = PyObject_CallMethod(task, "cancelling", NULL);
        if (count != NULL) {
            n = PyLong_AsSsize_t(count);
            Py_DECREF(count);
        }
    }
    Py_XDECREF(task);
    if (n < 0) {
        PyErr_Clear();
        n = -1;
    }
    return n;
}

/* At the end of the outermost block: whether every cancel request behind the
 * kept CancelledError was withdrawn meanwhile.  One CancelledError can stand
 * for several requests (a block's timeout expiring and a real cancel() before
 * the task takes it), so the count is compared twice: a request is still
 * pending if there are more than when the outermost block began, or at least
 * as many as when the error was kept (one made before the block, delivered at
 * its first wait).  Unreadable counts: not withdrawn. */
static int
withdrawn(gh_state *st, gh_GreenCoro *w)
{
    Py_ssize_t now = task_cancel_requests(st, w);
    if (now < 0 || w->entry_requests < 0 || w->kept_requests < 0) {
        return 0;
    }
    return now <= w->entry_requests && now < w->kept_requests;
}

/* Keeps `exc` (stolen) as the block's pending cancellation. */
static void
keep(gh_state *st, gh_GreenCoro *w, PyObject *exc)
{
    if (w->deferred_cancel == NULL) {
        w->deferred_cancel = exc;
        w->kept_requests = task_cancel_requests(st, w);
    }
    else {
        Py_DECREF(exc);
    }
}

int
gh_suspend_deferring(gh_state *st, gh_GreenCoro *w, PyObject *yielded, PyObject **value,
                     PyObject **exc)
{
    *value = *exc = NULL;
    if (st->hook_deferred_wait == NULL) { /* set when greenhub/_cancel.py is imported */
        Py_DECREF(yielded);
        PyErr_SetString(PyExc_RuntimeError, "greenhub._cancel is not loaded");
        return -1;
    }
    /* A _DeferredWait for a pending future of this loop, else None. */
    PyObject *wait = PyObject_CallOneArg(st->hook_deferred_wait, yielded);
    if (wait == NULL) {
        Py_DECREF(yielded);
        return -1;
    }
    if (wait == Py_None) {
        /* A bare yield, or something the Task will refuse: as it is. */
        Py_DECREF(wait);
        if (gh_switch_out(w, yielded, value, exc) < 0) {
            return -1;
        }
        if (*exc != NULL && is_cancellation(st, *exc)) {
            keep(st, w, *exc);
            *exc = NULL;
            Py_XSETREF(*value, Py_NewRef(Py_None));
        }
        return 0;
    }
    Py_DECREF(yielded); /* the wait holds the inner future */
    int rc = 0;
    for (;;) {
        PyObject *standin = PyObject_CallMethodNoArgs(wait, st->str_standin);
        if (standin == NULL) {
            rc = -1;
            break;
        }
        if (standin == Py_None) {
            *value = standin; /* the inner future is done: go and read it */
            break;
        }
        if (gh_switch_out(w, standin, value, exc) < 0) {
            rc = -1;
            break;
        }
        if (*exc == NULL || !is_cancellation(st, *exc)) {
            break; /* resumed, or something else to deliver (GeneratorExit) */
        }
        keep(st, w, *exc);
        *exc = NULL;
        Py_CLEAR(*value);
    }
    /* Drop the inner future's callback; keep what is in flight. */
    PyObject *err = rc < 0 ? gh_err_get_raised() : NULL;
    PyObject *r = PyObject_CallMethodNoArgs(wait, st->str_close);
    if (r == NULL) {
        PyErr_WriteUnraisable(wait);
    }
    Py_XDECREF(r);
    Py_DECREF(wait);
    if (err != NULL) {
        gh_err_set_raised(err);
    }
    return rc;
}

/* _defer_enter() -> token: opens a block in the current task, if any.  The
 * token is None outside a virtual thread (nothing to defer there), else the
 * task's GreenCoro. */
PyObject *
gh_defer_enter(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    gh_Loop *loop;
    gh_GreenCoro *w = gh_vthread_step(st, &loop);
    if (w == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (w->defer_cancel == INT_MAX) {
        PyErr_SetString(PyExc_RecursionError, "too many nested defer_cancellation() blocks");
        return NULL;
    }
    if (w->defer_cancel == 0) {
        w->entry_requests = task_cancel_requests(st, w);
    }
    w->defer_cancel++;
    return Py_NewRef((PyObject *)w);
}

/* _defer_exit(token) -> the CancelledError the blocks held back, once the
 * outermost one ends, else None. */
PyObject *
gh_defer_exit(PyObject *module, PyObject *token)
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    if (token == Py_None) {
        Py_RETURN_NONE;
    }
    if (!Py_IS_TYPE(token, st->GreenCoroType)) {
        PyErr_SetString(PyExc_TypeError, "_defer_exit() needs a token from _defer_enter()");
        return NULL;
    }
    gh_GreenCoro *w = (gh_GreenCoro *)token;
    if (w->defer_cancel <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "greenhub.defer_cancellation() block exited twice");
        return NULL;
    }
    w->defer_cancel--;
    if (w->defer_cancel == 0 && w->deferred_cancel != NULL) {
        PyObject *exc = w->deferred_cancel; /* ownership moves to the caller */
        w->deferred_cancel = NULL;
        if (withdrawn(st, w)) {
            Py_DECREF(exc);
            Py_RETURN_NONE;
        }
        return exc;
    }
    Py_RETURN_NONE;
}
