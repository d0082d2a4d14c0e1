/*
 * green_sock.c - the blocking calls of greenhub.socket (greenhub/socket.py).
 *
 * A green socket keeps its fd non-blocking (socket's own timeout is 0) and
 * stores the user's timeout itself, in the `_gh_timeout` slot: None
 * (blocking), 0.0 (non-blocking) or seconds.  Each call here first makes
 * the system call; when it would block, it waits and tries again:
 *
 *   - inside a virtual thread (a task step of the greenhub loop running in
 *     this thread), on the loop's libev watcher for the fd: the task step
 *     suspends through gh_suspend() (bridge.c) on a Future that the reader
 *     or writer Handle completes; a timer completes it when the timeout
 *     expires (gh_fd_wait, fd_wait.c).  Only this virtual thread waits.
 *   - anywhere else, in poll() with the GIL released, exactly as socket's
 *     own calls wait when a timeout is set.
 *
 * The arguments are parsed with the socket module's own formats, and errors
 * are raised as it raises them, so a green socket used outside a virtual
 * thread behaves as a plain socket with the same timeout.
 *
 * System calls in a virtual thread.  A receive whose wait ended leaves the
 * fd's watcher armed for the socket (io.c's armed_for, as sock.c does): the
 * next receive on it waits at once, without a recv() that could only fail
 * with EAGAIN and without an epoll_ctl().  So an echo loop costs one recv()
 * and one send() per message, plus the loop's shared epoll_wait().
 *
 * Cancellation.  The Future is what the task waits on, so task.cancel()
 * cancels it and the CancelledError is thrown in at gh_suspend(); the wait
 * then takes its reader/writer and timer out before the error propagates,
 * whatever ended it, so no watcher or callback is left behind (fd_wait.c).
 *
 * Closing.  The kernel drops a closed fd from epoll without a word, so a
 * virtual thread waiting on it would never wake.  greenhub.socket's close
 * calls _green_closing() first, which completes the waits on the fd with
 * "closed" (gh_fd_wait_wake_closed: also those of _core._wait_fd() on it);
 * their recv()/send() then fail with EBADF as they do on a closed socket.
 */
#include <errno.h>
#include <sys/socket.h>

#include "clock.h"
#include "compat.h"
#include "fd_wait.h"
#include "green_sock.h"
#include "loop.h"
#include "vthread.h"

/* How a call waits: where, and until when. */
typedef struct {
    gh_state *st;
    PyObject *sock;  /* borrowed */
    gh_Loop *loop;   /* borrowed: the running greenhub loop (in a vthread) */
    gh_GreenCoro *w; /* borrowed: the task step, or NULL: wait in poll() */
    double timeout;  /* < 0: none; 0: never wait; > 0: seconds */
    double deadline; /* 0 until the first wait */
    int fd;
    char where_known; /* w and loop looked up */
} waitctx;

static gh_state *
mod_state(PyObject *mod)
{
    return (gh_state *)PyModule_GetState(mod);
}

static int
sock_fd(gh_state *st, PyObject *sock)
{
    PyObject *r = PyObject_CallMethodNoArgs(sock, st->tr.fileno);
    if (r == NULL) {
        return -2;
    }
    long fd = PyLong_AsLong(r);
    Py_DECREF(r);
    if (fd == -1 && PyErr_Occurred()) {
        return -2;
    }
    return fd < 0 || fd > INT_MAX ? -1 : (int)fd;
}

