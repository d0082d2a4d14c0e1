/*
 * fd_wait.c - a virtual thread waits for a file descriptor on the loop.
 *
 * gh_fd_wait() is the one wait of synchronous code for fd readiness: the
 * blocking calls of greenhub.socket (green_sock.c) use it for their socket
 * and one direction, and _core._wait_fd(fd, events, timeout) (below) for a
 * bare fd and either or both directions - greenhub.contrib.psycopg's waits
 * on libpq's socket and greenhub.monkey's on its epoll sets and pidfds.
 * Outside a virtual thread _wait_fd waits in poll() instead, with the GIL
 * released, as greenhub.socket does.  In a virtual thread gh_fd_wait
 * suspends only the calling task step:
 *
 *   - a Future of the loop, marked _asyncio_future_blocking as
 *     Future.__await__ marks it, is what the step yields through
 *     gh_suspend() (bridge.c); the Task waits on it as for `await`;
 *   - a reader and/or a writer Handle on the fd (io.c's gh_io_wait_read /
 *     gh_io_wait_write, the primitives under add_reader/add_writer) and,
 *     with a deadline, a TimerHandle complete the Future with what happened:
 *     GH_IO_READ, GH_IO_WRITE or 0 (timed out).  The first to run wins; the
 *     others find the Future done and do nothing;
 *   - when the step resumes - completed, cancelled, or unwound at loop close
 *     - the timer and the Handles go before anything else, so no watcher or
 *     callback outlives the wait and the next wait on the fd starts clean.
 *
 * Nothing here runs inside a libev callback: the Handles run in the loop's
 * ready pass and only complete the Future.  Two waits cannot share one
 * direction of one fd (one of them would never wake): the second raises
 * RuntimeError, whoever the first is (a wait here, add_reader()).
 *
 * Closing.  The kernel drops a closed fd from epoll without a word, so a
 * wait on it would never wake.  greenhub.socket's close completes the waits
 * on its fd first (gh_fd_wait_wake_closed: the result None, "closed"); they
 * raise OSError(EBADF).
 *
 * References.  gh_fd_wait owns the Future, its Handles and the timer until
 * it returns (each Handle owns a reference to the Future through its
 * arguments; the loop's fd slot and timer queue own theirs until the wait
 * removes them); the caller owns the step `w`, which keeps the loop alive.
 * The callback object (loop->fdw.ready) is owned by the loop, made on
 * first use; the Handles share the module's empty Context (st->gs.context).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>

#include "clock.h"
#include "compat.h"
#include "fd_wait.h"
#include "handle.h"
#include "io.h"
#include "loop.h"

/* What a wait's Future is completed with, besides the ready direction
 * (a small int: GH_IO_READ, GH_IO_WRITE, or 0 for the timer). */
#define RESULT_CLOSED Py_None

/* The Handles' callback: ready(fut, result) completes the wait's Future
 * unless something else (cancellation, another Handle) did first. */
static PyObject *
fd_ready(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *loop = (gh_Loop *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_gh_green_ready(fut, result)");
        return NULL;
    }
    PyObject *r = PyObject_CallMethodNoArgs(args[0], loop->st->sk.done);
    if (r == NULL) {
        return NULL;
    }
    int done = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (done != 0) {
        return done < 0 ? NULL : Py_NewRef(Py_None);
    }
    return PyObject_CallMethodOneArg(args[0], loop->st->sk.set_result, args[1]);
}

static PyMethodDef fd_ready_def = {"_gh_green_ready", (PyCFunction)(void (*)(void))fd_ready,
                                   METH_FASTCALL, NULL};

/* Keeps the first error of the wait's clean-up; reports the others. */
static void
keep_error(PyObject **first, PyObject *where)
{
    if (*first == NULL) {
        *first = gh_err_get_raised();
    }
    else {
        PyErr_WriteUnraisable(where);
    }
}

/* The wait's end, whatever ended it: the timer and the reader/writer go (a
 * read watcher may stay armed for `sock`, see io.c).  A Handle found
 * cancelled was replaced or removed by someone else: not ours any more.
 * -1 with an exception on error. */
