/*
 * transport.c - the hot paths of greenhub's socket transport.
 *
 * greenhub/_transport.py's SocketTransport is asyncio's own
 * _SelectorSocketTransport with this file's _SocketTransportBase mixed in
 * first, so these C methods take the place of asyncio's on the hot paths:
 *
 *   _read_ready, _read_ready__data_received, _read_ready__get_buffer:
 *     one recv() and one call of the protocol, no Python frames between;
 *   write(): the data goes on the transport's write queue, and at the end of
 *     the loop iteration the loop sends each queue with one writev()
 *     (gh_writes_flush), so the writes of one iteration cost one
 *     system call per connection.
 *
 * Everything else - close, abort, EOF, flow control, sendfile, set_protocol,
 * error handling - stays asyncio's code, and so does every unusual case: the
 * C methods call asyncio's versions when data is already buffered, the
 * connection is lost, write_eof() or sendfile is under way, the loop is not
 * running in this thread or the socket is not a plain socket.socket.
 *
 * The attributes of asyncio's transport that these paths read (_conn_lost,
 * _eof, _empty_waiter, _buffer, _sock, _protocol, _read_ready_cb) live in
 * the transport's TransportState, not its __dict__: the mixin defines them
 * as data descriptors, so asyncio's Python code reads and writes the same
 * storage as the C code - one copy, no synchronisation - and the hot paths
 * need a single dict lookup (for _gh_state) per call instead of one per
 * attribute.
 *
 * Queued data is sent before anything can tell it was queued: at the end of
 * every loop iteration (also when a callback raises out of the loop), and,
 * from the Python layer, before close(), abort(), write_eof(), writelines(),
 * get_write_buffer_size() and sendfile.  A queue past the transport's
 * high-water mark (or past GH_WQ_FLUSH_AT bytes) is sent at once, in write():
 * what the kernel does not take of it can pause the protocol, and asyncio
 * calls pause_writing() inside write() itself - in the caller's context, with
 * the caller still to run.  A queue that waits for the end of the iteration
 * is never over the mark, so what is left of it cannot pause the protocol
 * there, in the loop's own context.
 */
#include "transport.h"

#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "compat.h"
#include "loop.h"
#include "sock.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* asyncio's default high-water mark: a queue this big is sent at once, whatever
 * the transport's mark (a bound on what one iteration holds back). */
#define GH_WQ_FLUSH_AT (64 * 1024)

/* sock_fd() results besides a valid fd. */
#define FD_ERROR (-3) /* exception set */
#define FD_OTHER (-2) /* not a plain socket.socket: use asyncio's code */
/* -1: the socket is closed; its system calls fail with EBADF as
 * socket.socket's own do. */

/* --- helpers ---------------------------------------------------------------- */

/* The transport's TransportState (a new reference), or NULL: with an
 * exception if the lookup failed, without one if the transport has none
 * (its __init__ did not run) and asyncio's code must handle the call. */
static gh_TransportState *
state_of(gh_state *st, PyObject *self)
{
    PyObject *dict = PyObject_GenericGetDict(self, NULL);
    if (dict == NULL) {
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(dict, st->tr.state);
    Py_DECREF(dict);
    if (v == NULL || !Py_IS_TYPE(v, st->TransportStateType)) {
        return NULL;
    }
    return (gh_TransportState *)Py_NewRef(v);
}

/* The truth of a state field: 1, 0, or -1 with an exception (an unset
 * field raises AttributeError, as the attribute would). */
static int
field_true(PyObject *value, const char *name)
{
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "transport has no attribute '%s'", name);
        return -1;
    }
    return PyObject_IsTrue(value);
}

/* asyncio's "except (SystemExit, KeyboardInterrupt): raise; except
 * BaseException as exc: self._fatal_error(exc, message)" for the exception
 * being raised.  Returns what _fatal_error() returned, or NULL to propagate. */
static PyObject *
fatal(gh_state *st, PyObject *self, const char *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
        PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return NULL;
    }
    PyObject *exc = gh_err_get_raised();
    PyObject *msg = PyUnicode_FromString(message);
    PyObject *res = NULL;
    if (msg != NULL) {
        res = PyObject_CallMethodObjArgs(self, st->tr.fatal_error, exc, msg, NULL);
        Py_DECREF(msg);
    }
    Py_DECREF(exc);
    return res;
}

/* The fd behind asyncio's socket object: >= 0, -1 if it is closed, FD_OTHER
 * if it is not a plain socket.socket (a subclass may override recv/send), or
 * FD_ERROR. */
static int
sock_fd(gh_state *st, PyObject *sock)
{
    if (!gh_is_plain_socket(st, sock)) {
        return FD_OTHER;
    }
    PyObject *r = PyObject_CallMethodNoArgs(sock, st->tr.fileno);
    if (r == NULL) {
        return FD_ERROR;
    }
    long fd = PyLong_AsLong(r);
    Py_DECREF(r);
    if (fd == -1 && PyErr_Occurred()) {
        return FD_ERROR;
    }
    return fd < 0 || fd > INT_MAX ? -1 : (int)fd;
}