/* Fills in the socket's fd and timeout; -1 with an exception. */
static int
ctx_init(waitctx *c, gh_state *st, PyObject *sock)
{
    memset(c, 0, sizeof(*c));
    c->st = st;
    c->sock = sock;
    if (!PyObject_TypeCheck(sock, (PyTypeObject *)st->tr.socket_type)) {
        PyErr_Format(PyExc_TypeError, "expected a socket, got %.100s", Py_TYPE(sock)->tp_name);
        return -1;
    }
    PyObject *t = PyObject_GetAttr(sock, st->gs.timeout_attr);
    if (t == NULL) {
        return -1;
    }
    if (t == Py_None) {
        c->timeout = -1.0;
    }
    else {
        c->timeout = PyFloat_AsDouble(t);
        if (c->timeout == -1.0 && PyErr_Occurred()) {
            Py_DECREF(t);
            return -1;
        }
        if (c->timeout < 0) {
            c->timeout = -1.0;
        }
    }
    Py_DECREF(t);
    c->fd = sock_fd(st, sock);
    return c->fd == -2 ? -1 : 0;
}

/* 1 in a virtual thread, 0 if not, -1 on error; looked up once per call. */
static int
ctx_in_vthread(waitctx *c)
{
    if (!c->where_known) {
        c->w = gh_vthread_step(c->st, &c->loop);
        if (c->w == NULL && PyErr_Occurred()) {
            return -1;
        }
        c->where_known = 1;
    }
    return c->w != NULL;
}

/* Seconds left before the deadline (starting the clock at the first
 * wait, as socket does); -1 for no timeout; TimeoutError when none are
 * left. */
static int
ctx_remaining(waitctx *c, double *left)
{
    if (c->timeout < 0) {
        *left = -1.0;
        return 0;
    }
    double now = gh_monotonic();
    if (c->deadline == 0) {
        c->deadline = now + c->timeout;
    }
    *left = c->deadline - now;
    if (*left <= 0) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return -1;
    }
    return 0;
}

/* --- the two ways to wait ------------------------------------------------- */

/* Outside virtual threads: poll() in this OS thread, as socket waits. */
static int
poll_wait(waitctx *c, int which)
{
    double left;
    if (ctx_remaining(c, &left) < 0) {
        return -1;
    }
    int ready = gh_fd_poll(c->fd, which, left);
    if (ready == 0) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
    }
    return ready > 0 ? 0 : -1;
}

/* The wait on the loop (fd_wait.c): TimeoutError when the deadline passes,
 * OSError(EBADF) when the socket is closed meanwhile. */
static int
green_wait(waitctx *c, int which)
{
    double left;
    if (ctx_remaining(c, &left) < 0) {
        return -1;
    }
    int ready = gh_fd_wait(c->loop, c->w, c->fd, c->sock, which, left >= 0 ? c->deadline : -1.0);
    if (ready == 0) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return -1;
    }
    return ready < 0 ? -1 : 0;
}

/* Waits until the fd is ready for `which` (or the call can fail for good:
 * the socket was closed).  -1 with an exception: timeout, cancellation. */
static int
ctx_wait(waitctx *c, int which)
{
    int in = ctx_in_vthread(c);
    if (in < 0) {
        return -1;
    }
    if (c->fd < 0) {
        return 0; /* closed: the call itself fails with EBADF, as socket's */
    }
    int rc = in ? green_wait(c, which) : poll_wait(c, which);
    if (rc == 0) {
        /* Closed meanwhile (by another thread): the next call fails with
         * EBADF, as socket's calls do. */
        int fd = sock_fd(c->st, c->sock);
        if (fd == -2) {
            return -1;
        }
        c->fd = fd;
    }
    return rc;
}

/* --- system calls, as socket makes them ------------------------------------ */

/* >= 0 bytes, -2 for EAGAIN (no exception), -1 with OSError set.  Retried
 * after EINTR once signal handlers ran, as socket does. */
