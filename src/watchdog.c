/*
 * watchdog.c - reports a callback or task step that holds the loop too long.
 *
 * The loop thread's side costs nothing measurable: gh_loop_tick() (a plain
 * load and store of `loop->watch.ticks`) before each callback and after each
 * blocking poll, `loop->watch.polling` set around blocking polls, and the running
 * handle recorded in a borrowed pointer.  It does the same whether the
 * watchdog is on or off, so turning it on changes only what another thread
 * does.
 *
 * The watchdog is a native thread (pthread, no Python thread, no
 * sys.settrace), one per running loop that has a threshold, living exactly
 * as long as _run(): started by gh_watchdog_run_begin(), stopped and joined
 * by gh_watchdog_run_end() or set_watchdog().  Every threshold/4 it wakes
 * (without the GIL) and compares `ticks` with what it saw last.  When the
 * value has stood still for `threshold` while the loop was not polling, one
 * callback has held the loop that long - a blocking episode.  It then:
 *
 *   1. takes the GIL with a thread state of its own.  The blocked code must
 *      let go of the GIL for that: a sleep or I/O call does at once, Python
 *      code every switch interval (5 ms).  A C call that holds the GIL
 *      throughout delays this until it returns;
 *   2. checks that the episode is still going on (same `ticks`), and if so
 *      reads the loop thread's current frame (PyThreadState_GetFrame() on
 *      the thread state recorded when _run() started) and the frames under
 *      it with their line numbers, the current task and the running handle -
 *      all in C, so the loop thread cannot move on halfway;  if the episode
 *      ended while it waited for the GIL, it reports without a stack;
 *   3. calls the Python hook (greenhub/_watchdog.py), which formats the
 *      report and hands it to the loop thread with call_soon_threadsafe(),
 *      so the exception handler (or set_watchdog()'s handler) runs on the
 *      loop thread, as soon as the blocked callback gives control back.
 *
 * It reports once per episode.  Durations come from sampling: the episode's
 * start and end are each known to within threshold/4.  The end is the first
 * sample that sees `ticks` move again: the watchdog then takes the GIL once
 * more and calls what the hook returned with that time (`pending`), so a
 * report says how long its callback blocked - not how long until the report
 * was delivered, which is later when blocking callbacks come back to back.
 * The report is delivered without waiting for that: if its end is not known
 * yet, the episode has just ended and the delivery time stands in for it.
 *
 * Lifetime and safety.  The loop thread is inside _run() for as long as the
 * watchdog thread exists (gh_watchdog_run_end() joins it before _run()
 * returns), so the recorded PyThreadState is alive whenever the watchdog
 * holds the GIL: the loop thread cannot leave _run() - or exit - without the
 * GIL.  The join releases the GIL, so a watchdog waiting for it finishes.
 * At interpreter exit an atexit hook stops every watchdog before
 * finalization starts (a loop can still be running in a daemon thread), and
 * no new one starts after that.  A forked child has no watchdog thread: a
 * watchdog started by the parent is forgotten there, not joined.
 */
#include "watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "clock.h"
#include "compat.h"
#include "loop.h"

/* How many frames a report keeps (innermost first). */
#define MAX_FRAMES 200
/* The watchdog samples `ticks` this many times per threshold. */
#define SAMPLES_PER_THRESHOLD 4

typedef struct gh_watchdog {
    gh_Loop *loop;              /* borrowed: in _run() while this exists */
    PyInterpreterState *interp; /* borrowed: the loop's interpreter */
    double threshold;
    pthread_t thread;
    pid_t pid; /* the process that started the thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic(int) stop; /* set by the loop side; read with or without the GIL */
    PyObject *pending; /* owned, only touched with the GIL: what the hook returned for the
                        * reported episode whose end is not known yet, or NULL */
    struct gh_watchdog *prev, *next; /* borrowed: the module state's list */
} gh_watchdog;

/* --- the watchdog thread ---------------------------------------------------- */

/* [(frame, lineno), ...] from `frame` outwards: the stack as it is now.
 * Line numbers are read now because the frames go on running. */
