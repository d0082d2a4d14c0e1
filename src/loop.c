/*
 * loop.c - the Loop type: scheduling, timers and the run loop.  See loop.h.
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
 *      in the next iteration, after another poll.
 *
 * Threads.  The ready queue has no lock of its own: every access - including
 * call_soon_threadsafe() from other threads and Python-level signal handlers
 * - happens with the GIL held, and no Python code runs between the reads and
 * writes of one queue operation.  The loop releases the GIL itself only
 * inside the poll, where it does not touch the queue; Python code run by an
 * iteration may release it anywhere.  After queueing, call_soon_threadsafe()
 * wakes a sleeping poll through the reactor; "sleeping" starts at the
 * decision to poll, not at the poll (the wakeup invariant, above
 * release_gil()).
 *
 * Task steps.  The run loop only ever calls handles.  A task step is a
 * handle whose callback is the task's step function, so running steps on
 * greenlets is a matter of what that callback does (the task layer), not of
 * this loop.
 */
#include "loop.h"

#include <assert.h>
#include <structmember.h>

#include "clock.h"
#include "compat.h"
#include "handle.h"
#include "sock.h"
#include "task_create.h"
#include "transport.h"
#include "watchdog.h"

/* asyncio's cap on one poll's wait (base_events.MAXIMUM_SELECT_TIMEOUT). */
#define MAX_POLL_TIMEOUT (24 * 3600.)
/* Sweep the timer queue when it holds more than this many timers and more
 * than half of them are cancelled (asyncio's thresholds). */
#define MIN_TIMERS_FOR_SWEEP 100

/* --- checks shared by the scheduling methods ----------------------------- */

static int
check_closed(gh_Loop *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

static int
check_thread(gh_Loop *self)
{
    if (self->has_thread_id && PyThread_get_thread_ident() != self->thread_id) {
        PyErr_SetString(PyExc_RuntimeError, "Non-thread-safe operation invoked on an event loop "
                                            "other than the current one");
        return -1;
    }
    return 0;
}

/*
 * Is `cb` a coroutine function (which call_soon() must refuse)?  asyncio asks
 * inspect.iscoroutinefunction() and looks for markers; that costs far more
 * than scheduling, so decide the common cases here and ask asyncio only
 * when the answer depends on attributes we cannot see cheaply.
 */
static int
is_coroutine_function(gh_state *st, PyObject *cb)
{
    for (;;) {
        if (PyCFunction_Check(cb)) {
            return 0; /* builtins carry no code flags and no attributes */
        }
        if (PyMethod_Check(cb)) {
            cb = PyMethod_GET_FUNCTION(cb); /* markers are read through __func__ */
            continue;
        }
        break;
    }
    PyTypeObject *tp = Py_TYPE(cb);
    if (PyFunction_Check(cb)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(cb);
        if (code->co_flags & CO_COROUTINE) {
            return 1;
        }
        PyObject *dict = ((PyFunctionObject *)cb)->func_dict;
        if (dict == NULL || PyDict_GET_SIZE(dict) == 0) {
            return 0; /* no marker attribute can be set */
        }
    }
    else if (tp->tp_dictoffset == 0 &&
             (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) || (tp->tp_flags & Py_TPFLAGS_IMMUTABLETYPE))) {
        /* No instance dict and a type nobody can add attributes to. */
        return 0;
    }
    PyObject *res = PyObject_CallOneArg(st->iscoroutinefunction, cb);
    if (res == NULL) {
        return -1;
    }
    int yes = PyObject_IsTrue(res);
    Py_DECREF(res);
    return yes;
}

/* asyncio's BaseEventLoop._check_callback(), same messages. */
static int
check_callback(gh_state *st, PyObject *cb, const char *method)
{
    int coro;
    if (PyCallable_Check(cb)) {
        coro = is_coroutine_function(st, cb);
    }
    else {
        PyObject *res = PyObject_CallOneArg(st->iscoroutine, cb);
        if (res == NULL) {
            return -1;
        }
        coro = PyObject_IsTrue(res);
        Py_DECREF(res);
        if (coro == 0) {
            PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", method,
                         cb);
            return -1;
        }
    }
    if (coro < 0) {
        return -1;
    }
    if (coro) {
        PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", method);
        return -1;
    }
    return 0;
}

/* Parses (callback, *args, context=None) from a vectorcall. */
static int
parse_callback_args(gh_state *st, const char *method, Py_ssize_t nargs, PyObject *kwnames,
                    PyObject *const *kwvalues, PyObject **context)
{
    *context = NULL;
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: 'callback'",
                     method);
        return -1;
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            int eq = name == st->str_context || PyUnicode_Compare(name, st->str_context) == 0;
            if (!eq) {
                if (PyErr_Occurred()) {
                    return -1;
                }
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             method, name);
                return -1;
            }
            *context = kwvalues[i];
        }
    }
    return 0;
}

/* Debug mode: remember where the handle was made (asyncio's
 * _source_traceback), from the Python frame that called us. */
static int
attach_source_traceback(gh_state *st, PyObject *h)
{
    PyFrameObject *frame = PyEval_GetFrame(); /* borrowed */
    if (frame == NULL || st->hook_extract_stack == NULL) {
        return 0;
    }
    PyObject *tb = PyObject_CallOneArg(st->hook_extract_stack, (PyObject *)frame);
    if (tb == NULL) {
        return -1;
    }
    Py_XSETREF(gh_hd(h)->source_traceback, tb);
    return 0;
}

/* --- the queues --------------------------------------------------------- */

/* Queues a handle; steals the reference to `h` on success and on failure. */
int
gh_loop_push_ready(gh_Loop *self, PyObject *h)
{
    if (gh_readyq_push(&self->ready, h) < 0) {
        Py_DECREF(h);
        PyErr_NoMemory();
        return -1;
    }
    self->st->queued_items++;
    return 0;
}

