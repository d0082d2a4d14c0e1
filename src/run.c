/*
 * run.c - the run loop: run_forever()'s body, one iteration, stop().
 *
 * One iteration (run_once) does what asyncio's BaseEventLoop._run_once does,
 * in the same order, so callback order is identical to the stock loop:
 *
 *   1. drop cancelled timers from the head of the timer queue (or sweep the
 *      whole queue when more than half of it is cancelled);
 *   2. poll: without waiting if callbacks are ready or stop() was called,
 *      else until the earliest timer, else until woken;
 *   3. move every timer whose deadline has passed to the ready queue;
 *   4. run the callbacks that are ready *now*; callbacks they schedule run
 *      in the next iteration, after another poll;
 *   5. send what socket transports were given to write (transport.c).
 *
 * The queues and the clock are the loop core's (sched.c); the run loop
 * reaches the subsystems through their own functions (the watchdog's tick,
 * the worker pool's trim, the transports' flush) and nothing calls back
 * into it.
 *
 * Task steps.  The run loop only ever calls handles.  A task step is a
 * handle whose callback is the task's step function, so running steps on
 * greenlets is a matter of what that callback does (the task layer), not of
 * this loop.
 */
#include "run.h"

#include <assert.h>

#include "clock.h"
#include "compat.h"
#include "handle.h"
#include "loop.h"
#include "sched.h"

/* asyncio's cap on one poll's wait (base_events.MAXIMUM_SELECT_TIMEOUT). */
#define MAX_POLL_TIMEOUT (24 * 3600.)

/* --- the poll's GIL hooks ---------------------------------------------------- */

/* The reactor calls these around a poll that may block (the wakeup
 * invariant is in sched.c). */
void
gh_run_release_gil(void *arg)
{
    gh_Loop *self = arg;
    assert(self->sleeping);
    gh_watch_poll_begin(&self->watch);
    self->poll_tstate = PyEval_SaveThread();
}

void
gh_run_acquire_gil(void *arg)
{
    gh_Loop *self = arg;
    PyEval_RestoreThread(self->poll_tstate);
    self->poll_tstate = NULL;
    gh_watch_poll_end(&self->watch);
}

/* --- one iteration ----------------------------------------------------------- */

/* Debug mode runs each handle as asyncio does: it is _current_handle while
 * it runs, and a slow one is reported. */
static int
run_handle_debug(gh_Loop *self, PyObject *h)
{
    gh_state *st = self->st;
    Py_XSETREF(self->current_handle, Py_NewRef(h));
    double t0 = gh_monotonic();
    int rc = gh_handle_run(st, h);
    double dt = gh_monotonic() - t0;
    Py_CLEAR(self->current_handle);
    if (rc < 0) {
        return -1;
    }
    PyObject *limit_obj = PyObject_GetAttr((PyObject *)self, st->str_slow_callback_duration);
    if (limit_obj == NULL) {
        return -1;
    }
    double limit = PyFloat_AsDouble(limit_obj);
    Py_DECREF(limit_obj);
    if (limit == -1. && PyErr_Occurred()) {
        return -1;
    }
    if (dt >= limit && st->hook_slow_callback != NULL) {
        PyObject *secs = PyFloat_FromDouble(dt);
        if (secs == NULL) {
            return -1;
        }
        PyObject *res = PyObject_CallFunctionObjArgs(st->hook_slow_callback, h, secs, NULL);
        Py_DECREF(secs);
        if (res == NULL) {
            return -1;
        }
        Py_DECREF(res);
    }
    return 0;
}

/* While idle workers from a burst remain to be freed, the loop waits at most
 * this long between idle passes (each frees a few of them). */
#define POOL_TRIM_INTERVAL 0.05

/*
 * Step 2's timeout: how long the poll may wait, -1 for no limit, else in
 * [0, MAX_POLL_TIMEOUT]; never NaN or another negative value.  Called with
 * `sleeping` set: the Python code it may run (an overridden time(), the
 * greenlets gh_pool_trim() frees and the finalizers either may trigger) can
 * let other threads in, which the wakeup invariant covers, and can queue
 * callbacks on this thread, which the last test here catches.
 */