static int
no_args(const char *name, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
        return -1;
    }
    return 0;
}

/* asyncio's version of a method: func(self, *args). */
static PyObject *
call_stock(PyObject *func, PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[4];
    PyObject **stack = small;
    if (total + 1 > 4) {
        stack = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        stack[i + 1] = args[i];
    }
    PyObject *res = PyObject_Vectorcall(func, stack, (size_t)(nargs + 1), kwnames);
    if (stack != small) {
        PyMem_Free(stack);
    }
    return res;
}

/* --- reading ---------------------------------------------------------------- */

/* The end of both read paths: EOF, an error, or the data for the protocol. */
static PyObject *
after_recv(gh_state *st, PyObject *self, Py_ssize_t n)
{
    if (n == -2) {
        Py_RETURN_NONE; /* BlockingIOError: nothing to read after all */
    }
    if (n == -1) {
        return fatal(st, self, "Fatal read error on socket transport");
    }
    assert(n == 0);
    return PyObject_CallMethodNoArgs(self, st->tr.on_eof);
}

/* _read_ready__data_received(): asyncio's, with recv() into a buffer of the
 * module's (copied into the bytes the protocol gets) instead of a fresh
 * max_size bytes object.  `ts` is borrowed. */
static PyObject *
read_data(gh_state *st, PyObject *self, gh_TransportState *ts)
{
    PyObject *res = NULL, *data = NULL, *proto = NULL;
    char *heap = NULL;
    int lost = field_true(ts->conn_lost, "_conn_lost");
    if (lost != 0) {
        res = lost > 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    int fd = ts->sock != NULL ? sock_fd(st, ts->sock) : FD_OTHER;
    if (fd == FD_ERROR) {
        goto done;
    }
    if (fd == FD_OTHER) {
        res = PyObject_CallOneArg(st->tr.stock_data_received, self);
        goto done;
    }
    PyObject *max_obj = PyObject_GetAttr(self, st->tr.max_size);
    if (max_obj == NULL) {
        goto done;
    }
    Py_ssize_t max_size = PyNumber_AsSsize_t(max_obj, PyExc_OverflowError);
    Py_DECREF(max_obj);
    if (max_size == -1 && PyErr_Occurred()) {
        res = fatal(st, self, "Fatal read error on socket transport");
        goto done;
    }
    if (max_size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
        res = fatal(st, self, "Fatal read error on socket transport");
        goto done;
    }
    char *buf = st->rbuf;
    if (max_size > GH_RBUF_SIZE) {
        buf = heap = PyMem_Malloc((size_t)max_size);
    }
    else if (buf == NULL) {
        buf = st->rbuf = PyMem_Malloc(GH_RBUF_SIZE);
    }
    if (buf == NULL) {
        PyErr_NoMemory();
        res = fatal(st, self, "Fatal read error on socket transport");
        goto done;
    }
    Py_ssize_t n = gh_sock_try_recv(fd, buf, max_size);
    if (n <= 0) {
        res = after_recv(st, self, n);
        goto done;
    }
    /* The buffer is reused only once this copy is made: nothing in between
     * can run Python code. */
    data = PyBytes_FromStringAndSize(buf, n);
    if (data == NULL) {
        res = fatal(st, self, "Fatal read error on socket transport");
        goto done;
    }
    proto = Py_XNewRef(ts->protocol);
    if (proto != NULL) {
        res = PyObject_CallMethodOneArg(proto, st->tr.data_received, data);
    }
    else {
        PyErr_SetString(PyExc_AttributeError, "transport has no attribute '_protocol'");
    }
    if (res == NULL) {
        res = fatal(st, self, "Fatal error: protocol.data_received() call failed.");
    }
    else {
        Py_SETREF(res, Py_NewRef(Py_None));
    }
done:
    PyMem_Free(heap);
    Py_XDECREF(proto);
    Py_XDECREF(data);
    return res;
}

static PyObject *
tr_data_received(PyObject *self, PyTypeObject *cls, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    (void)args;
    if (no_args("_read_ready__data_received", nargsf, kwnames) < 0) {
        return NULL;
    }
    gh_state *st = PyType_GetModuleState(cls);
    gh_TransportState *ts = state_of(st, self);
    if (ts == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(st->tr.stock_data_received, self);
    }
    PyObject *res = read_data(st, self, ts);
    Py_DECREF(ts);
    return res;
}

/* sock.recv_into(buf) the Python way, for buffers C cannot take directly
 * (so the error is exactly socket's). */
static Py_ssize_t
recv_into_py(gh_state *st, PyObject *sock, PyObject *buf)
{
    PyObject *r = PyObject_CallMethodOneArg(sock, st->tr.recv_into, buf);
    if (r == NULL) {
        if (PyErr_ExceptionMatches(PyExc_BlockingIOError) ||
            PyErr_ExceptionMatches(PyExc_InterruptedError)) {
            PyErr_Clear();
            return -2;
        }
        return -1;
    }
    Py_ssize_t n = PyNumber_AsSsize_t(r, PyExc_OverflowError);
    Py_DECREF(r);
    return n;
}

/* _read_ready__get_buffer(): asyncio's BufferedProtocol path, recv() straight
 * into the protocol's buffer. */
static PyObject *
tr_get_buffer(PyObject *self, PyTypeObject *cls, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    (void)args;
    if (no_args("_read_ready__get_buffer", nargsf, kwnames) < 0) {
        return NULL;
    }
    gh_state *st = PyType_GetModuleState(cls);
    gh_TransportState *ts = state_of(st, self);
    if (ts == NULL) {
        return PyErr_Occurred() ? NULL : PyObject_CallOneArg(st->tr.stock_get_buffer, self);
    }
    PyObject *res = NULL, *sock = NULL, *proto = NULL, *buf = NULL;
    int lost = field_true(ts->conn_lost, "_conn_lost");
    if (lost != 0) {
        res = lost > 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    sock = Py_XNewRef(ts->sock);
    int fd = sock != NULL ? sock_fd(st, sock) : FD_OTHER;
    if (fd == FD_ERROR) {
        goto done;
    }
    if (fd == FD_OTHER) {
        res = PyObject_CallOneArg(st->tr.stock_get_buffer, self);
        goto done;
    }
    proto = Py_XNewRef(ts->protocol);
    if (proto == NULL) {
        PyErr_SetString(PyExc_AttributeError, "transport has no attribute '_protocol'");
    }
    else {
        PyObject *minus_one = PyLong_FromLong(-1);
        if (minus_one != NULL) {
            buf = PyObject_CallMethodOneArg(proto, st->tr.get_buffer, minus_one);
            Py_DECREF(minus_one);
        }
    }
    Py_ssize_t len = buf != NULL ? PyObject_Length(buf) : -1;
    if (len == 0) {
        PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
    }
    if (len <= 0) {
        res = fatal(st, self, "Fatal error: protocol.get_buffer() call failed.");
        goto done;
    }
    /* get_buffer() and len() ran Python code, which may have closed the
     * socket - and a new socket may have its fd number: ask again. */
    fd = sock_fd(st, sock);
    if (fd == FD_ERROR) {
        goto done;
    }
    Py_ssize_t n;
    Py_buffer view;
    /* Borrowed as socket.recv_into() borrows it, only for the recv(): the
     * protocol may do what it likes with it in buffer_updated().  A buffer
     * of no bytes (len() counts items or rows) reads nothing, as
     * socket.recv_into() does, which asyncio takes for EOF. */
    if (fd >= 0 && PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) == 0) {
        n = view.len == 0 ? 0 : gh_sock_try_recv(fd, view.buf, view.len);
        PyBuffer_Release(&view);
    }
    else {
        /* Not a buffer C can take, or the socket is closed now: socket's
         * own call, with its own error. */
        PyErr_Clear();
        n = recv_into_py(st, sock, buf);
    }
    if (n <= 0) {
        res = after_recv(st, self, n);
        goto done;
    }
    Py_SETREF(proto, Py_XNewRef(ts->protocol));
    if (proto == NULL) {
        PyErr_SetString(PyExc_AttributeError, "transport has no attribute '_protocol'");
    }
    PyObject *nbytes = proto != NULL ? PyLong_FromSsize_t(n) : NULL;
    if (nbytes != NULL) {
        res = PyObject_CallMethodOneArg(proto, st->tr.buffer_updated, nbytes);
        Py_DECREF(nbytes);
    }
    if (res == NULL) {
        res = fatal(st, self, "Fatal error: protocol.buffer_updated() call failed.");
    }
    else {
        Py_SETREF(res, Py_NewRef(Py_None));
    }
done:
    Py_XDECREF(buf);
    Py_XDECREF(proto);
    Py_XDECREF(sock);
    Py_DECREF(ts);
    return res;
}

/* _read_ready(): the reader callback; runs self._read_ready_cb() as asyncio
 * does (set_protocol() picks one of the two methods above). */
static PyObject *
tr_read_ready(PyObject *self, PyTypeObject *cls, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    (void)args;
    if (no_args("_read_ready", nargsf, kwnames) < 0) {
        return NULL;
    }
    gh_state *st = PyType_GetModuleState(cls);
    gh_TransportState *ts = state_of(st, self);
    PyObject *cb = ts != NULL ? Py_XNewRef(ts->read_ready_cb) : NULL;
    if (cb != NULL && PyCFunction_Check(cb) && PyCFunction_GET_SELF(cb) == self &&
        PyCFunction_GET_FUNCTION(cb) == (PyCFunction)(void (*)(void))tr_data_received) {
        /* self._read_ready__data_received, as set_protocol() set it: run it
         * without a second call and state lookup. */
        PyObject *res = read_data(st, self, ts);
        Py_DECREF(cb);
        Py_DECREF(ts);
        return res;
    }
    Py_XDECREF(ts);
    if (cb == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "transport has no attribute '_read_ready_cb'");
        }
        return NULL;
    }
    PyObject *res = PyObject_CallNoArgs(cb);
    Py_DECREF(cb);
    return res;
}

