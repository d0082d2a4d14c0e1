/*
 * sched.c - the loop core: call_soon() and friends, the timer heap and
 * time().  What the run loop (run.c) drains and what every subsystem queues
 * through (loop.h's core functions: gh_loop_push_ready(),
 * gh_loop_call_at(), gh_loop_wake_if_sleeping()); it calls no subsystem.
 *
 * Threads.  The ready queue has no lock of its own: every access - including
 * call_soon_threadsafe() from other threads and Python-level signal handlers
 * - happens with the GIL held, and no Python code runs between the reads and
 * writes of one queue operation.  The loop releases the GIL itself only
 * inside the poll, where it does not touch the queue; Python code run by an
 * iteration may release it anywhere.  After queueing, call_soon_threadsafe()
 * wakes a sleeping poll through the reactor; "sleeping" starts at the
 * decision to poll, not at the poll (the wakeup invariant, below).
 */
#include "sched.h"

#include <assert.h>

#include "clock.h"
#include "compat.h"
#include "handle.h"
#include "loop.h"

/* asyncio's cap on one poll's wait (base_events.MAXIMUM_SELECT_TIMEOUT). */
#define MAX_POLL_TIMEOUT (24 * 3600.)
/* Sweep the timer queue when it holds more than this many timers and more
 * than half of them are cancelled (asyncio's thresholds). */
#define MIN_TIMERS_FOR_SWEEP 100

/* --- checks shared by the scheduling methods ----------------------------- */

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
int
gh_sched_drop_cancelled(gh_Loop *self)
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
void
gh_sched_clear(gh_Loop *self)
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

void
gh_sched_free(gh_Loop *self)
{
    gh_readyq_free(&self->ready);
    gh_timerq_free(&self->timers);
}

int
gh_sched_traverse(gh_Loop *self, visitproc visit, void *arg)
{
    for (size_t i = 0; i < self->ready.len; i++) {
        Py_VISIT((PyObject *)gh_readyq_at(&self->ready, i));
    }
    for (size_t i = 0; i < self->timers.len; i++) {
        Py_VISIT((PyObject *)self->timers.items[i].data);
    }
    return 0;
}

/* --- waking the poll ------------------------------------------------------- */

/*
 * The wakeup invariant.  call_soon_threadsafe() runs on another thread with
 * the GIL held; it must never queue a callback that the loop then fails to
 * notice while it blocks in the poll, and it must not pay a system call when
 * the loop is busy.  Two flags, read and written only with the GIL held:
 *
 *   sleeping     the loop has decided that nothing is ready and is on its
 *                way to a poll that may block, or is in it.  Set in
 *                run_once() (run.c) at that decision, before any Python code of the
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

/* --- the clock and the timers ---------------------------------------------- */

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
 * How long the poll may wait for the timers: -1 for no limit, else in
 * [0, MAX_POLL_TIMEOUT]; never NaN or another negative value.  Called with
 * `sleeping` set: an overridden time() may let other threads in, which the
 * wakeup invariant covers, and queue callbacks on this thread, which the
 * run loop's poll_timeout() catches.
 */
int
gh_sched_timeout(gh_Loop *self, double *timeout)
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
    return 0;
}

/* Step 4 of an iteration: moves the timers whose deadline is not after now
 * to the ready queue. */
int
gh_sched_move_due(gh_Loop *self)
{
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

    return 0;
}

/* --- call_soon() & co. ------------------------------------------------------ */

PyObject *
gh_loop_call_soon(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (parse_callback_args(self->st, "call_soon", nargs, kwnames, args + nargs, &context) < 0 ||
        gh_loop_check_closed(self) < 0 || (self->debug && check_thread(self) < 0) ||
        check_callback(self->st, args[0], "call_soon") < 0) {
        return NULL;
    }
    return new_soon_handle(self, self->st->HandleType, args, nargs, context);
}

PyObject *
gh_loop_call_soon_threadsafe(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (parse_callback_args(self->st, "call_soon_threadsafe", nargs, kwnames, args + nargs,
                            &context) < 0 ||
        gh_loop_check_closed(self) < 0 ||
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
    if (gh_loop_check_closed(self) < 0 ||
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

PyObject *
gh_loop_call_at_method(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
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

PyObject *
gh_loop_call_later(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
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

PyObject *
gh_loop_time(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(gh_monotonic());
}

PyObject *
gh_loop_check_closed_method(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (gh_loop_check_closed((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_loop_check_thread_method(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (check_thread((gh_Loop *)op) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_loop_check_callback_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
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

PyObject *
gh_loop_write_to_self(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_loop_wake_if_sleeping((gh_Loop *)op);
    Py_RETURN_NONE;
}

PyObject *
gh_loop_timer_handle_cancelled(PyObject *op, PyObject *timer)
{
    gh_Loop *self = (gh_Loop *)op;
    if (gh_is_timer(self->st, timer)) {
        gh_loop_timer_cancelled(self, timer);
    }
    Py_RETURN_NONE;
}
