/*
 * sock.c - the C paths under loop.sock_recv(), sock_recv_into() and
 * sock_sendall().
 *
 * greenhub.Loop's sock_* coroutines (greenhub/_loop.py) call these and fall
 * back to asyncio's own methods when they return None: in debug mode, for
 * sockets that are not plain non-blocking socket.socket objects (a subclass
 * may override recv/send; an SSLSocket is refused by asyncio; a timeout
 * would make asyncio's call block), for arguments asyncio must reject, and
 * for fds that a transport may own.  What they do is asyncio's algorithm -
 * try the call at once; otherwise a Future, a reader Handle that retries on
 * readiness and completes the Future, and a done-callback that removes the
 * reader - so results, errors and cancellation (a cancelled receive reads
 * nothing) are the stock loop's.
 *
 * What differs is the cost.  When a wait ends, the fd's libev watcher is
 * left armed for reading on behalf of that socket (io.c's armed_for)
 * instead of being stopped, so the next sock_recv() on it that has to wait
 * does not re-register the fd with epoll.  Data that arrives with no
 * receive waiting disarms it (level-triggered polling would report it every
 * iteration).
 *
 * Every receive still tries its recv() first, armed or not.  "Armed and not
 * reported readable" does not mean "empty": the recv() that ended the wait
 * may have left data behind, and this thread may have sent some since (a
 * peer in the same program); until the next poll the watcher cannot have
 * said so.  The stock loop reads such data at once, and a receive that
 * waited an iteration for it would reorder the program's callbacks.
 */
#include <errno.h>
#include <sys/socket.h>

#include "compat.h"
#include "handle.h"
#include "loop.h"
#include "sock.h"
#include "transport.h"

/* Ends a wait: the Future's done-callback (asyncio's _sock_read_done). */
typedef struct {
    PyObject_HEAD gh_Loop *loop; /* owned */
    PyObject *handle;            /* owned: the reader Handle of the wait */
    PyObject *sock;              /* owned */
    int fd;
} gh_SockDone;

/* --- helpers ---------------------------------------------------------------- */

/* The fd of a plain, non-blocking socket.socket; -1 (no exception) if the C
 * path does not apply; -2 with an exception. */