/* --- writing ---------------------------------------------------------------- */

static void
wq_link(gh_Loop *loop, gh_TransportState *wq, PyObject *transport)
{
    assert(!wq->queued);
    wq->queued = 1;
    wq->transport = Py_NewRef(transport);
    Py_INCREF(wq); /* the loop's reference */
    wq->prev = loop->writes.tail;
    wq->next = NULL;
    if (loop->writes.tail != NULL) {
        loop->writes.tail->next = wq;
    }
    else {
        loop->writes.head = wq;
    }
    loop->writes.tail = wq;
}

/* Takes wq off its loop's flush list.  Returns the references the list held:
 * the transport's (returned) and wq's own (the caller drops it). */
static PyObject *
wq_unlink(gh_TransportState *wq)
{
    assert(wq->queued);
    gh_Loop *loop = wq->loop;
    if (wq->prev != NULL) {
        wq->prev->next = wq->next;
    }
    else {
        loop->writes.head = wq->next;
    }
    if (wq->next != NULL) {
        wq->next->prev = wq->prev;
    }
    else {
        loop->writes.tail = wq->prev;
    }
    wq->prev = wq->next = NULL;
    wq->queued = 0;
    PyObject *transport = wq->transport;
    wq->transport = NULL;
    return transport;
}

static void
wq_drop_items(gh_TransportState *wq, Py_ssize_t from)
{
    for (Py_ssize_t i = from; i < wq->n; i++) {
        Py_CLEAR(wq->items[i]);
    }
    wq->n = from;
}