static int
end_wait(gh_Loop *loop, int fd, PyObject *sock, PyObject *reader, PyObject *writer, PyObject *timer)
{
    PyObject *err = NULL;
    if (timer != NULL && gh_handle_cancel(timer) < 0) {
        keep_error(&err, (PyObject *)loop);
    }
    if (reader != NULL && !gh_hd(reader)->cancelled &&
        gh_io_wait_done(loop, fd, sock, reader) < 0) {
        keep_error(&err, (PyObject *)loop);
    }
    if (writer != NULL && !gh_hd(writer)->cancelled &&
        gh_io_wait_write_done(loop, fd, writer) < 0) {
        keep_error(&err, (PyObject *)loop);
    }
    if (err != NULL) {
        gh_err_set_raised(err);
        return -1;
    }
    return 0;
}

/* A Handle that completes `fut` with `which` when fd is ready for it, made
 * fd's reader or writer.  A new reference, or NULL with an exception. */
static PyObject *
arm(gh_Loop *loop, PyObject *fut, int fd, PyObject *sock, int which)
{
    gh_state *st = loop->st;
    PyObject *flag = PyLong_FromLong(which);
    if (flag == NULL) {
        return NULL;
    }
    PyObject *hargs[2] = {fut, flag};
    PyObject *h = gh_handle_new(st, st->HandleType, (PyObject *)loop, loop->fdw.ready, hargs, 2,
                                st->gs.context);
    Py_DECREF(flag);
    if (h == NULL) {
        return NULL;
    }
    /* Nothing waits in this direction (checked): no old Handle to cancel. */
    int rc =
        which == GH_IO_READ ? gh_io_wait_read(loop, fd, sock, h) : gh_io_wait_write(loop, fd, h);
    if (rc < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

/* The timer that completes `fut` with 0 at `deadline`: a new reference, or
 * NULL with an exception. */
static PyObject *
set_timer(gh_Loop *loop, PyObject *fut, double deadline)
{
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) {
        return NULL;
    }
    PyObject *targs[3] = {loop->fdw.ready, fut, zero};
    PyObject *timer = gh_loop_call_at(loop, deadline, targs, 3, loop->st->gs.context);
    Py_DECREF(zero);
    return timer;
}

int
gh_fd_wait(gh_Loop *loop, gh_GreenCoro *w, int fd, PyObject *sock, int events, double deadline)
{
    gh_state *st = loop->st;
    for (int which = GH_IO_READ; which <= GH_IO_WRITE; which <<= 1) {
        if ((events & which) && gh_io_waiter(loop, fd, which) != NULL) {
            PyErr_Format(PyExc_RuntimeError,
                         "fd %d is already waited on for %s by another virtual thread or callback",
                         fd, which == GH_IO_READ ? "reading" : "writing");
            return -1;
        }
    }
    if (loop->fdw.ready == NULL &&
        (loop->fdw.ready = PyCFunction_New(&fd_ready_def, (PyObject *)loop)) == NULL) {
        return -1;
    }
    PyObject *loop_arg[1] = {(PyObject *)loop};
    PyObject *fut = PyObject_Vectorcall(st->sk.future_type, loop_arg, 0, st->sk.kw_loop);
    if (fut == NULL) {
        return -1;
    }
    /* What Future.__await__ sets before yielding: the Task then waits on it. */
    if (PyObject_SetAttr(fut, st->gs.future_blocking, Py_True) < 0) {
        Py_DECREF(fut);
        return -1;
    }

    /* err: what failed here; exc: what was thrown into the step (CancelledError,
     * GeneratorExit); value: what it was resumed with. */
    PyObject *reader = NULL, *writer = NULL, *timer = NULL;
    PyObject *value = NULL, *exc = NULL, *err = NULL;
    if (((events & GH_IO_READ) && (reader = arm(loop, fut, fd, sock, GH_IO_READ)) == NULL) ||
        ((events & GH_IO_WRITE) && (writer = arm(loop, fut, fd, sock, GH_IO_WRITE)) == NULL) ||
        (deadline >= 0 && (timer = set_timer(loop, fut, deadline)) == NULL)) {
        err = gh_err_get_raised();
    }
    else {
        gh_GreenCoro *step = (gh_GreenCoro *)Py_NewRef(w);
        if (gh_suspend(step, Py_NewRef(fut), &value, &exc) < 0) {
            err = gh_err_get_raised();
        }
        Py_DECREF(step);
    }
    if (end_wait(loop, fd, sock, reader, writer, timer) < 0) {
        if (err == NULL && exc == NULL) {
            err = gh_err_get_raised();
        }
        else {
            PyErr_WriteUnraisable((PyObject *)loop);
        }
    }
    Py_XDECREF(timer);
    Py_XDECREF(reader);
    Py_XDECREF(writer);
    if (err == NULL && exc == NULL) {
        /* The Task resumes the step with None; the outcome is the Future's. */
        Py_SETREF(value, PyObject_CallMethodNoArgs(fut, st->gs.result));
        if (value == NULL) {
            err = gh_err_get_raised();
        }
    }
    Py_DECREF(fut);
    if (err != NULL || exc != NULL) {
        Py_XDECREF(value);
        if (err != NULL) {
            Py_XDECREF(exc);
            gh_err_set_raised(err);
        }
        else {
            gh_err_set_raised(exc);
        }
        return -1;
    }
    int ready;
    if (value == RESULT_CLOSED) {
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        ready = -1;
    }
    else {
        ready = (int)PyLong_AsLong(value); /* one of our small ints */
    }
    Py_DECREF(value);
    return ready;
}

int
gh_fd_wait_wake_closed(gh_Loop *loop, int fd)
{
    if (loop->fdw.ready == NULL) {
        return 0; /* no wait was ever made on this loop */
    }
    for (int which = GH_IO_READ; which <= GH_IO_WRITE; which <<= 1) {
        PyObject *h = gh_io_waiter(loop, fd, which);
        gh_handle_data *d = h ? gh_hd(h) : NULL;
        if (d == NULL || d->callback != loop->fdw.ready || d->args == NULL) {
            continue;
        }
        PyObject *cargs[2] = {Py_NewRef(PyTuple_GET_ITEM(d->args, 0)), RESULT_CLOSED};
        PyObject *r = fd_ready((PyObject *)loop, cargs, 2);
        Py_DECREF(cargs[0]);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

/* --- _core._wait_fd ------------------------------------------------------ */

/* See fd_wait.h.  _wait_fd's wait outside a virtual thread or with a zero
 * timeout, and greenhub.socket's outside virtual threads. */
int
gh_fd_poll(int fd, int events, double timeout)
{
    double deadline = timeout > 0 ? gh_monotonic() + timeout : 0;
    for (;;) {
        int ms = -1;
        if (timeout == 0) {
            ms = 0;
        }
        else if (timeout > 0) {
            double left = deadline - gh_monotonic();
            ms = left <= 0 ? 0 : left * 1000 >= INT_MAX ? INT_MAX : (int)ceil(left * 1000);
        }
        struct pollfd p = {.fd = fd,
                           .events = (short)((events & GH_IO_READ ? POLLIN : 0) |
                                             (events & GH_IO_WRITE ? POLLOUT : 0))};
        int n;
        if (ms == 0) {
            n = poll(&p, 1, 0);
        }
        else {
            Py_BEGIN_ALLOW_THREADS n = poll(&p, 1, ms);
            Py_END_ALLOW_THREADS
        }
        if (n > 0) {
            if (p.revents & POLLNVAL) {
                errno = EBADF;
                PyErr_SetFromErrno(PyExc_OSError);
                return -1;
            }
            /* An error or hang-up: whichever direction the caller waits for
             * fails now, as libev reports it (reactor.c). */
            if (p.revents & (POLLERR | POLLHUP)) {
                return events;
            }
            return ((p.revents & POLLIN) ? GH_IO_READ : 0) |
                   ((p.revents & POLLOUT) ? GH_IO_WRITE : 0);
        }
        if (n == 0) {
            if (ms == 0) {
                return 0;
            }
            continue; /* woke before the deadline: compute what is left */
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* An int argument in [lo, hi]: TypeError for a non-int, ValueError out of
 * range. */
static int
int_arg(PyObject *obj, const char *name, long lo, long hi, const char *range, long *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "_wait_fd(): %s must be an int, not %.100s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "_wait_fd(): %s must be %s, not %R", name, range, obj);
        return -1;
    }
    *out = v;
    return 0;
}

/* _wait_fd(fd, events, timeout) -> ready mask; see the method doc below. */
static PyObject *
wait_fd(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = (gh_state *)PyModule_GetState(mod);
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "_wait_fd(fd, events, timeout) takes 3 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    long fd, events;
    if (int_arg(args[0], "fd", 0, INT_MAX, "a file descriptor (>= 0)", &fd) < 0 ||
        int_arg(args[1], "events", 1, 3, "1 (readable), 2 (writable) or 3 (either)", &events) < 0) {
        return NULL;
    }
    double timeout = -1.0;
    if (args[2] != Py_None) {
        timeout = PyFloat_AsDouble(args[2]);
        if (timeout == -1.0 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Format(PyExc_TypeError,
                             "_wait_fd(): timeout must be None or a number, not %.100s",
                             Py_TYPE(args[2])->tp_name);
            }
            return NULL;
        }
        if (isnan(timeout) || timeout < 0) {
            PyErr_Format(PyExc_ValueError,
                         "_wait_fd(): timeout must be None or a number >= 0, not %R", args[2]);
            return NULL;
        }
        if (isinf(timeout)) {
            timeout = -1.0;
        }
    }
    gh_Loop *loop;
    gh_GreenCoro *w = gh_vthread_step(st, &loop);
    if (w == NULL && PyErr_Occurred()) {
        return NULL;
    }
    int ready;
    if (w != NULL && timeout != 0) {
        ready = gh_fd_wait(loop, w, (int)fd, NULL, (int)events,
                           timeout < 0 ? -1.0 : gh_monotonic() + timeout);
    }
    else {
        ready = gh_fd_poll((int)fd, (int)events, timeout);
    }
    return ready < 0 ? NULL : PyLong_FromLong(ready);
}

static PyMethodDef fd_wait_methods[] = {
    {"_wait_fd", (PyCFunction)(void (*)(void))wait_fd, METH_FASTCALL,
     "_wait_fd(fd, events, timeout) -> int\n\n"
     "Wait until the file descriptor fd (an int) is ready for `events` - 1 readable,\n"
     "2 writable, 3 either - or `timeout` seconds pass (None: no limit; 0: only look).\n"
     "Returns the ready mask (1 or 2: in a virtual thread, the direction that fired\n"
     "first), 0 on timeout.  In a virtual thread only the calling task waits, on the\n"
     "loop; cancelling it raises CancelledError and leaves no watcher behind.\n"
     "Anywhere else the thread blocks in poll() with the GIL released.\n"
     "RuntimeError if another virtual thread or callback waits on fd in the same\n"
     "direction; OSError for an fd that cannot be watched (EBADF: not open)."},
    {NULL, NULL, 0, NULL},
};

/* --- the loop's part -------------------------------------------------------- */

int
gh_fd_waits_traverse(gh_fd_waits *fw, visitproc visit, void *arg)
{
    Py_VISIT(fw->ready);
    return 0;
}

void
gh_fd_waits_clear(gh_fd_waits *fw)
{
    Py_CLEAR(fw->ready);
}

int
gh_fd_wait_init(PyObject *mod, gh_state *st)
{
    st->gs.future_blocking = PyUnicode_InternFromString("_asyncio_future_blocking");
    st->gs.result = PyUnicode_InternFromString("result");
    /* The wait Handles only complete a Future: any context will do, so they
     * share one instead of copying the current one per wait. */
    st->gs.context = PyContext_New();
    if (st->gs.future_blocking == NULL || st->gs.result == NULL || st->gs.context == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(mod, fd_wait_methods);
}

void
gh_fd_wait_clear(gh_state *st)
{
    Py_CLEAR(st->gs.future_blocking);
    Py_CLEAR(st->gs.result);
    Py_CLEAR(st->gs.context);
}

int
gh_fd_wait_traverse(gh_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->gs.future_blocking);
    Py_VISIT(st->gs.result);
    Py_VISIT(st->gs.context);
    return 0;
}