static int
plain_fd(gh_state *st, PyObject *sock)
{
    if (!gh_is_plain_socket(st, sock)) {
        return -1;
    }
    PyObject *t = PyObject_CallMethodNoArgs(sock, st->sk.gettimeout);
    if (t == NULL) {
        return -2;
    }
    int nonblocking = PyFloat_Check(t) && PyFloat_AS_DOUBLE(t) == 0.0;
    Py_DECREF(t);
    if (!nonblocking) {
        return -1;
    }
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

/* 1 if a transport may own fd (asyncio's _ensure_fd_no_transport() must
 * decide), 0 if not, -1 on error.  Reads the loop's WeakValueDictionary's
 * underlying dict so that the common case costs no Python call. */
static int
maybe_transport_fd(gh_state *st, gh_Loop *self, int fd)
{
    PyObject *transports = PyObject_GetAttr((PyObject *)self, st->sk.transports);
    if (transports == NULL) {
        return -1;
    }
    PyObject *data = NULL;
    int has = gh_get_optional_attr(transports, st->sk.data, &data);
    Py_DECREF(transports);
    if (has <= 0) {
        return has < 0 ? -1 : 1;
    }
    int found = 1;
    PyObject *key = PyLong_FromLong(fd);
    if (key != NULL && PyDict_Check(data)) {
        found = PyDict_Contains(data, key);
    }
    Py_XDECREF(key);
    Py_DECREF(data);
    return key == NULL ? -1 : found;
}

/* recv() as socket.socket.recv() does it on a non-blocking socket: retried
 * after EINTR once signal handlers ran.  Returns the byte count, -2 for
 * EAGAIN (no exception), or -1 with OSError set as socket would raise it. */
Py_ssize_t
gh_sock_try_recv(int fd, char *buf, Py_ssize_t size)
{
    for (;;) {
        Py_ssize_t n = recv(fd, buf, (size_t)size, 0);
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

/* recv(fd, n) into a new bytes object (through the module's read buffer). */
static PyObject *
recv_bytes(gh_state *st, int fd, Py_ssize_t n, int *again)
{
    if (st->rbuf == NULL && (st->rbuf = PyMem_Malloc(GH_RBUF_SIZE)) == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t got = gh_sock_try_recv(fd, st->rbuf, n);
    *again = got == -2;
    if (got < 0) {
        return NULL;
    }
    return PyBytes_FromStringAndSize(st->rbuf, got);
}

/* recv_into() could not borrow the buffer: socket.recv_into() must raise
 * its own error (its argument parser rewords PyObject_GetBuffer's). */
#define NOT_BORROWED (-3)

/* recv_into(fd, buf): bytes read, -2 for EAGAIN, -1 with an exception,
 * NOT_BORROWED without one.  The buffer is borrowed as socket.recv_into()
 * borrows it ("w*": writable, C-contiguous, any shape or format, its size in
 * bytes), only for the recv() - a wait that follows borrows it again, as
 * asyncio calls recv_into() again, so a buffer released or resized
 * meanwhile is seen as it is then - and into zero bytes nothing is read,
 * with no system call, as socket.recv_into() does (recv(fd, buf, 0) on the
 * non-blocking fd would fail with EAGAIN until data arrives). */
static Py_ssize_t
recv_into(int fd, PyObject *buf)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        return NOT_BORROWED;
    }
    Py_ssize_t got = view.len == 0 ? 0 : gh_sock_try_recv(fd, view.buf, view.len);
    PyBuffer_Release(&view);
    return got;
}

/* A reader method bound to the loop, made once per loop. */
static PyObject *
bound_ready(gh_Loop *self, PyObject **cache, PyMethodDef *def)
{
    if (*cache == NULL) {
        *cache = PyCFunction_New(def, (PyObject *)self);
    }
    return *cache;
}

/* The wait for readability: a Future, fd's reader Handle calling
 * `ready(fut, sock, arg)`, and a done-callback ending the wait.  Returns
 * the Future. */
static PyObject *
start_wait(gh_state *st, gh_Loop *self, int fd, PyObject *sock, PyObject *ready, PyObject *arg)
{
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    PyObject *kwargs_name = st->sk.kw_loop;
    PyObject *loop_arg[1] = {(PyObject *)self};
    PyObject *fut = PyObject_Vectorcall(st->sk.future_type, loop_arg, 0, kwargs_name);
    if (fut == NULL) {
        return NULL;
    }
    PyObject *hargs[3] = {fut, sock, arg};
    PyObject *handle = gh_handle_new(st, st->HandleType, (PyObject *)self, ready, hargs, 3, NULL);
    if (handle == NULL) {
        Py_DECREF(fut);
        return NULL;
    }
    gh_SockDone *done = NULL;
    if (gh_io_wait_read(self, fd, sock, handle) < 0) {
        goto fail;
    }
    done = PyObject_GC_New(gh_SockDone, st->SockDoneType);
    if (done == NULL) {
        goto fail;
    }
    done->loop = (gh_Loop *)Py_NewRef(self);
    done->handle = Py_NewRef(handle);
    done->sock = Py_NewRef(sock);
    done->fd = fd;
    PyObject_GC_Track(done);
    PyObject *r = PyObject_CallMethodOneArg(fut, st->sk.add_done_callback, (PyObject *)done);
    Py_DECREF(done);
    if (r == NULL) {
        /* Nobody would end the wait: take the reader out again. */
        PyObject *exc = gh_err_get_raised();
        if (gh_io_wait_done(self, fd, sock, handle) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        gh_err_set_raised(exc);
        goto fail;
    }
    Py_DECREF(r);
    Py_DECREF(handle);
    return fut;
fail:
    Py_DECREF(handle);
    Py_DECREF(fut);
    return NULL;
}

/* Completes the Future of a wait from the result of a read: the value, or
 * the exception being raised (SystemExit and KeyboardInterrupt propagate). */
static PyObject *
complete(gh_state *st, PyObject *fut, PyObject *value)
{
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
            PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            return NULL;
        }
        PyObject *exc = gh_err_get_raised();
        PyObject *r = PyObject_CallMethodOneArg(fut, st->sk.set_exception, exc);
        Py_DECREF(exc);
        return r;
    }
    PyObject *r = PyObject_CallMethodOneArg(fut, st->sk.set_result, value);
    Py_DECREF(value);
    return r;
}

static int
fut_done(gh_state *st, PyObject *fut)
{
    PyObject *r = PyObject_CallMethodNoArgs(fut, st->sk.done);
    if (r == NULL) {
        return -1;
    }
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* --- sock_recv ------------------------------------------------------------------ */

/* The reader callback: asyncio's _sock_recv(fut, sock, n). */
static PyObject *
sock_recv_ready(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_gh_sock_recv_ready(fut, sock, n)");
        return NULL;
    }
    int done = fut_done(st, args[0]);
    if (done != 0) {
        return done < 0 ? NULL : Py_NewRef(Py_None);
    }
    int fd = plain_fd(st, args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (fd == -2 || (n == -1 && PyErr_Occurred())) {
        return NULL;
    }
    PyObject *data;
    int again = 0;
    if (fd < 0) { /* closed meanwhile, or its timeout changed: socket's call */
        data = PyObject_CallMethodOneArg(args[1], st->sk.recv, args[2]);
        if (data == NULL && (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
                             PyErr_ExceptionMatches(PyExc_InterruptedError))) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    else {
        data = recv_bytes(st, fd, n, &again);
    }
    if (again) {
        Py_RETURN_NONE; /* spurious: try again on the next readiness */
    }
    return complete(st, args[0], data);
}

static PyMethodDef recv_ready_def = {
    "_gh_sock_recv_ready", (PyCFunction)(void (*)(void))sock_recv_ready, METH_FASTCALL, NULL};

/* _gh_sock_recv(sock, n) -> bytes | Future | None (use asyncio's). */
PyObject *
gh_loop_sock_recv(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    if (nargs != 2 || !PyLong_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    PyObject *sock = args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (n < 0 || n > GH_RBUF_SIZE) {
        Py_RETURN_NONE;
    }
    int fd = plain_fd(st, sock);
    if (fd < 0) {
        return fd == -2 ? NULL : Py_NewRef(Py_None);
    }
    if (n == 0) {
        return PyBytes_FromStringAndSize(NULL, 0); /* socket.recv(0) makes no call */
    }
    int again;
    PyObject *data = recv_bytes(st, fd, n, &again);
    if (data != NULL || !again) {
        return data; /* the data, or socket.recv()'s exception */
    }
    int t = maybe_transport_fd(st, self, fd);
    if (t != 0) {
        return t < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *ready = bound_ready(self, &self->sockw.recv_ready, &recv_ready_def);
    return ready == NULL ? NULL : start_wait(st, self, fd, sock, ready, args[1]);
}

/* --- sock_recv_into ------------------------------------------------------------- */

static PyObject *
sock_recv_into_ready(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_gh_sock_recv_into_ready(fut, sock, buf)");
        return NULL;
    }
    int done = fut_done(st, args[0]);
    if (done != 0) {
        return done < 0 ? NULL : Py_NewRef(Py_None);
    }
    int fd = plain_fd(st, args[1]);
    if (fd == -2) {
        return NULL;
    }
    PyObject *value;
    Py_ssize_t got = fd < 0 ? NOT_BORROWED : recv_into(fd, args[2]);
    if (got == NOT_BORROWED) {
        /* Closed meanwhile, its timeout changed, or the buffer is no longer
         * one (released, say): socket's call, and its result or error. */
        value = PyObject_CallMethodOneArg(args[1], st->sk.recv_into, args[2]);
        if (value == NULL && (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
                              PyErr_ExceptionMatches(PyExc_InterruptedError))) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    else if (got == -2) {
        Py_RETURN_NONE;
    }
    else {
        value = got < 0 ? NULL : PyLong_FromSsize_t(got);
    }
    return complete(st, args[0], value);
}

static PyMethodDef recv_into_ready_def = {"_gh_sock_recv_into_ready",
                                          (PyCFunction)(void (*)(void))sock_recv_into_ready,
                                          METH_FASTCALL, NULL};

/* _gh_sock_recv_into(sock, buf) -> int | Future | None (use asyncio's). */
PyObject *
gh_loop_sock_recv_into(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    if (nargs != 2) {
        Py_RETURN_NONE;
    }
    PyObject *sock = args[0], *buf = args[1];
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE; /* asyncio's call raises socket's own error */
    }
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    int fd = plain_fd(st, sock);
    if (fd < 0) {
        return fd == -2 ? NULL : Py_NewRef(Py_None);
    }
    if (len == 0) {
        return PyLong_FromLong(0); /* socket.recv_into() reads nothing, at once */
    }
    Py_ssize_t got = recv_into(fd, buf);
    if (got == NOT_BORROWED) {
        Py_RETURN_NONE; /* changed since the check above: asyncio's call */
    }
    if (got != -2) {
        return got < 0 ? NULL : PyLong_FromSsize_t(got);
    }
    int t = maybe_transport_fd(st, self, fd);
    if (t != 0) {
        return t < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *ready = bound_ready(self, &self->sockw.recv_into_ready, &recv_into_ready_def);
    return ready == NULL ? NULL : start_wait(st, self, fd, sock, ready, buf);
}

/* --- sock_sendall ----------------------------------------------------------------- */

/* _gh_sock_send(sock, data) -> bytes sent by one non-blocking send() (0 for
 * EAGAIN), or None (use asyncio's sock_sendall()).  sock_sendall() then
 * waits for the rest as asyncio does. */
PyObject *
gh_loop_sock_send(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    if (nargs != 2) {
        Py_RETURN_NONE;
    }
    int fd = plain_fd(st, args[0]);
    if (fd < 0) {
        return fd == -2 ? NULL : Py_NewRef(Py_None);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE; /* asyncio's call raises socket's own error */
    }
    Py_ssize_t n;
    for (;;) {
        n = send(fd, view.buf, (size_t)view.len, 0);
        if (n >= 0) {
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            n = 0;
            break;
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            break;
        }
    }
    PyBuffer_Release(&view);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

/* --- the done-callback type --------------------------------------------------------- */

static PyObject *
sockdone_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    (void)args;
    gh_SockDone *d = (gh_SockDone *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a done-callback takes the future");
        return NULL;
    }
    /* asyncio: remove the reader unless its handle was cancelled (someone
     * else's add_reader() replaced it). */
    if (!gh_hd(d->handle)->cancelled && gh_io_wait_done(d->loop, d->fd, d->sock, d->handle) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
sockdone_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "a done-callback takes no keyword arguments");
        return NULL;
    }
    return sockdone_vectorcall(op, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args),
                               NULL);
}

static int
sockdone_traverse(PyObject *op, visitproc visit, void *arg)
{
    gh_SockDone *d = (gh_SockDone *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)d->loop);
    Py_VISIT(d->handle);
    Py_VISIT(d->sock);
    return 0;
}

static int
sockdone_clear(PyObject *op)
{
    gh_SockDone *d = (gh_SockDone *)op;
    Py_CLEAR(d->loop);
    Py_CLEAR(d->handle);
    Py_CLEAR(d->sock);
    return 0;
}

static void
sockdone_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    sockdone_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyObject *
sockdone_repr(PyObject *op)
{
    gh_SockDone *d = (gh_SockDone *)op;
    return PyUnicode_FromFormat("<greenhub sock_recv wait on fd %d>", d->fd);
}

static PyType_Slot sockdone_slots[] = {
    {Py_tp_doc, "Ends a sock_recv() wait when its future is done (internal)."},
    {Py_tp_call, sockdone_call},
    {Py_tp_repr, sockdone_repr},
    {Py_tp_dealloc, sockdone_dealloc},
    {Py_tp_traverse, sockdone_traverse},
    {Py_tp_clear, sockdone_clear},
    {0, NULL},
};

PyType_Spec gh_sockdone_spec = {
    .name = "greenhub._core._SockWaitDone",
    .basicsize = sizeof(gh_SockDone),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sockdone_slots,
};

/* --- module state ------------------------------------------------------------------ */

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

int
gh_sock_state_init(gh_state *st)
{
    if (intern(&st->sk.gettimeout, "gettimeout") < 0 ||
        intern(&st->sk.transports, "_transports") < 0 || intern(&st->sk.data, "data") < 0 ||
        intern(&st->sk.recv, "recv") < 0 || intern(&st->sk.recv_into, "recv_into") < 0 ||
        intern(&st->sk.done, "done") < 0 || intern(&st->sk.set_result, "set_result") < 0 ||
        intern(&st->sk.set_exception, "set_exception") < 0 ||
        intern(&st->sk.add_done_callback, "add_done_callback") < 0) {
        return -1;
    }
    st->sk.kw_loop = Py_BuildValue("(s)", "loop");
    PyObject *futures = PyImport_ImportModule("asyncio.futures");
    if (futures == NULL || st->sk.kw_loop == NULL) {
        Py_XDECREF(futures);
        return -1;
    }
    st->sk.future_type = PyObject_GetAttrString(futures, "Future");
    Py_DECREF(futures);
    return st->sk.future_type == NULL ? -1 : 0;
}

/* Every object the sock part of the module state owns. */
#define SK_FIELDS(st)                                                                              \
    {                                                                                              \
        &(st)->sk.gettimeout, &(st)->sk.transports, &(st)->sk.data, &(st)->sk.recv,                \
            &(st)->sk.recv_into, &(st)->sk.done, &(st)->sk.set_result, &(st)->sk.set_exception,    \
            &(st)->sk.kw_loop, &(st)->sk.future_type, &(st)->sk.add_done_callback,                 \
    }

int
gh_sock_waits_traverse(gh_sock_waits *sw, visitproc visit, void *arg)
{
    Py_VISIT(sw->recv_ready);
    Py_VISIT(sw->recv_into_ready);
    return 0;
}

void
gh_sock_waits_clear(gh_sock_waits *sw)
{
    Py_CLEAR(sw->recv_ready);
    Py_CLEAR(sw->recv_into_ready);
}

int
gh_sock_state_traverse(gh_state *st, visitproc visit, void *arg)
{
    PyObject **fields[] = SK_FIELDS(st);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_VISIT(*fields[i]);
    }
    return 0;
}

void
gh_sock_state_clear(gh_state *st)
{
    PyObject **fields[] = SK_FIELDS(st);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_CLEAR(*fields[i]);
    }
}