/* The unsent data from item `first`, byte `offset` on, as one bytes object. */
static PyObject *
wq_remainder(gh_TransportState *wq, Py_ssize_t first, Py_ssize_t offset)
{
    if (first == wq->n - 1 && offset == 0) {
        return Py_NewRef(wq->items[first]);
    }
    Py_ssize_t size = -offset;
    for (Py_ssize_t i = first; i < wq->n; i++) {
        size += PyBytes_GET_SIZE(wq->items[i]);
    }
    PyObject *rem = PyBytes_FromStringAndSize(NULL, size);
    if (rem == NULL) {
        return NULL;
    }
    char *p = PyBytes_AS_STRING(rem);
    for (Py_ssize_t i = first; i < wq->n; i++) {
        Py_ssize_t len = PyBytes_GET_SIZE(wq->items[i]) - offset;
        memcpy(p, PyBytes_AS_STRING(wq->items[i]) + offset, (size_t)len);
        p += len;
        offset = 0;
    }
    return rem;
}

/* Sends what the (unlinked) queue holds with writev().  What the kernel
 * does not take goes through asyncio's write(), which buffers it, starts
 * the writer callback and applies flow control.  An error is reported as
 * asyncio's write() reports it (_fatal_error), unless the connection was
 * already lost, when the data is dropped as asyncio would drop it.
 * Returns -1 only for exceptions that must propagate. */