static Py_ssize_t
do_recv(int fd, void *buf, Py_ssize_t len, int flags)
{
    for (;;) {
        Py_ssize_t n = recv(fd, buf, (size_t)len, flags);
        if (n >= 0) {
            return n;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return -2;
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

static Py_ssize_t
do_send(int fd, const void *buf, Py_ssize_t len, int flags)
{
    for (;;) {
        Py_ssize_t n = send(fd, buf, (size_t)len, flags | MSG_NOSIGNAL);
        if (n >= 0) {
            return n;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return -2;
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

/* EAGAIN on a non-blocking socket: socket raises BlockingIOError. */
static void
set_eagain(void)
{
    errno = EAGAIN;
    PyErr_SetFromErrno(PyExc_OSError);
}

/* recv into buf until something arrives: bytes read, or -1 with an
 * exception. */
static Py_ssize_t
recv_until(waitctx *c, void *buf, Py_ssize_t len, int flags)
{
    if (c->timeout != 0 && len > 0) {
        int in = ctx_in_vthread(c);
        if (in < 0) {
            return -1;
        }
        /* Armed for this socket and not reported readable since: nothing
         * to read yet, so wait first. */
        if (in && c->fd >= 0 && gh_io_armed_for(c->loop, c->fd, c->sock) &&
            ctx_wait(c, GH_IO_READ) < 0) {
            return -1;
        }
    }
    for (;;) {
        Py_ssize_t n = do_recv(c->fd, buf, len, flags);
        if (n != -2) {
            return n;
        }
        if (c->timeout == 0) {
            set_eagain();
            return -1;
        }
        if (ctx_wait(c, GH_IO_READ) < 0) {
            return -1;
        }
    }
}

/* One send() that sends something: bytes sent, or -1 with an exception. */
static Py_ssize_t
send_until(waitctx *c, const char *buf, Py_ssize_t len, int flags)
{
    for (;;) {
        Py_ssize_t n = do_send(c->fd, buf, len, flags);
        if (n != -2) {
            return n;
        }
        if (c->timeout == 0) {
            set_eagain();
            return -1;
        }
        if (ctx_wait(c, GH_IO_WRITE) < 0) {
            return -1;
        }
    }
}

/* --- module functions -------------------------------------------------------- */

/* recv_nothing: socket.recv(0) returns b'' and recv_into() of zero bytes (an
 * empty buffer, or nbytes=0 with one) returns 0 without a system call or a
 * wait - at once on a blocking socket with no data, on a closed socket, and
 * without consuming a datagram.  A green socket does the same, rather than
 * wait for readability (recv(fd, buf, 0) on the non-blocking fd fails with
 * EAGAIN until data arrives). */

/* Raises what socket.socket's method `name` raises for `args` and `kwargs`,
 * which broke one of its rules: our parse of them (with its format) failed,
 * or a rule it checks before any I/O (a negative size, a buffer too small).
 * socket words those errors itself, differently between versions (3.15 moved
 * send and sendall to another argument parser), so socket raises them: the
 * same call on a socket with no fd - made by socket.socket's own __new__
 * without __init__, so its fd is -1 and nothing is sent or received - fails
 * with socket's own error.  Should socket accept the arguments (the call
 * then fails with EBADF), the error the caller set stands. */
static PyObject *
socket_arg_error(gh_state *st, const char *name, PyObject *args, PyObject *kwargs)
{
    PyObject *ours = gh_err_get_raised();
    PyTypeObject *tp = (PyTypeObject *)st->tr.socket_type;
    PyObject *empty = PyTuple_New(0);
    PyObject *nofd = empty == NULL ? NULL : tp->tp_new(tp, empty, NULL);
    Py_XDECREF(empty);
    PyObject *meth = nofd == NULL ? NULL : PyObject_GetAttrString(nofd, name);
    Py_XDECREF(nofd);
    PyObject *res = meth == NULL ? NULL : PyObject_Call(meth, args, kwargs);
    Py_XDECREF(meth);
    if (res == NULL && !PyErr_ExceptionMatches(PyExc_OSError)) {
        Py_XDECREF(ours); /* socket's own error is set */
        return NULL;
    }
    Py_XDECREF(res);
    PyErr_Clear();
    gh_err_set_raised(ours);
    return NULL;
}

/* _green_recv(sock, args): socket.recv(*args). */
static PyObject *
green_recv(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = mod_state(mod);
    Py_ssize_t len;
    int flags = 0;
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_green_recv(sock, args)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args[1], "n|i:recv", &len, &flags)) {
        return socket_arg_error(st, "recv", args[1], NULL);
    }
    if (len < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
        return socket_arg_error(st, "recv", args[1], NULL);
    }
    waitctx c;
    if (ctx_init(&c, st, args[0]) < 0) {
        return NULL;
    }
    if (len == 0) {
        return PyBytes_FromStringAndSize(NULL, 0); /* see recv_nothing() */
    }
    /* Reads of up to GH_RBUF_SIZE go through the module's buffer (as the
     * transports' do), copied out before anything else can run. */
    char *big = NULL, *buf = st->rbuf;
    if (len > GH_RBUF_SIZE) {
        buf = big = PyMem_Malloc(len);
    }
    else if (buf == NULL) {
        buf = st->rbuf = PyMem_Malloc(GH_RBUF_SIZE);
    }
    if (buf == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t n = recv_until(&c, buf, len, flags);
    PyObject *res = n < 0 ? NULL : PyBytes_FromStringAndSize(buf, n);
    PyMem_Free(big);
    return res;
}

/* _green_recv_into(sock, args, kwargs): socket.recv_into(*args, **kwargs). */
static PyObject *
green_recv_into(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static char *kwlist[] = {"buffer", "nbytes", "flags", NULL};
    gh_state *st = mod_state(mod);
    if (nargs != 3 || !PyTuple_Check(args[1]) || (args[2] != Py_None && !PyDict_Check(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "_green_recv_into(sock, args, kwargs)");
        return NULL;
    }
    Py_buffer view;
    Py_ssize_t len = 0;
    int flags = 0;
    PyObject *kw = args[2] == Py_None ? NULL : args[2];
    if (!PyArg_ParseTupleAndKeywords(args[1], kw, "w*|ni:recv_into", kwlist, &view, &len, &flags)) {
        return socket_arg_error(st, "recv_into", args[1], kw);
    }
    PyObject *res = NULL;
    if (len < 0 || view.len < (len == 0 ? view.len : len)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, len < 0 ? "negative buffersize in recv_into"
                                                  : "buffer too small for requested bytes");
        return socket_arg_error(st, "recv_into", args[1], kw);
    }
    if (len == 0) {
        len = view.len;
    }
    waitctx c;
    if (ctx_init(&c, st, args[0]) < 0) {
        goto done;
    }
    /* socket.recv_into() reads nothing into nothing: see recv_nothing(). */
    Py_ssize_t n = len == 0 ? 0 : recv_until(&c, view.buf, len, flags);
    res = n < 0 ? NULL : PyLong_FromSsize_t(n);
done:
    PyBuffer_Release(&view);
    return res;
}

/* _green_send(sock, args): socket.send(*args). */
static PyObject *
green_send(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = mod_state(mod);
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_green_send(sock, args)");
        return NULL;
    }
    Py_buffer view;
    int flags = 0;
    if (!PyArg_ParseTuple(args[1], "y*|i:send", &view, &flags)) {
        return socket_arg_error(st, "send", args[1], NULL);
    }
    waitctx c;
    PyObject *res = NULL;
    if (ctx_init(&c, st, args[0]) == 0) {
        Py_ssize_t n = send_until(&c, view.buf, view.len, flags);
        res = n < 0 ? NULL : PyLong_FromSsize_t(n);
    }
    PyBuffer_Release(&view);
    return res;
}

/* _green_sendall(sock, args): socket.sendall(*args); the timeout bounds
 * the whole call, as socket's does. */
static PyObject *
green_sendall(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = mod_state(mod);
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_green_sendall(sock, args)");
        return NULL;
    }
    Py_buffer view;
    int flags = 0;
    if (!PyArg_ParseTuple(args[1], "y*|i:sendall", &view, &flags)) {
        return socket_arg_error(st, "sendall", args[1], NULL);
    }
    waitctx c;
    PyObject *res = NULL;
    if (ctx_init(&c, st, args[0]) == 0) {
        const char *p = view.buf;
        Py_ssize_t left = view.len;
        /* At least one send(), as socket.sendall() makes even for no data
         * (on a closed socket, sendall(b'') fails with EBADF). */
        do {
            Py_ssize_t n = send_until(&c, p, left, flags);
            if (n < 0) {
                break;
            }
            p += n;
            left -= n;
            /* socket.sendall() runs signal handlers between sends. */
            if (left > 0 && PyErr_CheckSignals() < 0) {
                break;
            }
        } while (left > 0);
        if (left == 0 && !PyErr_Occurred()) {
            res = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&view);
    return res;
}

/* _green_wait(sock, write, timeout): waits until the socket is readable
 * (write false) or writable, for at most `timeout` seconds (None: no
 * limit): in a virtual thread on the loop, elsewhere in poll().
 * TimeoutError('timed out') when it expires. */
static PyObject *
green_wait_fn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = mod_state(mod);
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_green_wait(sock, write, timeout)");
        return NULL;
    }
    int write = PyObject_IsTrue(args[1]);
    if (write < 0) {
        return NULL;
    }
    waitctx c;
    if (ctx_init(&c, st, args[0]) < 0) {
        return NULL;
    }
    if (args[2] == Py_None) {
        c.timeout = -1.0;
    }
    else {
        c.timeout = PyFloat_AsDouble(args[2]);
        if (c.timeout == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (c.timeout <= 0) {
            PyErr_SetString(PyExc_TimeoutError, "timed out");
            return NULL;
        }
    }
    if (ctx_wait(&c, write ? GH_IO_WRITE : GH_IO_READ) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _green_closing(sock): the socket is about to be closed.  Wakes the
 * virtual threads waiting on it in this thread's running loop (their call
 * fails with EBADF) and stops the fd's green watchers while the fd is still
 * open. */
static PyObject *
green_closing(PyObject *mod, PyObject *sock)
{
    gh_state *st = mod_state(mod);
    gh_Loop *loop;
    (void)gh_vthread_step(st, &loop);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (loop == NULL || loop->fdw.ready == NULL || loop->closed) {
        Py_RETURN_NONE;
    }
    int fd = sock_fd(st, sock);
    if (fd < 0) {
        return fd == -2 ? NULL : Py_NewRef(Py_None);
    }
    if (gh_fd_wait_wake_closed(loop, fd) < 0) {
        return NULL;
    }
    if (gh_io_forget(loop, fd, sock) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef green_methods[] = {
    {"_green_recv", (PyCFunction)(void (*)(void))green_recv, METH_FASTCALL,
     "_green_recv(sock, args): greenhub.socket.recv(*args)"},
    {"_green_recv_into", (PyCFunction)(void (*)(void))green_recv_into, METH_FASTCALL,
     "_green_recv_into(sock, args, kwargs): greenhub.socket.recv_into(*args, **kwargs)"},
    {"_green_send", (PyCFunction)(void (*)(void))green_send, METH_FASTCALL,
     "_green_send(sock, args): greenhub.socket.send(*args)"},
    {"_green_sendall", (PyCFunction)(void (*)(void))green_sendall, METH_FASTCALL,
     "_green_sendall(sock, args): greenhub.socket.sendall(*args)"},
    {"_green_wait", (PyCFunction)(void (*)(void))green_wait_fn, METH_FASTCALL,
     "_green_wait(sock, write, timeout): wait until a green socket is ready"},
    {"_green_closing", green_closing, METH_O,
     "_green_closing(sock): wake the virtual threads waiting on a socket being closed"},
    {NULL, NULL, 0, NULL},
};

int
gh_green_sock_init(PyObject *mod, gh_state *st)
{
    st->gs.timeout_attr = PyUnicode_InternFromString("_gh_timeout");
    if (st->gs.timeout_attr == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(mod, green_methods);
}

void
gh_green_sock_clear(gh_state *st)
{
    Py_CLEAR(st->gs.timeout_attr);
}

int
gh_green_sock_traverse(gh_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->gs.timeout_attr);
    return 0;
}
