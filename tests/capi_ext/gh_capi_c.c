/*
 * gh_capi_c - a small C extension over greenhub's C API (greenhub.h), built by
 * tests/test_capi.py from the installed package's header alone: include paths
 * Python's and greenhub.get_include(), nothing linked.  A client that connects
 * to a TCP port, sends a request and reads the reply to EOF, waiting through
 * Greenhub_WaitFd(); and the API's three functions as they are.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <greenhub.h>

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

static PyObject *
api_info(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    (void)mod;
    return Py_BuildValue("{s:I,s:n,s:i,s:O}", "version", Greenhub_API->version, "size",
                         (Py_ssize_t)Greenhub_API->size, "header_version", GREENHUB_CAPI_VERSION,
                         "has_await", GREENHUB_CAPI_HAS(Greenhub_API, await_) ? Py_True : Py_False);
}

static PyObject *
in_vthread(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    (void)mod;
    int r = Greenhub_InVirtualThread();
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
wait_fd(PyObject *mod, PyObject *args)
{
    (void)mod;
    int fd, events;
    double timeout;
    if (!PyArg_ParseTuple(args, "iid:wait_fd", &fd, &events, &timeout)) {
        return NULL;
    }
    int r = Greenhub_WaitFd(fd, events, timeout);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

static PyObject *
await_(PyObject *mod, PyObject *awaitable)
{
    (void)mod;
    return Greenhub_Await(awaitable);
}

/* Waits for fd in one direction: 0, or -1 with an exception (TimeoutError
 * when the timeout passed). */
static int
wait_or_timeout(int fd, int events, double timeout)
{
    int r = Greenhub_WaitFd(fd, events, timeout);
    if (r == 0) {
        PyErr_SetString(PyExc_TimeoutError, "timed out");
        return -1;
    }
    return r < 0 ? -1 : 0;
}

/* fetch(port, request, timeout) -> bytes: connects to 127.0.0.1:port, sends
 * request, reads until EOF; each wait is limited to `timeout` seconds. */
static PyObject *
fetch(PyObject *mod, PyObject *args)
{
    (void)mod;
    int port;
    const char *req;
    Py_ssize_t req_len;
    double timeout;
    if (!PyArg_ParseTuple(args, "iy#d:fetch", &port, &req, &req_len, &timeout)) {
        return NULL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *reply = NULL;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (errno != EINPROGRESS) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        if (wait_or_timeout(fd, GREENHUB_WRITE, timeout) < 0) {
            goto done;
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            errno = err ? err : errno;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
    }
    for (Py_ssize_t sent = 0; sent < req_len;) {
        ssize_t n = send(fd, req + sent, (size_t)(req_len - sent), MSG_NOSIGNAL);
        if (n >= 0) {
            sent += n;
        }
        else if (errno == EAGAIN) {
            if (wait_or_timeout(fd, GREENHUB_WRITE, timeout) < 0) {
                goto done;
            }
        }
        else if (errno != EINTR || PyErr_CheckSignals() < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetFromErrno(PyExc_OSError);
            }
            goto done;
        }
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, 0);
    for (;;) {
        if (data == NULL) {
            goto done;
        }
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            PyObject *chunk = PyBytes_FromStringAndSize(buf, n);
            if (chunk == NULL) {
                Py_CLEAR(data);
                continue;
            }
            PyBytes_ConcatAndDel(&data, chunk);
        }
        else if (n == 0) {
            reply = data;
            break;
        }
        else if (errno == EAGAIN) {
            if (wait_or_timeout(fd, GREENHUB_READ, timeout) < 0) {
                Py_CLEAR(data);
            }
        }
        else if (errno != EINTR || PyErr_CheckSignals() < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetFromErrno(PyExc_OSError);
            }
            Py_CLEAR(data);
        }
    }
done:
    close(fd);
    return reply;
}

static PyMethodDef methods[] = {
    {"api_info", api_info, METH_NOARGS, "api_info() -> dict: the running greenhub's table"},
    {"in_vthread", in_vthread, METH_NOARGS, "in_vthread() -> bool: Greenhub_InVirtualThread()"},
    {"wait_fd", wait_fd, METH_VARARGS, "wait_fd(fd, events, timeout) -> int: Greenhub_WaitFd()"},
    {"await_", await_, METH_O, "await_(awaitable) -> result: Greenhub_Await()"},
    {"fetch", fetch, METH_VARARGS, "fetch(port, request, timeout) -> bytes: a tiny TCP client"},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *mod)
{
    (void)mod;
    return Greenhub_Import();
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static PyModuleDef def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gh_capi_c",
    .m_doc = "A small C extension over greenhub's C API (tests/test_capi.py builds it).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_gh_capi_c(void)
{
    return PyModuleDef_Init(&def);
}
