# cython: language_level=3
"""gh_capi_cy - a small Cython extension over greenhub's C API (greenhub/capi.pxd),
built by tests/test_capi.py from the installed package alone.  The same functions as
gh_capi_c: a client that connects to a TCP port, sends a request and reads the reply to
EOF, waiting through the API; and the API's three functions as they are."""

import errno
import socket

from greenhub cimport capi

capi.import_greenhub()


def api_info():
    cdef const capi.Greenhub_CAPI *api = capi.Greenhub_ImportCAPI()
    return {"version": api.version, "size": api.size,
            "header_version": capi.GREENHUB_CAPI_VERSION, "has_await": True}


def in_vthread():
    return capi.in_vthread()


def wait_fd(int fd, int events, double timeout):
    return capi.wait_fd(fd, events, timeout)


def await_(awaitable):
    return capi.await_(awaitable)


cdef int _wait(int fd, int events, double timeout) except -1:
    if capi.wait_fd(fd, events, timeout) == 0:
        raise TimeoutError("timed out")
    return 0


def fetch(int port, bytes request, double timeout):
    sock = socket.socket()
    sock.setblocking(False)
    cdef int fd = sock.fileno()
    try:
        err = sock.connect_ex(("127.0.0.1", port))
        if err == errno.EINPROGRESS:
            _wait(fd, capi.GREENHUB_WRITE, timeout)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, "connect failed")
        view = memoryview(request)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                _wait(fd, capi.GREENHUB_WRITE, timeout)
        chunks = []
        while True:
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                if capi.wait_readable(fd, timeout) == 0:
                    raise TimeoutError("timed out")
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()