static PyObject *
new_soon_handle(gh_Loop *self, PyTypeObject *tp, PyObject *const *args, Py_ssize_t nargs,
                PyObject *context)
{
    PyObject *h =
        gh_handle_new(self->st, tp, (PyObject *)self, args[0], args + 1, nargs - 1, context);
    if (h == NULL) {
        return NULL;
    }
    if (self->debug && attach_source_traceback(self->st, h) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    if (gh_loop_push_ready(self, Py_NewRef(h)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

void
gh_loop_timer_cancelled(gh_Loop *self, PyObject *timer)
{
    if (gh_hd(timer)->scheduled) {
        self->timer_cancelled_count++;
    }
}

/* A timer leaves the timer queue: returns the queue's reference. */
static PyObject *
pop_timer(gh_Loop *self)
{
    PyObject *t = gh_timerq_pop(&self->timers);
    gh_hd(t)->scheduled = 0;
    if (gh_hd(t)->cancelled) {
        self->timer_cancelled_count--;
    }
    self->st->queued_items--;
    return t;
}

typedef struct {
    PyObject **items; /* dropped timers whose references are released later */
    size_t len;
} drop_list;

static int
timer_not_cancelled(void *data, void *arg)
{
    (void)arg;
    return !gh_hd(data)->cancelled;
}

static void
timer_collect(void *data, void *arg)
{
    drop_list *dl = arg;
    gh_hd(data)->scheduled = 0;
    dl->items[dl->len++] = data;
}

/* Step 1 of an iteration.  References are released only once the queue is
 * consistent again, because releasing one can run arbitrary Python code. */
static int
drop_cancelled_timers(gh_Loop *self)
{
    gh_timerq *q = &self->timers;
    if (q->len > MIN_TIMERS_FOR_SWEEP && (size_t)self->timer_cancelled_count * 2 > q->len) {
        drop_list dl = {PyMem_Malloc(q->len * sizeof(PyObject *)), 0};
        if (dl.items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        gh_timerq_filter(q, timer_not_cancelled, timer_collect, &dl);
        self->timer_cancelled_count = 0;
        self->st->queued_items -= (Py_ssize_t)dl.len;
        for (size_t i = 0; i < dl.len; i++) {
            Py_DECREF(dl.items[i]);
        }
        PyMem_Free(dl.items);
        return 0;
    }
    const gh_timer_entry *top;
    while ((top = gh_timerq_top(q)) != NULL && gh_hd(top->data)->cancelled) {
        Py_DECREF(pop_timer(self));
    }
    return 0;
}

/* Empties both queues (close, GC).  Handles are released one at a time, so
 * code run by a release sees consistent queues. */
static void
clear_queues(gh_Loop *self)
{
    while (self->ready.len) {
        PyObject *h = gh_readyq_pop(&self->ready);
        self->st->queued_items--;
        Py_DECREF(h);
    }
    while (self->timers.len) {
        Py_DECREF(pop_timer(self));
    }
    self->timer_cancelled_count = 0;
}

/* --- the run loop --------------------------------------------------------- */

/*
 * The wakeup invariant.  call_soon_threadsafe() runs on another thread with
 * the GIL held; it must never queue a callback that the loop then fails to
 * notice while it blocks in the poll, and it must not pay a system call when
 * the loop is busy.  Two flags, read and written only with the GIL held:
 *
 *   sleeping     the loop has decided that nothing is ready and is on its
 *                way to a poll that may block, or is in it.  Set in
 *                run_once() at that decision, before any Python code of the
 *                iteration's remaining steps can run (time() overridden,
 *                greenlet teardown in gh_pool_trim(), finalizers, weakref
 *                callbacks: each may give the GIL to another thread); cleared
 *                once the poll has returned.
 *   wakeup_sent  a wakeup was sent since `sleeping` was set: later pushes in
 *                the same window need not send another.  Cleared with
 *                `sleeping`.
 *
 * Why no wakeup is lost.  A push from another thread happens either
 *   - before `sleeping` is set: the GIL is held from the "nothing ready" test
 *     to setting the flag (no Python code in between), so the push happened
 *     before the test, which sees it and does not block; or
 *   - after it: gh_loop_wake_if_sleeping() writes the reactor's wakeup eventfd
 *     (gh_reactor_wakeup()).  Written before the poll reaches epoll_wait(),
 *     the eventfd is readable when it does, so the poll does not wait;
 *     written during the poll, it ends it.  Either way the poll returns at
 *     once and the callback runs in that iteration.
 * Same-thread pushes made by that Python code (a call_soon() inside an
 * overridden time()) send no wakeup; run_once() looks at the ready queue
 * again right before the poll instead.
 *
 * A busy loop pays nothing: while callbacks are ready `sleeping` stays 0,
 * so call_soon_threadsafe() tests one flag and makes no system call.
 */
static void
release_gil(void *arg)
{
    gh_Loop *self = arg;
    assert(self->sleeping);
    atomic_store_explicit(&self->watch.polling, 1, memory_order_relaxed);
    self->poll_tstate = PyEval_SaveThread();
}

static void
acquire_gil(void *arg)
{
    gh_Loop *self = arg;
    PyEval_RestoreThread(self->poll_tstate);
    self->poll_tstate = NULL;
    gh_watch_tick(&self->watch);
    atomic_store_explicit(&self->watch.polling, 0, memory_order_relaxed);
}

/* Wakes the poll if the loop may be sleeping (see the invariant above).  A
 * loop that is not sleeping checks the ready queue before it next blocks
 * (with the GIL held, so after this thread's push), so it needs no wakeup;
 * that saves libev's memory fence and system call on every
 * call_soon_threadsafe() to a busy loop. */
void
gh_loop_wake_if_sleeping(gh_Loop *self)
{
    if (self->sleeping && !self->wakeup_sent && self->reactor != NULL) {
        self->wakeup_sent = 1;
        gh_reactor_wakeup(self->reactor);
    }
}

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

/* The clock of the run loop and call_later().  asyncio's selector loop reads
 * self.time() there, and tests move time by hand by replacing that method
 * (unittest.mock.patch.object(loop, "time"), as aiohttp's keep-alive tests
 * do), so when the instance's __dict__ holds a `time`, or a subclass
 * overrides the method, it is called; otherwise gh_monotonic(), with no
 * Python call.  -1 with an exception set if that call fails.
 *
 * `*obj` (may be NULL) receives a new reference to what an overridden time()
 * returned when that is not exactly a float (an int, a Decimal...), else
 * NULL: call_later() then computes `time() + delay` with Python arithmetic,
 * as asyncio does, so when() has asyncio's value and type.  Such a value
 * must also pass asyncio's `self.time() + self._clock_resolution` (a float),
 * which _run_once() computes every iteration: a Decimal fails there with
 * asyncio's TypeError. */
static int
loop_now_obj(gh_Loop *self, double *now, PyObject **obj)
{
    PyObject *op = (PyObject *)self;
    if (obj != NULL) {
        *obj = NULL;
    }
    if (self->time_kind == 0) {
        /* The type's `time` is our method descriptor unless a subclass
         * defines its own. */
        PyObject *mine = PyObject_GetAttr((PyObject *)self->st->LoopType, self->st->str_time);
        PyObject *m = mine ? PyObject_GetAttr((PyObject *)Py_TYPE(op), self->st->str_time) : NULL;
        if (m != NULL) {
            self->time_kind = m == mine ? 1 : 2;
        }
        Py_XDECREF(mine);
        Py_XDECREF(m);
        if (self->time_kind == 0) {
            return -1;
        }
    }
    int overridden = self->time_kind == 2;
    if (!overridden && Py_TYPE(op)->tp_dictoffset != 0) {
        PyObject *d = PyObject_GenericGetDict(op, NULL);
        if (d == NULL) {
            return -1;
        }
        PyObject *v = PyDict_GetItemWithError(d, self->st->str_time); /* borrowed */
        overridden = v != NULL;
        Py_DECREF(d);
        if (v == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    if (!overridden) {
        *now = gh_monotonic();
        return 0;
    }
    PyObject *t = PyObject_CallMethodNoArgs(op, self->st->str_time);
    if (t == NULL) {
        return -1;
    }
    if (PyFloat_CheckExact(t)) {
        *now = PyFloat_AS_DOUBLE(t);
        Py_DECREF(t);
        return 0;
    }
    PyObject *zero = PyFloat_FromDouble(0.);
    PyObject *sum = zero ? PyNumber_Add(t, zero) : NULL; /* asyncio's end_time */
    Py_XDECREF(zero);
    *now = sum ? PyFloat_AsDouble(sum) : -1.;
    Py_XDECREF(sum);
    if (sum == NULL || (*now == -1. && PyErr_Occurred())) {
        Py_DECREF(t);
        return -1;
    }
    if (obj != NULL) {
        *obj = t;
    }
    else {
        Py_DECREF(t);
    }
    return 0;
}

static int
loop_now(gh_Loop *self, double *now)
{
    return loop_now_obj(self, now, NULL);
}

/* A timer whose when() is not a plain float (an int, a Fraction...): see
 * deadline_from_object().  The run loop does asyncio's arithmetic on the
 * object itself when the timer is the earliest, so results and exceptions
 * are asyncio's; the float key only orders the heap. */
static inline PyObject *
exotic_when(const gh_timer_entry *e)
{
    PyObject *w = gh_hd(e->data)->when_obj;
    return w != NULL && !PyFloat_CheckExact(w) ? w : NULL;
}

/* asyncio's `when - self.time()` as a float (NaN if it is not a number). */
static int
exotic_wait(PyObject *when_obj, double now, double *wait)
{
    PyObject *n = PyFloat_FromDouble(now);
    PyObject *d = n ? PyNumber_Subtract(when_obj, n) : NULL;
    Py_XDECREF(n);
    if (d == NULL) {
        return -1;
    }
    *wait = PyFloat_AsDouble(d);
    Py_DECREF(d);
    if (*wait == -1. && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

/* asyncio's "not due yet" test, `when >= end_time` with end_time =
 * `self.time() + self._clock_resolution`: 1, 0, or -1.  (The float path's
 * "after now" differs only within the clock's resolution; here the object
 * may be an int compared with an integer clock, where that matters.) */
static int
exotic_later(gh_Loop *self, PyObject *when_obj, double now)
{
    PyObject *res = PyObject_GetAttrString((PyObject *)self, "_clock_resolution");
    PyObject *n = res ? PyFloat_FromDouble(now) : NULL;
    PyObject *end = n ? PyNumber_Add(n, res) : NULL;
    Py_XDECREF(res);
    Py_XDECREF(n);
    if (end == NULL) {
        return -1;
    }
    int later = PyObject_RichCompareBool(when_obj, end, Py_GE);
    Py_DECREF(end);
    return later;
}

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
    *timeout = -1.;
    if (self->timers.len) {
        double now;
        if (loop_now(self, &now) < 0) {
            return -1;
        }
        /* Read the top after time(): its code may have added a timer (and
         * the heap array may have moved) - or run the loop itself (a
         * reentrant _run_once()) and taken the last one. */
        const gh_timer_entry *top = gh_timerq_top(&self->timers);
        double wait = top != NULL ? top->when - now : -1.; /* NaN if now is NaN */
        PyObject *when_obj = top != NULL ? exotic_when(top) : NULL;
        if (top == NULL) {
            wait = 0.; /* the iteration changed under us: look again */
        }
        else if (when_obj != NULL) {
            PyObject *t = Py_NewRef(top->data); /* alive across the Python code */
            Py_INCREF(when_obj);
            int rc = exotic_wait(when_obj, now, &wait);
            Py_DECREF(when_obj);
            const gh_timer_entry *now_top = gh_timerq_top(&self->timers);
            if (rc == 0 && (now_top == NULL || now_top->data != t)) {
                wait = 0.; /* that code changed the timers: look again */
            }
            Py_DECREF(t);
            if (rc < 0) {
                return -1;
            }
        }
        if (!(wait > 0.)) {
            /* Due (or time() is NaN): don't wait.  Step 4 agrees: it takes
             * every timer whose deadline is not after `now`. */
            *timeout = 0.;
        }
        else {
            *timeout = wait > MAX_POLL_TIMEOUT ? MAX_POLL_TIMEOUT : wait;
        }
    }
    if (*timeout != 0. && gh_pool_trim(&self->vt.pool) &&
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
    if (drop_cancelled_timers(self) < 0) {
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

    if (self->timers.len) {
        /* A timer is due once its deadline is not after now: never early,
         * and no later than this iteration.  Written as "not after" so that
         * a NaN clock (time() overridden) makes every timer due, as asyncio's
         * `when >= end_time` test does; keys are never NaN (timerq.h). */
        double now;
        if (loop_now(self, &now) < 0) {
            return -1;
        }
        const gh_timer_entry *top;
        while ((top = gh_timerq_top(&self->timers)) != NULL) {
            PyObject *when_obj = exotic_when(top);
            if (when_obj == NULL) {
                if (top->when > now) {
                    break;
                }
            }
            else {
                PyObject *t = Py_NewRef(top->data); /* alive across the Python code */
                Py_INCREF(when_obj);
                int later = exotic_later(self, when_obj, now);
                Py_DECREF(when_obj);
                const gh_timer_entry *now_top = gh_timerq_top(&self->timers);
                int moved = later >= 0 && (now_top == NULL || now_top->data != t);
                Py_DECREF(t);
                if (later < 0) {
                    return -1;
                }
                if (moved) {
                    continue; /* that code scheduled an earlier timer */
                }
                if (later) {
                    break;
                }
            }
            if (gh_loop_push_ready(self, pop_timer(self)) < 0) {
                return -1;
            }
        }
    }

    /* Only what is ready now; see the file comment. */
    for (size_t ntodo = self->ready.len; ntodo > 0 && self->ready.len > 0; ntodo--) {
        PyObject *h = gh_readyq_pop(&self->ready);
        self->st->queued_items--;
        if (gh_hd(h)->cancelled) {
            Py_DECREF(h);
            continue;
        }
        gh_watch_tick(&self->watch);
        self->watch.running_handle = h;
        int rc = self->debug ? run_handle_debug(self, h) : gh_handle_run(self->st, h);
        self->watch.running_handle = NULL;
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

/* --- Python-visible methods --------------------------------------------- */

static PyObject *
loop_call_soon(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (parse_callback_args(self->st, "call_soon", nargs, kwnames, args + nargs, &context) < 0 ||
        check_closed(self) < 0 || (self->debug && check_thread(self) < 0) ||
        check_callback(self->st, args[0], "call_soon") < 0) {
        return NULL;
    }
    return new_soon_handle(self, self->st->HandleType, args, nargs, context);
}

static PyObject *
loop_call_soon_threadsafe(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (parse_callback_args(self->st, "call_soon_threadsafe", nargs, kwnames, args + nargs,
                            &context) < 0 ||
        check_closed(self) < 0 ||
        (self->debug && check_callback(self->st, args[0], "call_soon_threadsafe") < 0)) {
        return NULL;
    }
    PyTypeObject *tp =
        self->st->ThreadSafeHandleType ? self->st->ThreadSafeHandleType : self->st->HandleType;
    PyObject *h = new_soon_handle(self, tp, args, nargs, context);
    if (h != NULL) {
        gh_loop_wake_if_sleeping(self);
    }
    return h;
}

/* call_at() after its `when` has been converted.  `when_obj` is the value to
 * report from when() if it is not exactly `when` as a float (or NULL). */
static PyObject *
schedule_timer(gh_Loop *self, double when, PyObject *when_obj, PyObject *const *args,
               Py_ssize_t nargs, PyObject *context)
{
    gh_state *st = self->st;
    if (check_closed(self) < 0 ||
        (self->debug && (check_thread(self) < 0 || check_callback(st, args[0], "call_at") < 0))) {
        return NULL;
    }
    PyObject *t = gh_handle_new(st, st->TimerHandleType, (PyObject *)self, args[0], args + 1,
                                nargs - 1, context);
    if (t == NULL) {
        return NULL;
    }
    gh_hd(t)->when = when;
    /* A NaN deadline keeps one float object, as asyncio's handle does:
     * hash(nan) depends on the object, so a fresh float per when() call
     * would give the handle a different hash each time. */
    gh_hd(t)->when_obj =
        when_obj ? Py_NewRef(when_obj) : (Py_IS_NAN(when) ? PyFloat_FromDouble(when) : NULL);
    if ((when_obj == NULL && Py_IS_NAN(when) && gh_hd(t)->when_obj == NULL) ||
        (self->debug && attach_source_traceback(st, t) < 0)) {
        Py_DECREF(t);
        return NULL;
    }
    if (gh_timerq_push(&self->timers, when, Py_NewRef(t)) < 0) {
        Py_DECREF(t); /* the reference meant for the queue */
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
    st->queued_items++;
    gh_hd(t)->scheduled = 1;
    return t;
}

PyObject *
gh_loop_call_at(gh_Loop *self, double when, PyObject *const *args, Py_ssize_t nargs,
                PyObject *context)
{
    return schedule_timer(self, when, NULL, args, nargs, context);
}

/*
 * The heap key of call_at(when).  asyncio stores `when` as given and uses it
 * as it is: heapq compares it with the other timers' deadlines (`when <
 * other`, at once in heappush() when the heap is not empty), and
 * _run_once() computes `when - self.time()` while it is the earliest timer
 * and the loop is idle, and `when >= end_time` to see whether it is due.
 * greenhub keeps the object for when() and those two run-loop operations
 * (exotic_wait() and exotic_later() below: the same arithmetic, so the same
 * results and exceptions, at the same point), and files the timer under a
 * float key:
 *   - int and float (subclasses and bool too) are converted; an int beyond
 *     the float range is filed under +/-inf, and raises asyncio's
 *     OverflowError once the loop computes `when - time()` with it;
 *   - anything else first gets heappush()'s comparison when the heap holds
 *     a timer (TypeError for an object with only __float__ or __index__,
 *     InvalidOperation for a Decimal NaN), then float(when), or else
 *     `when - 0.0`: what has neither fails with the exception that
 *     _run_once()'s subtraction would raise.
 * asyncio leaves a timer whose heappush() comparison failed in its heap,
 * where it breaks every later iteration; greenhub does not schedule it.
 * NaN and the infinities are valid keys (timerq.h).
 */
static int
deadline_from_object(gh_Loop *self, PyObject *when_obj, double *when)
{
    if (PyFloat_Check(when_obj) || PyLong_Check(when_obj)) {
        *when = PyFloat_AsDouble(when_obj);
        if (*when == -1. && PyErr_Occurred()) {
            if (!PyLong_Check(when_obj) || !PyErr_ExceptionMatches(PyExc_OverflowError)) {
                return -1;
            }
            PyErr_Clear();
            int overflow; /* the sign of an int too large for a long */
            (void)PyLong_AsLongAndOverflow(when_obj, &overflow);
            *when = overflow > 0 ? INFINITY : -INFINITY;
        }
        return 0;
    }
    PyObject *zero = PyFloat_FromDouble(0.);
    if (zero == NULL) {
        return -1;
    }
    int rc = -1;
    if (self->timers.len) {
        PyObject *lt = PyObject_RichCompare(when_obj, zero, Py_LT);
        if (lt == NULL) {
            goto done;
        }
        Py_DECREF(lt);
    }
    *when = PyFloat_AsDouble(when_obj);
    if (*when == -1. && PyErr_Occurred()) {
        PyErr_Clear();
        PyObject *diff = PyNumber_Subtract(when_obj, zero);
        if (diff == NULL) {
            goto done;
        }
        *when = PyFloat_AsDouble(diff);
        Py_DECREF(diff);
        if (*when == -1. && PyErr_Occurred()) {
            goto done;
        }
    }
    rc = 0;
done:
    Py_DECREF(zero);
    return rc;
}

static PyObject *
loop_call_at(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "call_at() missing 2 required positional arguments: 'when' and 'callback'");
        return NULL;
    }
    if (parse_callback_args(self->st, "call_at", nargs - 1, kwnames, args + nargs, &context) < 0) {
        return NULL;
    }
    PyObject *when_obj = args[0];
    if (when_obj == Py_None) {
        PyErr_SetString(PyExc_TypeError, "when cannot be None");
        return NULL;
    }
    double when;
    if (deadline_from_object(self, when_obj, &when) < 0) {
        return NULL;
    }
    return schedule_timer(self, when, PyFloat_CheckExact(when_obj) ? NULL : when_obj, args + 1,
                          nargs - 1, context);
}

static PyObject *
loop_call_later(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_later() missing 2 required positional "
                                         "arguments: 'delay' and 'callback'");
        return NULL;
    }
    if (parse_callback_args(self->st, "call_later", nargs - 1, kwnames, args + nargs, &context) <
        0) {
        return NULL;
    }
    PyObject *delay = args[0];
    if (delay == Py_None) {
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    double now;
    PyObject *now_obj; /* owned or NULL: an overridden time()'s non-float result */
    if (loop_now_obj(self, &now, &now_obj) < 0) {
        return NULL;
    }
    if (now_obj == NULL && (PyFloat_CheckExact(delay) || PyLong_CheckExact(delay))) {
        double d = PyFloat_AsDouble(delay);
        if (d == -1. && PyErr_Occurred()) {
            return NULL;
        }
        /* Same IEEE sum as asyncio's `self.time() + delay`: 1e308 stays
         * finite, NaN stays NaN, inf - inf would be NaN. */
        return schedule_timer(self, now + d, NULL, args + 1, nargs - 1, context);
    }
    /* Anything else: exactly asyncio's `self.time() + delay`, then call_at(). */
    if (now_obj == NULL) {
        now_obj = PyFloat_FromDouble(now);
        if (now_obj == NULL) {
            return NULL;
        }
    }
    PyObject *when_obj = PyNumber_Add(now_obj, delay);
    Py_DECREF(now_obj);
    if (when_obj == NULL) {
        return NULL;
    }
    PyObject *res = NULL;
    double when;
    if (deadline_from_object(self, when_obj, &when) == 0) {
        res = schedule_timer(self, when, PyFloat_CheckExact(when_obj) ? NULL : when_obj, args + 1,
                             nargs - 1, context);
    }
    Py_DECREF(when_obj);
    return res;
}

/*
 * create_task(coro, *, name=None, context=None) - and on 3.14+ any keyword
 * arguments, which go to the Task (eager_start=).  Every coroutine is wrapped
 * in a GreenCoro so that its steps run on a greenlet (vthread.h).  Without a
 * task factory the Task is made here, as greenhub's Task (task_create.c);
 * otherwise, and for arguments asyncio refuses, asyncio's
 * BaseEventLoop.create_task() does the rest with the wrapped coroutine, so
 * factories, names and errors behave exactly as on the stock loop.  (Made
 * here, in debug mode too, the Task's source traceback ends at the caller as
 * asyncio's does once create_task() deletes its own frame from it.)
 */
static PyObject *
loop_create_task(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = Py_None, *context = Py_None, *eager = NULL;
    int fast = nargs == 1 && self->task_factory == NULL;
    for (Py_ssize_t i = 0; fast && kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "name") == 0) {
            name = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(key, "context") == 0) {
            context = args[nargs + i];
        }
#if PY_VERSION_HEX >= 0x030E0000
        /* 3.14's create_task() passes its keyword arguments on to the Task. */
        else if (PyUnicode_CompareWithASCIIString(key, "eager_start") == 0) {
            eager = args[nargs + i];
        }
#endif
        else {
            fast = 0; /* let asyncio report the unexpected argument */
        }
    }
    /* Where the coroutine is: first positional, or create_task(coro=...). */
    Py_ssize_t at = nargs >= 1 ? 0 : -1;
    for (Py_ssize_t i = 0; at < 0 && kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "coro") == 0) {
            at = nargs + i;
        }
    }
    if (at >= 0 && check_closed(self) < 0) {
        return NULL;
    }
    PyObject *coro = at >= 0 ? gh_wrap_coroutine(st, args[at], op) : NULL;
    if (at >= 0 && coro == NULL) {
        return NULL;
    }
    PyObject *res;
    if (fast) {
        res = gh_task_new(st, op, coro, name, context, eager);
    }
    else {
        /* BaseEventLoop.create_task(self, coro, ...) with the same arguments */
        Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        PyObject **cargs = PyMem_Malloc((total + 2) * sizeof(PyObject *));
        if (cargs == NULL) {
            Py_XDECREF(coro);
            return PyErr_NoMemory();
        }
        cargs[1] = op;
        for (Py_ssize_t i = 0; i < total; i++) {
            cargs[i + 2] = i == at ? coro : args[i];
        }
        res = PyObject_Vectorcall(st->tk.base_create_task, cargs + 1,
                                  (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        PyMem_Free(cargs);
        if (res != NULL && at >= 0 && coro != args[at] && gh_task_expose_coro(st, res, coro) < 0) {
            Py_CLEAR(res);
        }
    }
    Py_XDECREF(coro);
    return res;
}

static PyObject *
loop_time(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(gh_monotonic());
}

/* The body of run_forever(); greenhub.Loop.run_forever() does the setup
 * (running-loop registration, async generator hooks) around it. */
static PyObject *
loop_run(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    if (check_closed(self) < 0 || gh_watchdog_run_begin(self) < 0) {
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

static PyObject *
loop_run_once(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (check_closed((gh_Loop *)op) < 0 || run_once((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_stop(PyObject *op, PyObject *Py_UNUSED(ignored))
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

static PyObject *
loop_is_running(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((gh_Loop *)op)->has_thread_id);
}

static PyObject *
loop_is_closed(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((gh_Loop *)op)->closed);
}

static PyObject *
loop_get_debug(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(((gh_Loop *)op)->debug_obj);
}

static PyObject *
loop_check_closed(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (check_closed((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_check_thread(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (check_thread((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_check_callback(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_check_callback(callback, method: str)");
        return NULL;
    }
    const char *method = PyUnicode_AsUTF8(args[1]);
    if (method == NULL || check_callback(((gh_Loop *)op)->st, args[0], method) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Closes the scheduling core: marks the loop closed and drops every pending
 * callback and timer.  greenhub.Loop.close() does the rest. */
static PyObject *
loop_close_core(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    if (self->has_thread_id) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
        return NULL;
    }
    self->closed = 1;
    /* Virtual threads still suspended inside await_(): unwind their stacks. */
    gh_workers_unwind_parked(self);
    gh_io_close(self);
    gh_writes_clear(self);
    clear_queues(self);
    gh_workers_clear(&self->vt);
    /* The epoll set and wakeup fd go now, as the stock loop closes its
     * selector and self-pipe in close(): a closed loop holds no fd.  Every
     * use of the reactor checks for NULL (a closed loop refuses new work
     * before it gets there). */
    gh_reactor_free(self->reactor);
    self->reactor = NULL;
    Py_RETURN_NONE;
}

static PyObject *
loop_parked_coros(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    PyObject *list = PyList_New(0);
    for (gh_GreenCoro *w = self->vt.parked; list != NULL && w != NULL; w = w->park_next) {
        if (PyList_Append(list, (PyObject *)w) < 0) {
            Py_CLEAR(list);
        }
    }
    return list;
}

static PyObject *
loop_write_to_self(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_loop_wake_if_sleeping((gh_Loop *)op);
    Py_RETURN_NONE;
}

static PyObject *
loop_timer_handle_cancelled(PyObject *op, PyObject *timer)
{
    gh_Loop *self = (gh_Loop *)op;
    if (gh_is_timer(self->st, timer)) {
        gh_loop_timer_cancelled(self, timer);
    }
    Py_RETURN_NONE;
}

/* --- attributes shared with the inherited Python code ------------------- */

static int
set_flag(char *flag, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    *flag = (char)truth;
    return 0;
}

static PyObject *
get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_Loop *)op)->closed);
}

static int
set_closed(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_flag(&((gh_Loop *)op)->closed, value);
}

static PyObject *
get_stopping(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_Loop *)op)->stopping);
}

static int
set_stopping(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_flag(&((gh_Loop *)op)->stopping, value);
}

static PyObject *
get_debug_attr(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((gh_Loop *)op)->debug_obj);
}

static int
set_debug_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (set_flag(&self->debug, value) < 0) {
        return -1;
    }
    Py_SETREF(self->debug_obj, Py_NewRef(value));
    return 0;
}

static PyObject *
get_thread_id(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((gh_Loop *)op)->thread_id_obj);
}

static int
set_thread_id(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _thread_id");
        return -1;
    }
    if (value == Py_None) {
        self->has_thread_id = 0;
    }
    else {
        unsigned long ident = PyLong_AsUnsignedLong(value);
        if (ident == (unsigned long)-1 && PyErr_Occurred()) {
            return -1;
        }
        self->thread_id = ident;
        self->has_thread_id = 1;
    }
    Py_SETREF(self->thread_id_obj, Py_NewRef(value));
    return 0;
}

static PyObject *
get_current_handle(PyObject *op, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    return Py_NewRef(self->current_handle ? self->current_handle : Py_None);
}

static int
set_current_handle(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    Py_XSETREF(self->current_handle, (value && value != Py_None) ? Py_NewRef(value) : NULL);
    return 0;
}

/* `_task_factory` is what BaseEventLoop.create_task() calls, and there
 * asyncio.eager_task_factory stands for the same factory for greenhub's Task
 * (task_create.c); get_task_factory() returns what was set. */
static PyObject *
get_task_factory_attr(PyObject *op, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (self->task_factory == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(gh_task_factory_to_call(self->st, self->task_factory));
}

static int
set_task_factory_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    PyObject *f = (value && value != Py_None) ? gh_task_factory_to_store(self->st, value) : NULL;
    Py_XSETREF(self->task_factory, Py_XNewRef(f));
    return 0;
}

static PyObject *
loop_get_task_factory(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    return Py_NewRef(self->task_factory ? self->task_factory : Py_None);
}

static PyObject *
get_backend(PyObject *op, void *Py_UNUSED(closure))
{
    gh_reactor *r = ((gh_Loop *)op)->reactor;
    return PyUnicode_FromString(r ? gh_reactor_backend_name(r) : "closed");
}

/* --- type slots ----------------------------------------------------------- */

PyObject *
gh_loop_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = PyModule_GetState(module);
    for (gh_Loop *lp = st->loops; lp != NULL; lp = lp->next_loop) {
        if (lp->reactor != NULL) {
            gh_reactor_after_fork(lp->reactor);
        }
    }
    /* Data socket transports queued for the end of the iteration belongs to
     * the parent, which sends it: the stock loop sent it in write(), before
     * the fork, so the child has none to send.  (Dropping can run Python
     * code that frees loops: find the next loop from the start each time.) */
    for (;;) {
        gh_Loop *lp = st->loops;
        while (lp != NULL && lp->writes.head == NULL) {
            lp = lp->next_loop;
        }
        if (lp == NULL) {
            break;
        }
        gh_writes_clear(lp);
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    gh_state *st = gh_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    gh_Loop *self = (gh_Loop *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* tp_alloc zeroed the struct; set what is not zero. */
    self->st = st;
    self->module = PyType_GetModuleByDef(type, &gh_moduledef); /* borrowed: found above */
    Py_INCREF(self->module);
    self->debug_obj = Py_NewRef(Py_False);
    self->thread_id_obj = Py_NewRef(Py_None);
    st->live_loops++;
    self->next_loop = st->loops;
    if (st->loops != NULL) {
        st->loops->prev_loop = self;
    }
    st->loops = self;
    self->reactor = gh_reactor_new();
    if (self->reactor == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    gh_reactor_set_blocking_hooks(self->reactor, release_gil, acquire_gil, self);
    gh_reactor_set_io_callback(self->reactor, gh_io_ready, self);
    if (gh_watchdog_from_env(self) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* tp_traverse and tp_clear: the loop's own references, then each part's. */
static int
loop_traverse(PyObject *op, visitproc visit, void *arg)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->module);
    Py_VISIT(self->debug_obj);
    Py_VISIT(self->thread_id_obj);
    Py_VISIT(self->current_handle);
    Py_VISIT(self->task_factory);
    for (size_t i = 0; i < self->ready.len; i++) {
        Py_VISIT((PyObject *)gh_readyq_at(&self->ready, i));
    }
    for (size_t i = 0; i < self->timers.len; i++) {
        Py_VISIT((PyObject *)self->timers.items[i].data);
    }
    int rc;
    if ((rc = gh_io_traverse(&self->io, visit, arg)) != 0 ||
        (rc = gh_fd_waits_traverse(&self->fdw, visit, arg)) != 0 ||
        (rc = gh_sock_waits_traverse(&self->sockw, visit, arg)) != 0 ||
        (rc = gh_writes_traverse(&self->writes, visit, arg)) != 0 ||
        (rc = gh_workers_traverse(&self->vt, visit, arg)) != 0 ||
        (rc = gh_watch_traverse(&self->watch, visit, arg)) != 0) {
        return rc;
    }
    return 0;
}

static int
loop_clear(PyObject *op)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_io_clear(self);
    gh_writes_clear(self);
    clear_queues(self);
    gh_sock_waits_clear(&self->sockw);
    gh_fd_waits_clear(&self->fdw);
    Py_CLEAR(self->current_handle);
    Py_CLEAR(self->task_factory);
    gh_watch_clear(&self->watch);
    gh_workers_clear(&self->vt);
    return 0;
}

static void
loop_dealloc(PyObject *op)
{
    gh_Loop *self = (gh_Loop *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    assert(self->watch.running == NULL); /* joined before _run() returned */
    loop_clear(op);
    Py_CLEAR(self->debug_obj);
    Py_CLEAR(self->thread_id_obj);
    gh_readyq_free(&self->ready);
    gh_timerq_free(&self->timers);
    gh_reactor_free(self->reactor);
    self->reactor = NULL;
    self->st->live_loops--;
    if (self->prev_loop != NULL) {
        self->prev_loop->next_loop = self->next_loop;
    }
    else if (self->st->loops == self) {
        self->st->loops = self->next_loop;
    }
    if (self->next_loop != NULL) {
        self->next_loop->prev_loop = self->prev_loop;
    }
    PyObject *module = self->module;
    tp->tp_free(op);
    Py_DECREF(tp);
    Py_XDECREF(module); /* last: the state may go with it */
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, FASTKW,
     "call_soon(callback, *args, context=None) -> Handle\n\n"
     "Arrange for callback(*args) to be called soon, in FIFO order."},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe, FASTKW,
     "Like call_soon(), but callable from any thread; wakes the loop."},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, FASTKW,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, FASTKW,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"create_task", (PyCFunction)(void (*)(void))loop_create_task, FASTKW,
     "create_task(coro, *, name=None, context=None) -> Task\n\n"
     "Schedule a coroutine as an asyncio Task whose steps run on a greenlet, so\n"
     "synchronous code under it can call greenhub.await_().  task.get_coro() is\n"
     "`coro`; the Task steps it through a GreenCoro wrapper."},
    {"get_task_factory", loop_get_task_factory, METH_NOARGS,
     "Return the task factory set by set_task_factory(), or None."},
    {"time", loop_time, METH_NOARGS,
     "Return the loop's time: time.monotonic()'s clock, in seconds."},
    {"stop", loop_stop, METH_NOARGS, "Stop running once the current iteration ends."},
    {"is_running", loop_is_running, METH_NOARGS, "Return True if the loop is running."},
    {"is_closed", loop_is_closed, METH_NOARGS, "Return True if the loop was closed."},
    {"get_debug", loop_get_debug, METH_NOARGS, "Return the debug mode setting."},
    {"_run", loop_run, METH_NOARGS, NULL},
    {"set_watchdog", (PyCFunction)(void (*)(void))gh_loop_set_watchdog, FASTKW,
     "set_watchdog(threshold, *, handler=None)\n\n"
     "Report any callback or task step that holds the loop for more than `threshold`\n"
     "seconds, with its stack at that time (a native thread watches the loop).\n"
     "The report goes to handler(loop, context) if given, else to the loop's\n"
     "exception handler.  set_watchdog(None) turns it off (the default)."},
    {"get_watchdog", gh_loop_get_watchdog, METH_NOARGS,
     "Return the watchdog's threshold in seconds, or None when it is off."},
    {"_run_once", loop_run_once, METH_NOARGS, NULL},
    {"_close_core", loop_close_core, METH_NOARGS, NULL},
    {"_check_closed", loop_check_closed, METH_NOARGS, NULL},
    {"_check_thread", loop_check_thread, METH_NOARGS, NULL},
    {"_check_callback", (PyCFunction)(void (*)(void))loop_check_callback, METH_FASTCALL, NULL},
    {"_write_to_self", loop_write_to_self, METH_NOARGS, NULL},
    {"_parked_coros", loop_parked_coros, METH_NOARGS, NULL},
    {"_add_reader", (PyCFunction)(void (*)(void))gh_loop_add_reader, METH_FASTCALL | METH_KEYWORDS,
     "_add_reader(fd, callback, *args) -> Handle: run callback(*args) while fd is readable.\n"
     "From Python 3.15, context=None: the contextvars.Context callback runs in."},
    {"_add_writer", (PyCFunction)(void (*)(void))gh_loop_add_writer, METH_FASTCALL | METH_KEYWORDS,
     "_add_writer(fd, callback, *args) -> Handle: run callback(*args) while fd is writable.\n"
     "From Python 3.15, context=None: the contextvars.Context callback runs in."},
    {"_io_watchers", gh_loop_io_watchers, METH_NOARGS,
     "_io_watchers() -> {fd: events}: what the loop watches (selectors' EVENT_* masks)."},
    {"_remove_reader", gh_loop_remove_reader, METH_O,
     "Stop watching fd for reading; return True if a reader was registered."},
    {"_remove_writer", gh_loop_remove_writer, METH_O,
     "Stop watching fd for writing; return True if a writer was registered."},
    {"_timer_handle_cancelled", loop_timer_handle_cancelled, METH_O, NULL},
    {"_gh_sock_recv", (PyCFunction)(void (*)(void))gh_loop_sock_recv, METH_FASTCALL,
     "_gh_sock_recv(sock, n) -> bytes, a Future, or None: use asyncio's sock_recv()."},
    {"_gh_sock_recv_into", (PyCFunction)(void (*)(void))gh_loop_sock_recv_into, METH_FASTCALL,
     "_gh_sock_recv_into(sock, buf) -> int, a Future, or None: use asyncio's."},
    {"_gh_sock_send", (PyCFunction)(void (*)(void))gh_loop_sock_send, METH_FASTCALL,
     "_gh_sock_send(sock, data) -> bytes sent by one send(), or None: use asyncio's."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loop_getset[] = {
    {"_closed", get_closed, set_closed, NULL, NULL},
    {"_stopping", get_stopping, set_stopping, NULL, NULL},
    {"_debug", get_debug_attr, set_debug_attr, NULL, NULL},
    {"_thread_id", get_thread_id, set_thread_id, NULL, NULL},
    {"_current_handle", get_current_handle, set_current_handle, NULL, NULL},
    {"_task_factory", get_task_factory_attr, set_task_factory_attr, NULL, NULL},
    {"_backend", get_backend, NULL, NULL, NULL},
    {"_io_trace", gh_loop_get_io_trace, gh_loop_set_io_trace,
     "None, or a list to which each poll appends the fds it reports, in the order their "
     "handles are queued (tests/fuzz_loop.py)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_doc, "The C scheduling core of greenhub.Loop; use greenhub.Loop."},
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getset},
    {0, NULL},
};

PyType_Spec gh_loop_spec = {
    .name = "greenhub._core.Loop",
    .basicsize = sizeof(gh_Loop),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = loop_slots,
};