static int
wq_send(gh_state *st, gh_TransportState *wq, PyObject *self)
{
    if (wq->n == 0) {
        return 0;
    }
    PyObject *sock = NULL, *rem = NULL, *res = NULL;
    int rc = -1;
    Py_ssize_t first = 0, offset = 0;
    int err = 0;
    int lost = field_true(wq->conn_lost, "_conn_lost");
    if (lost < 0) {
        goto done;
    }
    sock = Py_XNewRef(wq->sock);
    int fd = sock != NULL ? sock_fd(st, sock) : FD_OTHER;
    if (fd == FD_ERROR) {
        goto done;
    }
    if (fd != FD_OTHER) {
        struct iovec iov[64];
        while (first < wq->n) {
            int cnt = 0;
            for (Py_ssize_t i = first; i < wq->n && cnt < 64 && cnt < IOV_MAX; i++, cnt++) {
                Py_ssize_t skip = i == first ? offset : 0;
                iov[cnt].iov_base = PyBytes_AS_STRING(wq->items[i]) + skip;
                iov[cnt].iov_len = (size_t)(PyBytes_GET_SIZE(wq->items[i]) - skip);
            }
            Py_ssize_t r = writev(fd, iov, cnt);
            if (r < 0) {
                if (errno == EINTR) {
                    if (PyErr_CheckSignals() < 0) {
                        err = -1;
                        break;
                    }
                    continue;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    err = errno;
                }
                break;
            }
            Py_ssize_t batch_end = first + cnt;
            while (r > 0) {
                Py_ssize_t left = PyBytes_GET_SIZE(wq->items[first]) - offset;
                if (r >= left) {
                    r -= left;
                    first++;
                    offset = 0;
                }
                else {
                    offset += r;
                    r = 0;
                }
            }
            if (first < batch_end) {
                break; /* the kernel took less than offered */
            }
        }
    }
    if (err != 0 || (first < wq->n && lost)) {
        /* Failed, or connection already lost: the rest is dropped. */
        wq_drop_items(wq, 0);
        if (err == -1 || (err > 0 && !lost)) {
            if (err > 0) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
            }
            res = fatal(st, self, "Fatal write error on socket transport");
            if (res == NULL) {
                goto done;
            }
        }
    }
    else if (first < wq->n) {
        rem = wq_remainder(wq, first, offset);
        wq_drop_items(wq, 0);
        if (rem == NULL) {
            goto done;
        }
        res = PyObject_CallFunctionObjArgs(st->tr.stock_write, self, rem, NULL);
        if (res == NULL) {
            goto done;
        }
    }
    rc = 0;
done:
    wq_drop_items(wq, 0);
    wq->size = 0;
    Py_XDECREF(res);
    Py_XDECREF(rem);
    Py_XDECREF(sock);
    return rc;
}