static PyObject *
snapshot_stack(PyFrameObject *frame)
{
    PyObject *list = PyList_New(0);
    Py_XINCREF(frame);
    for (int n = 0; list != NULL && frame != NULL && n < MAX_FRAMES; n++) {
        PyObject *item = Py_BuildValue("(Oi)", (PyObject *)frame, PyFrame_GetLineNumber(frame));
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(item);
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    return list;
}

/* Is `ts` one of the interpreter's live thread states?  It always is while
 * the loop is in _run() (see the file comment); this guards against a loop
 * thread that left _run() by some path that skipped the join (a greenlet
 * abandoned mid-run when its thread ended), where the watchdog must not read
 * a freed thread state.  Walking the list is cheap and happens only when a
 * report is due. */
static int
tstate_alive(PyInterpreterState *interp, PyThreadState *ts)
{
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t != NULL;
         t = PyThreadState_Next(t)) {
        if (t == ts) {
            return 1;
        }
    }
    return 0;
}

/* With the GIL: a reported episode ended at `end` (gh_monotonic() time):
 * tells what the hook returned for it, and lets go of it. */
static void
finish_pending(gh_watchdog *wd, double end)
{
    PyObject *pending = wd->pending;
    if (pending == NULL) {
        return;
    }
    wd->pending = NULL;
    PyObject *when = PyFloat_FromDouble(end);
    PyObject *res = when != NULL ? PyObject_CallOneArg(pending, when) : NULL;
    if (res == NULL) {
        PyErr_WriteUnraisable(pending);
    }
    Py_XDECREF(res);
    Py_XDECREF(when);
    Py_DECREF(pending);
}

/* With the GIL: builds what the Python hook reports.  `seen` is the tick
 * count the episode is at, `since` when it was first seen. */
static void
report_with_gil(gh_watchdog *wd, unsigned long seen, double since)
{
    gh_Loop *loop = wd->loop;
    gh_state *st = loop->st;
    if (st->hook_watchdog == NULL) {
        return;
    }
    PyObject *stack = Py_NewRef(Py_None), *task = Py_NewRef(Py_None);
    PyObject *handle = Py_NewRef(Py_None), *res = NULL;
    int ongoing = atomic_load_explicit(&loop->watch.ticks, memory_order_relaxed) == seen &&
                  !atomic_load_explicit(&loop->watch.polling, memory_order_relaxed);
    if (ongoing && loop->watch.run_tstate != NULL &&
        tstate_alive(wd->interp, loop->watch.run_tstate)) {
        /* Nothing here runs Python code or releases the GIL, so the loop
         * thread stays where it is until all of this is read. */
        PyFrameObject *frame = PyThreadState_GetFrame(loop->watch.run_tstate);
        Py_SETREF(stack, snapshot_stack(frame));
        Py_XDECREF(frame);
        if (stack == NULL) {
            goto error;
        }
        if (loop->watch.running_handle != NULL) {
            Py_SETREF(handle, Py_NewRef(loop->watch.running_handle));
        }
        Py_SETREF(task, PyObject_CallOneArg(st->current_task, (PyObject *)loop));
        if (task == NULL) {
            goto error;
        }
    }
    PyObject *since_obj = PyFloat_FromDouble(since);
    PyObject *threshold = PyFloat_FromDouble(wd->threshold);
    if (since_obj != NULL && threshold != NULL) {
        PyObject *handler = loop->watch.handler ? loop->watch.handler : Py_None;
        res = PyObject_CallFunctionObjArgs(st->hook_watchdog, (PyObject *)loop, task, handle, stack,
                                           since_obj, threshold, handler, NULL);
    }
    if (res != NULL && res != Py_None) {
        /* Told the episode's end by episode_ended() or watchdog_stop(). */
        Py_XSETREF(wd->pending, Py_NewRef(res));
        if (atomic_load(&wd->stop)) {
            /* The hook's own code stopped this watchdog (watchdog_stop() ran on
             * this thread): nobody is left to see the end. */
            finish_pending(wd, gh_monotonic());
        }
    }
    Py_XDECREF(since_obj);
    Py_XDECREF(threshold);
error:
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)loop);
    }
    Py_XDECREF(res);
    Py_XDECREF(stack);
    Py_XDECREF(task);
    Py_XDECREF(handle);
}

static void
report(gh_watchdog *wd, unsigned long seen, double since)
{
    PyThreadState *ts = PyThreadState_New(wd->interp);
    if (ts == NULL) {
        return; /* out of memory: skip this report */
    }
    PyEval_RestoreThread(ts);
    if (!atomic_load(&wd->stop)) {
        report_with_gil(wd, seen, since);
    }
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent(); /* and releases the GIL */
}

