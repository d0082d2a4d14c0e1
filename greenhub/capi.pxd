# greenhub/capi.pxd - greenhub's C API for Cython extensions (docs/guide-c-api.md).
#
#     from greenhub cimport capi
#
#     capi.import_greenhub()          # once, at module level
#
#     def recv_some(sock):
#         if capi.wait_readable(sock.fileno(), 5.0) == 0:
#             raise TimeoutError
#         return sock.recv(4096)
#
# Build with greenhub.get_include() on the include path (the declarations come from
# greenhub.h there); nothing to link.  Every function needs the GIL and raises on
# error; in a virtual thread each wait suspends only that virtual thread, elsewhere it
# blocks as the plain call would.  greenhub.h documents each one.

cdef extern from "greenhub.h":
    ctypedef struct Greenhub_CAPI:
        size_t size
        unsigned int version

    enum:
        GREENHUB_CAPI_VERSION
        GREENHUB_READ
        GREENHUB_WRITE
    const double GREENHUB_FOREVER

    const Greenhub_CAPI *Greenhub_ImportCAPI() except NULL
    int Greenhub_Import() except -1
    int Greenhub_InVirtualThread() except -1
    int Greenhub_WaitFd(int fd, int events, double timeout) except -1
    object Greenhub_Await(object awaitable)


cdef inline int import_greenhub() except -1:
    """Look up greenhub's C API (imports greenhub); ImportError if it is missing."""
    return Greenhub_Import()


cdef inline bint in_vthread() except -1:
    """True if the caller runs in a virtual thread (a task of the greenhub loop running
    in this thread), where the waits below suspend only that virtual thread."""
    return Greenhub_InVirtualThread()


cdef inline int wait_fd(int fd, int events, double timeout=GREENHUB_FOREVER) except -1:
    """Wait until fd is ready for `events` (GREENHUB_READ, GREENHUB_WRITE or both) or
    `timeout` seconds pass: the ready directions, 0 on timeout."""
    return Greenhub_WaitFd(fd, events, timeout)


cdef inline int wait_readable(int fd, double timeout=GREENHUB_FOREVER) except -1:
    """wait_fd(fd, GREENHUB_READ, timeout): GREENHUB_READ, or 0 on timeout."""
    return Greenhub_WaitFd(fd, GREENHUB_READ, timeout)


cdef inline int wait_writable(int fd, double timeout=GREENHUB_FOREVER) except -1:
    """wait_fd(fd, GREENHUB_WRITE, timeout): GREENHUB_WRITE, or 0 on timeout."""
    return Greenhub_WaitFd(fd, GREENHUB_WRITE, timeout)


cdef inline object await_(object awaitable):
    """greenhub.await_(awaitable): its result."""
    return Greenhub_Await(awaitable)