static int
wq_append(gh_TransportState *wq, PyObject *bytes)
{
    if (wq->n == wq->cap) {
        Py_ssize_t cap = wq->cap ? wq->cap * 2 : 4;
        PyObject **items = PyMem_Realloc(wq->items, (size_t)cap * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        wq->items = items;
        wq->cap = cap;
    }
    wq->items[wq->n++] = bytes; /* steals */
    wq->size += PyBytes_GET_SIZE(bytes);
    return 0;
}

/* Borrows write()'s data for the fast path through the buffer protocol
 * (never by reading a memoryview's fields: a released view's pointer is
 * dangling).  Returns 1 with *view filled in (the caller releases it) for
 * exact bytes, exact bytearray and one-dimensional C-contiguous
 * memoryviews; 0, without an exception, for everything else, which
 * asyncio's write() handles: it rejects what is not bytes-like, its len()
 * raises ValueError for a released memoryview at the point stock raises it,
 * it slices strided and multi-dimensional views its own way, and a subclass
 * may override __len__ or __buffer__. */
static int
borrow_data(PyObject *data, Py_buffer *view)
{
    if (PyBytes_CheckExact(data) || PyByteArray_CheckExact(data)) {
        return PyObject_GetBuffer(data, view, PyBUF_SIMPLE) == 0 ? 1 : -1;
    }
    if (!PyMemoryView_Check(data)) {
        return 0;
    }
    if (PyObject_GetBuffer(data, view, PyBUF_FULL_RO) < 0) {
        PyErr_Clear(); /* released: asyncio's write() raises it in its place */
        return 0;
    }
    if (view->ndim != 1 || !PyBuffer_IsContiguous(view, 'C')) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* Sends what the queue holds now (the flush list's references dropped).
 * Returns -1 only for exceptions that must propagate. */
static int
wq_flush_now(gh_state *st, gh_TransportState *wq)
{
    if (!wq->queued) {
        return 0;
    }
    PyObject *tr = wq_unlink(wq);
    int rc = wq_send(st, wq, tr);
    Py_DECREF(tr);
    Py_DECREF(wq); /* the flush list's reference */
    return rc;
}

/* write(data): queued for the end of the iteration when asyncio would send
 * it at once; everything else is asyncio's write(), after what is queued
 * was sent (asyncio would have sent it already, and its write() may send
 * now: the bytes must reach the peer in the order they were written).
 *
 * A queued write holds bytes nobody can change: an exact bytes object is
 * kept, any other buffer copied while it is borrowed, so the peer gets the
 * data as it was when write() was called (as with asyncio, which sends it
 * there and then) and no buffer export outlives the call (a bytearray
 * written can be resized at once, as with asyncio). */
static PyObject *
tr_write(PyObject *self, PyTypeObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_state *st = PyType_GetModuleState(cls);
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        return call_stock(st->tr.stock_write, self, args, nargsf, kwnames); /* TypeError */
    }
    gh_TransportState *wq = state_of(st, self);
    if (wq == NULL) {
        return PyErr_Occurred() ? NULL
                                : call_stock(st->tr.stock_write, self, args, nargsf, kwnames);
    }
    PyObject *res = NULL;
    int slow = 1;
    Py_buffer view;
    int borrowed = borrow_data(args[0], &view);
    if (borrowed <= 0) {
        goto decided;
    }
    int t = field_true(wq->eof, "_eof");
    if (t != 0 || wq->empty_waiter != Py_None) {
        goto decided; /* asyncio raises; or the lookup failed */
    }
    if (view.len == 0) {
        slow = 0;
        res = Py_NewRef(Py_None);
        goto decided;
    }
    t = field_true(wq->conn_lost, "_conn_lost");
    if (t != 0) {
        goto decided;
    }
    Py_ssize_t buffered = wq->buffer != NULL ? PyObject_Length(wq->buffer) : -1;
    if (buffered != 0) {
        if (buffered < 0) {
            PyErr_Clear(); /* asyncio's write() raises it again */
        }
        goto decided;
    }
    gh_Loop *loop = wq->loop;
    if (loop == NULL || !loop->has_thread_id || loop->thread_id != PyThread_get_thread_ident()) {
        goto decided; /* not running here: send now, as asyncio does */
    }
    PyObject *bytes = PyBytes_CheckExact(args[0]) ? Py_NewRef(args[0])
                                                  : PyBytes_FromStringAndSize(view.buf, view.len);
    slow = 0;
    if (bytes == NULL || wq_append(wq, bytes) < 0) {
        Py_XDECREF(bytes);
        goto decided;
    }
    if (!wq->queued) {
        wq_link(loop, wq, self);
    }
    if (wq->size > wq->hold_max && wq_flush_now(st, wq) < 0) {
        goto decided;
    }
    res = Py_NewRef(Py_None);
decided:
    if (borrowed > 0) {
        PyBuffer_Release(&view);
    }
    if (slow && !PyErr_Occurred()) {
        if (wq_flush_now(st, wq) == 0) {
            res = call_stock(st->tr.stock_write, self, args, nargsf, kwnames);
        }
    }
    Py_DECREF(wq);
    return res;
}

/* _gh_flush(): sends what write() queued, now (greenhub/_transport.py calls
 * it before every operation that could tell the data was queued). */
static PyObject *
tr_flush(PyObject *self, PyTypeObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    (void)args;
    if (no_args("_gh_flush", nargsf, kwnames) < 0) {
        return NULL;
    }
    gh_state *st = PyType_GetModuleState(cls);
    gh_TransportState *wq = state_of(st, self);
    if (wq == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    int rc = wq_flush_now(st, wq);
    Py_DECREF(wq);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

/* --- the loop's side ---------------------------------------------------------- */

int
gh_writes_flush(gh_Loop *loop)
{
    gh_state *st = loop->st;
    while (loop->writes.head != NULL) {
        gh_TransportState *wq = loop->writes.head;
        PyObject *tr = wq_unlink(wq);
        int rc = wq_send(st, wq, tr);
        Py_DECREF(tr);
        Py_DECREF(wq); /* the flush list's reference */
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

int
gh_writes_traverse(gh_write_queues *wq, visitproc visit, void *arg)
{
    for (gh_TransportState *ts = wq->head; ts != NULL; ts = ts->next) {
        Py_VISIT((PyObject *)ts);
    }
    return 0;
}

void
gh_writes_clear(gh_Loop *loop)
{
    while (loop->writes.head != NULL) {
        gh_TransportState *wq = loop->writes.head;
        PyObject *tr = wq_unlink(wq);
        wq_drop_items(wq, 0);
        wq->size = 0;
        Py_DECREF(tr);
        Py_DECREF(wq);
    }
}

/* --- the TransportState type ---------------------------------------------------- */

static PyObject *
wq_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    gh_state *st = PyType_GetModuleState(type);
    PyObject *loop;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "TransportState() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O:TransportState", &loop)) {
        return NULL;
    }
    if (gh_as_loop(st, loop) == NULL) {
        PyErr_Format(PyExc_TypeError, "TransportState() needs a greenhub loop, not %.200s",
                     Py_TYPE(loop)->tp_name);
        return NULL;
    }
    gh_TransportState *wq = (gh_TransportState *)type->tp_alloc(type, 0);
    if (wq != NULL) {
        wq->loop = (gh_Loop *)Py_NewRef(loop);
        wq->hold_max = -1; /* until asyncio's __init__ sets _high_water */
        st->live_transport_states++;
    }
    return (PyObject *)wq;
}

static int
wq_traverse(PyObject *op, visitproc visit, void *arg)
{
    gh_TransportState *wq = (gh_TransportState *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)wq->loop);
    Py_VISIT(wq->transport);
    Py_VISIT(wq->conn_lost);
    Py_VISIT(wq->eof);
    Py_VISIT(wq->empty_waiter);
    Py_VISIT(wq->buffer);
    Py_VISIT(wq->sock);
    Py_VISIT(wq->protocol);
    Py_VISIT(wq->read_ready_cb);
    Py_VISIT(wq->high_water);
    return 0;
}

static int
wq_clear(PyObject *op)
{
    gh_TransportState *wq = (gh_TransportState *)op;
    if (wq->queued) {
        Py_DECREF(wq_unlink(wq));
        Py_DECREF(wq); /* the flush list's; the collector holds one of its own */
    }
    wq_drop_items(wq, 0);
    wq->size = 0;
    Py_CLEAR(wq->loop);
    Py_CLEAR(wq->conn_lost);
    Py_CLEAR(wq->eof);
    Py_CLEAR(wq->empty_waiter);
    Py_CLEAR(wq->buffer);
    Py_CLEAR(wq->sock);
    Py_CLEAR(wq->protocol);
    Py_CLEAR(wq->read_ready_cb);
    Py_CLEAR(wq->high_water);
    wq->hold_max = -1;
    return 0;
}

static void
wq_dealloc(PyObject *op)
{
    gh_TransportState *wq = (gh_TransportState *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    assert(!wq->queued); /* the loop's reference kept it alive otherwise */
    wq_clear(op);
    PyMem_Free(wq->items);
    gh_state *st = gh_state_in_dealloc(tp); /* NULL late in shutdown */
    if (st != NULL) {
        st->live_transport_states--;
    }
    Py_CLEAR(wq->loop);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
wq_get_size(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((gh_TransportState *)op)->size);
}

static PyGetSetDef wq_getset[] = {
    {"size", wq_get_size, NULL, "Bytes written in this loop iteration and not yet sent.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot wq_slots[] = {
    {Py_tp_doc, "TransportState(loop): a socket transport's C state and write queue."},
    {Py_tp_new, wq_new},
    {Py_tp_dealloc, wq_dealloc},
    {Py_tp_traverse, wq_traverse},
    {Py_tp_clear, wq_clear},
    {Py_tp_getset, wq_getset},
    {0, NULL},
};

PyType_Spec gh_transport_state_spec = {
    .name = "greenhub._core.TransportState",
    .basicsize = sizeof(gh_TransportState),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = wq_slots,
};

/* --- the mixin ------------------------------------------------------------------ */

#define METHOD_FLAGS (METH_METHOD | METH_FASTCALL | METH_KEYWORDS)
#define AS_METH(f) (PyCFunction)(void (*)(void))(f)

static PyMethodDef transport_methods[] = {
    {"write", AS_METH(tr_write), METHOD_FLAGS,
     "write(data): send data; queued and sent with the iteration's other writes."},
    {"_read_ready", AS_METH(tr_read_ready), METHOD_FLAGS, NULL},
    {"_read_ready__data_received", AS_METH(tr_data_received), METHOD_FLAGS, NULL},
    {"_read_ready__get_buffer", AS_METH(tr_get_buffer), METHOD_FLAGS, NULL},
    {"_gh_flush", AS_METH(tr_flush), METHOD_FLAGS,
     "Send the data write() queued in this loop iteration now."},
    {NULL, NULL, 0, NULL},
};

/* asyncio's attributes stored in the TransportState: `closure` is the
 * offset of the field. */
static PyObject *
field_get(PyObject *self, void *closure)
{
    gh_state *st = gh_state_from_type(Py_TYPE(self));
    gh_TransportState *ts = st != NULL ? state_of(st, self) : NULL;
    if (ts == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "transport state is not set up");
        }
        return NULL;
    }
    PyObject *v = *(PyObject **)((char *)ts + (size_t)closure);
    Py_DECREF(ts);
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "transport attribute is not set");
        return NULL;
    }
    return Py_NewRef(v);
}