/* Without the GIL: the episode reported last ended at `end`. */
static void
episode_ended(gh_watchdog *wd, double end)
{
    PyThreadState *ts = PyThreadState_New(wd->interp);
    if (ts == NULL) {
        return; /* out of memory: watchdog_stop() tells it */
    }
    PyEval_RestoreThread(ts);
    if (!atomic_load(&wd->stop)) {
        finish_pending(wd, end);
    }
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent(); /* and releases the GIL */
}

static void *
watchdog_main(void *arg)
{
    gh_watchdog *wd = arg;
    gh_Loop *loop = wd->loop;
    double interval = wd->threshold / SAMPLES_PER_THRESHOLD;
    unsigned long seen = atomic_load_explicit(&loop->watch.ticks, memory_order_relaxed);
    double since = gh_monotonic();
    int reported = 0;
    pthread_mutex_lock(&wd->mu);
    while (!atomic_load(&wd->stop)) {
        double wake = gh_monotonic() + interval;
        struct timespec ts;
        ts.tv_sec = (time_t)wake;
        ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
        int rc = pthread_cond_timedwait(&wd->cv, &wd->mu, &ts);
        if (atomic_load(&wd->stop) || (rc != 0 && rc != ETIMEDOUT)) {
            continue; /* stop, or a spurious wakeup: look again */
        }
        double now = gh_monotonic();
        unsigned long ticks = atomic_load_explicit(&loop->watch.ticks, memory_order_relaxed);
        if (ticks != seen || atomic_load_explicit(&loop->watch.polling, memory_order_relaxed)) {
            if (reported) {
                pthread_mutex_unlock(&wd->mu); /* never wait for the GIL holding it */
                episode_ended(wd, now);
                pthread_mutex_lock(&wd->mu);
            }
            seen = ticks;
            since = now;
            reported = 0;
            continue;
        }
        if (reported || now - since < wd->threshold) {
            continue;
        }
        reported = 1;
        /* Never wait for the GIL while holding the mutex: the loop thread
         * takes the mutex with the GIL held. */
        pthread_mutex_unlock(&wd->mu);
        report(wd, seen, since);
        pthread_mutex_lock(&wd->mu);
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

/* --- starting and stopping (loop thread side, GIL held) --------------------- */

static int
watchdog_start(gh_Loop *loop)
{
    gh_state *st = loop->st;
    if (loop->watch.running != NULL || loop->watch.threshold <= 0. ||
        loop->watch.run_tstate == NULL || st->wd_exiting) {
        return 0;
    }
    gh_watchdog *wd = PyMem_RawCalloc(1, sizeof(*wd));
    if (wd == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    wd->loop = loop;
    wd->interp = PyInterpreterState_Get();
    wd->threshold = loop->watch.threshold;
    wd->pid = getpid();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wd->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&wd->mu, NULL);
    /* Signals must keep going to the threads that handle them (a signal
     * delivered here would not interrupt the loop's poll): the new thread
     * starts with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&wd->thread, NULL, watchdog_main, wd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_mutex_destroy(&wd->mu);
        pthread_cond_destroy(&wd->cv);
        PyMem_RawFree(wd);
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    wd->next = st->watchdogs;
    if (st->watchdogs != NULL) {
        st->watchdogs->prev = wd;
    }
    st->watchdogs = wd;
    loop->watch.running = wd;
    return 0;
}

static void
watchdog_stop(gh_Loop *loop)
{
    gh_watchdog *wd = loop->watch.running;
    if (wd == NULL) {
        return;
    }
    /* Detach first: whatever runs while the GIL is released below (another
     * set_watchdog(), the atexit hook) no longer sees this one. */
    loop->watch.running = NULL;
    gh_state *st = loop->st;
    if (wd->prev != NULL) {
        wd->prev->next = wd->next;
    }
    else {
        st->watchdogs = wd->next;
    }
    if (wd->next != NULL) {
        wd->next->prev = wd->prev;
    }
    if (wd->pid != getpid()) {
        /* A forked child: the thread does not exist here, and its mutex may
         * have been copied locked.  Forget it (a small leak, once). */
        Py_CLEAR(wd->pending);
        return;
    }
    if (pthread_equal(pthread_self(), wd->thread)) {
        /* Python code run by the watchdog's own report (a finaliser) stops
         * it: it cannot join itself, and wd is in use.  It exits at its
         * next wakeup; its memory is left behind. */
        atomic_store(&wd->stop, 1);
        pthread_detach(wd->thread);
        finish_pending(wd, gh_monotonic());
        return;
    }
    pthread_mutex_lock(&wd->mu);
    atomic_store(&wd->stop, 1);
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    PyThreadState *save = PyEval_SaveThread();
    pthread_join(wd->thread, NULL);
    PyEval_RestoreThread(save);
    finish_pending(wd, gh_monotonic()); /* an episode whose end it did not see */
    pthread_mutex_destroy(&wd->mu);
    pthread_cond_destroy(&wd->cv);
    PyMem_RawFree(wd);
}

int
gh_watchdog_run_begin(gh_Loop *loop)
{
    loop->watch.run_tstate = PyThreadState_Get();
    atomic_store_explicit(&loop->watch.polling, 0, memory_order_relaxed);
    gh_watch_tick(&loop->watch);
    if (watchdog_start(loop) < 0) {
        loop->watch.run_tstate = NULL;
        return -1;
    }
    return 0;
}

void
gh_watchdog_run_end(gh_Loop *loop)
{
    PyObject *exc = gh_err_get_raised();
    watchdog_stop(loop);
    loop->watch.run_tstate = NULL;
    if (exc != NULL) {
        gh_err_set_raised(exc);
    }
}

/* --- configuration --------------------------------------------------------- */

/* threshold: None or a positive, finite number of seconds -> 0 or seconds. */
static int
parse_threshold(PyObject *obj, double *out)
{
    if (obj == Py_None) {
        *out = 0.;
        return 0;
    }
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
        PyErr_Format(PyExc_TypeError,
                     "watchdog threshold must be a number of seconds or None, not %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    double v = PyFloat_AsDouble(obj);
    if (v == -1. && PyErr_Occurred()) {
        return -1;
    }
    if (!(v > 0.) || !isfinite(v) || v > 86400.) {
        PyErr_Format(PyExc_ValueError,
                     "watchdog threshold must be a positive number of seconds (at most a "
                     "day), got %R",
                     obj);
        return -1;
    }
    *out = v;
    return 0;
}

/* (Re)starts or stops the thread after a change, if the loop is running. */
static int
apply(gh_Loop *loop)
{
    watchdog_stop(loop);
    /* watchdog_stop() may have released the GIL: look at the state again. */
    return watchdog_start(loop);
}

PyObject *
gh_loop_set_watchdog(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    gh_Loop *loop = (gh_Loop *)op;
    PyObject *threshold_obj = NULL, *handler = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "set_watchdog() takes the threshold as its one positional argument "
                     "(%zd given)",
                     nargs);
        return NULL;
    }
    threshold_obj = args[0];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "handler") == 0) {
            handler = args[nargs + i];
        }
        else {
            PyErr_Format(PyExc_TypeError, "set_watchdog() got an unexpected keyword argument %R",
                         key);
            return NULL;
        }
    }
    double threshold;
    if (parse_threshold(threshold_obj, &threshold) < 0) {
        return NULL;
    }
    if (handler != Py_None && !PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError,
                     "watchdog handler must be a callable (loop, context) or None, not "
                     "%.100s",
                     Py_TYPE(handler)->tp_name);
        return NULL;
    }
    loop->watch.threshold = threshold;
    Py_XSETREF(loop->watch.handler, handler == Py_None ? NULL : Py_NewRef(handler));
    if (apply(loop) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_check_watchdog_threshold(PyObject *Py_UNUSED(module), PyObject *obj)
{
    double threshold;
    if (parse_threshold(obj, &threshold) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
gh_loop_get_watchdog(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *loop = (gh_Loop *)op;
    if (loop->watch.threshold <= 0.) {
        Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(loop->watch.threshold);
}

int
gh_watchdog_env_threshold(double *threshold)
{
    *threshold = 0.;
    const char *s = getenv("GREENHUB_WATCHDOG");
    if (s == NULL || *s == '\0') {
        return 0;
    }
    char *end = NULL;
    double v = PyOS_string_to_double(s, &end, NULL);
    if (v == -1. && PyErr_Occurred()) {
        PyErr_Clear();
        end = NULL;
    }
    if (end == NULL || *end != '\0' || v < 0. || !isfinite(v) || v > 86400.) {
        PyErr_Format(PyExc_ValueError,
                     "GREENHUB_WATCHDOG=%.50s: expected a threshold in seconds, e.g. "
                     "GREENHUB_WATCHDOG=0.1 (0 or empty: off)",
                     s);
        return -1;
    }
    *threshold = v;
    return 0;
}

PyObject *
gh_watchdog_atexit(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    st->wd_exiting = 1;
    while (st->watchdogs != NULL) {
        watchdog_stop(st->watchdogs->loop);
    }
    Py_RETURN_NONE;
}