static int
poll_timeout(gh_Loop *self, double *timeout)
{
    if (gh_sched_timeout(self, timeout) < 0) {
        return -1;
    }
    if (*timeout != 0. && gh_workers_trim(&self->vt) &&
        (*timeout < 0. || *timeout > POOL_TRIM_INTERVAL)) {
        /* About to wait: a good time to free idle workers left from a
         * burst; come back soon for the rest. */
        *timeout = POOL_TRIM_INTERVAL;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    if (self->ready.len) {
        /* Queued by the code above on this thread (asyncio would block in
         * select() until the next timer or event here; nothing is gained
         * by that, and the callback must not wait for a far timer). */
        *timeout = 0.;
    }
    return 0;
}

static int
run_once(gh_Loop *self)
{
    assert(!PyErr_Occurred());
    assert(self->timer_cancelled_count >= 0 &&
           (size_t)self->timer_cancelled_count <= self->timers.len);
    /* The timer steps are calls into sched.c: made only when there are
     * timers, so an iteration without any costs no call (the test the
     * functions would make first). */
    if (self->timers.len && gh_sched_drop_cancelled(self) < 0) {
        return -1;
    }

    double timeout = 0.;
    if (!self->ready.len && !self->stopping) {
        /* Nothing is ready: from here until the poll returns, pushes from
         * other threads wake the poll (the wakeup invariant above).  No
         * Python code runs between the test and these two stores. */
        self->sleeping = 1;
        self->wakeup_sent = 0;
        if (poll_timeout(self, &timeout) < 0) {
            self->sleeping = 0;
            return -1;
        }
        /* Again: a _run_once() called from that Python code (reentrant, as
         * asyncio would allow) cleared both on its way out (and may have
         * sent its own wakeup).  Pushes made before these stores are in the
         * queue poll_timeout() looked at last. */
        self->sleeping = 1;
        self->wakeup_sent = 0;
    }
    if (self->reactor == NULL) {
        /* That code closed the loop (close() from time(), then a direct
         * _run_once()): nothing left to poll. */
        self->sleeping = 0;
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    int polled = gh_reactor_poll(self->reactor, timeout);
    self->sleeping = 0;
    if (polled < 0) {
        /* epoll_wait() failed: as an exception from selector.select() */
        if (!PyErr_Occurred()) {
            PyErr_SetFromErrno(PyExc_OSError);
        }
        return -1;
    }
    if (PyErr_Occurred()) {
        return -1; /* MemoryError while queueing ready I/O handles */
    }
    /* Run Python-level signal handlers now: a signal (Ctrl-C) that ended
     * the poll raises here, as it would out of asyncio's selector.select(). */
    if (PyErr_CheckSignals() < 0) {
        return -1;
    }

    if (self->timers.len && gh_sched_move_due(self) < 0) {
        return -1;
    }

    /* Only what is ready now; see the file comment. */
    for (size_t ntodo = self->ready.len; ntodo > 0 && self->ready.len > 0; ntodo--) {
        PyObject *h = gh_readyq_pop(&self->ready);
        self->st->queued_items--;
        if (gh_hd(h)->cancelled) {
            Py_DECREF(h);
            continue;
        }
        gh_watch_callback_begin(&self->watch, h);
        int rc = self->debug ? run_handle_debug(self, h) : gh_handle_run(self->st, h);
        gh_watch_callback_end(&self->watch);
        Py_DECREF(h);
        if (rc < 0) {
            /* What the callbacks wrote is sent even so, as asyncio's
             * transports would have sent it in write(). */
            PyObject *exc = gh_err_get_raised();
            if (gh_writes_flush(self) < 0) {
                PyErr_WriteUnraisable((PyObject *)self);
            }
            gh_err_set_raised(exc);
            return -1;
        }
    }
    /* The writes of this iteration, one writev() per transport (transport.c). */
    return gh_writes_flush(self);
}

/* --- the methods ------------------------------------------------------------ */

/* The body of run_forever(); greenhub.Loop.run_forever() does the setup
 * (running-loop registration, async generator hooks) around it. */
PyObject *
gh_loop_run(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    if (gh_loop_check_closed(self) < 0 || gh_watchdog_run_begin(self) < 0) {
        return NULL;
    }
    int rc;
    do {
        rc = run_once(self);
    } while (rc == 0 && !self->stopping);
    gh_watchdog_run_end(self);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_loop_run_once(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (gh_loop_check_closed((gh_Loop *)op) < 0 || run_once((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_loop_stop(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    self->stopping = 1;
    /* stop() is not thread-safe in asyncio (call_soon_threadsafe(loop.stop)
     * is), but one made from another thread while the loop sleeps should
     * not wait for the next event either.  On the loop's own thread
     * `sleeping` is only set while Python code runs in run_once()'s window
     * (an overridden time()): there asyncio's select() would not see the
     * flag before its timeout, and neither does greenhub's poll. */
    if (!self->has_thread_id || PyThread_get_thread_ident() != self->thread_id) {
        gh_loop_wake_if_sleeping(self);
    }
    Py_RETURN_NONE;
}