static int
field_set(PyObject *self, PyObject *value, void *closure)
{
    gh_state *st = gh_state_from_type(Py_TYPE(self));
    gh_TransportState *ts = st != NULL ? state_of(st, self) : NULL;
    if (ts == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "transport state is not set up");
        }
        return -1;
    }
    PyObject **slot = (PyObject **)((char *)ts + (size_t)closure);
    Py_XSETREF(*slot, Py_XNewRef(value));
    Py_DECREF(ts);
    return 0;
}

/* _sock: asyncio's class attribute makes it None until set (__del__ reads
 * it even when __init__ failed early). */
static PyObject *
sock_get(PyObject *self, void *closure)
{
    PyObject *v = field_get(self, closure);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    return v;
}

/* _high_water (asyncio's _set_write_buffer_limits() sets it): kept as the
 * object asyncio compares, and as the queue bound write() checks.  A mark
 * that is not an int (a float from set_write_buffer_limits(high=1.5)) makes
 * every write go out at once: asyncio's own behaviour, for any mark. */
static int
high_water_set(PyObject *self, PyObject *value, void *closure)
{
    if (field_set(self, value, closure) < 0) {
        return -1;
    }
    Py_ssize_t hold = -1;
    if (value != NULL && PyLong_Check(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow > 0 || v >= GH_WQ_FLUSH_AT) {
            hold = GH_WQ_FLUSH_AT - 1;
        }
        else if (overflow == 0 && v >= 0) {
            hold = (Py_ssize_t)v;
        }
    }
    gh_state *st = gh_state_from_type(Py_TYPE(self));
    gh_TransportState *ts = st != NULL ? state_of(st, self) : NULL;
    if (ts == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    ts->hold_max = hold;
    Py_DECREF(ts);
    return 0;
}

#define FIELD(name, field)                                                                         \
    {                                                                                              \
        name, field_get, field_set, NULL, (void *)offsetof(gh_TransportState, field)               \
    }

static PyGetSetDef transport_getset[] = {
    FIELD("_conn_lost", conn_lost),
    FIELD("_eof", eof),
    FIELD("_empty_waiter", empty_waiter),
    FIELD("_buffer", buffer),
    {"_sock", sock_get, field_set, NULL, (void *)offsetof(gh_TransportState, sock)},
    FIELD("_protocol", protocol),
    FIELD("_read_ready_cb", read_ready_cb),
    {"_high_water", field_get, high_water_set, NULL,
     (void *)offsetof(gh_TransportState, high_water)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot transport_base_slots[] = {
    {Py_tp_doc, "C hot paths mixed into greenhub's socket transport (internal)."},
    {Py_tp_methods, transport_methods},
    {Py_tp_getset, transport_getset},
    {0, NULL},
};

PyType_Spec gh_transport_base_spec = {
    .name = "greenhub._core._SocketTransportBase",
    .basicsize = 0, /* no fields: it mixes into asyncio's transport class */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = transport_base_slots,
};

/* --- module state ------------------------------------------------------------- */

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

int
gh_transport_state_init(gh_state *st)
{
    if (intern(&st->tr.state, "_gh_state") < 0 || intern(&st->tr.fileno, "fileno") < 0 ||
        intern(&st->tr.max_size, "max_size") < 0 ||
        intern(&st->tr.data_received, "data_received") < 0 ||
        intern(&st->tr.get_buffer, "get_buffer") < 0 ||
        intern(&st->tr.buffer_updated, "buffer_updated") < 0 ||
        intern(&st->tr.fatal_error, "_fatal_error") < 0 ||
        intern(&st->tr.on_eof, "_read_ready__on_eof") < 0 ||
        intern(&st->tr.recv_into, "recv_into") < 0) {
        return -1;
    }
    PyObject *socket_mod = PyImport_ImportModule("socket");
    if (socket_mod == NULL) {
        return -1;
    }
    st->tr.socket_type = PyObject_GetAttrString(socket_mod, "socket");
    Py_DECREF(socket_mod);
    PyObject *sel = PyImport_ImportModule("asyncio.selector_events");
    if (sel == NULL) {
        return -1;
    }
    PyObject *cls = PyObject_GetAttrString(sel, "_SelectorSocketTransport");
    Py_DECREF(sel);
    if (cls == NULL || st->tr.socket_type == NULL) {
        Py_XDECREF(cls);
        return -1;
    }
    st->tr.stock_write = PyObject_GetAttrString(cls, "write");
    st->tr.stock_data_received = PyObject_GetAttrString(cls, "_read_ready__data_received");
    st->tr.stock_get_buffer = PyObject_GetAttrString(cls, "_read_ready__get_buffer");
    Py_DECREF(cls);
    if (st->tr.stock_write == NULL || st->tr.stock_data_received == NULL ||
        st->tr.stock_get_buffer == NULL) {
        return -1;
    }
    return 0;
}

/* Every object the transport part of the module state owns. */
#define TR_FIELDS(st)                                                                              \
    {                                                                                              \
        &(st)->tr.socket_type, &(st)->tr.stock_write, &(st)->tr.stock_data_received,               \
            &(st)->tr.stock_get_buffer, &(st)->tr.state, &(st)->tr.fileno, &(st)->tr.max_size,     \
            &(st)->tr.data_received, &(st)->tr.get_buffer, &(st)->tr.buffer_updated,               \
            &(st)->tr.fatal_error, &(st)->tr.on_eof, &(st)->tr.recv_into,                          \
            &(st)->tr.green_socket_type,                                                           \
    }

int
gh_transport_state_traverse(gh_state *st, visitproc visit, void *arg)
{
    PyObject **fields[] = TR_FIELDS(st);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_VISIT(*fields[i]);
    }
    return 0;
}

void
gh_transport_state_clear(gh_state *st)
{
    PyObject **fields[] = TR_FIELDS(st);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_CLEAR(*fields[i]);
    }
    PyMem_Free(st->rbuf);
    st->rbuf = NULL;
}
