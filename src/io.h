/*
 * io.h - fd watchers (io.c): the loop's part that maps each fd to its reader
 * and writer Handles, the four fd-watching primitives asyncio's selector-loop
 * API is built on, and the waits of sock.c, fd_wait.c and green_sock.c.
 *
 * The reactor reports readiness (gh_io_ready, called from inside the poll);
 * this part only queues the Handles, through the loop core (loop.h).
 */
#ifndef GH_IO_H
#define GH_IO_H

#include <Python.h>

#include "state.h"

typedef struct gh_io_slot {
    PyObject *reader; /* owned Handle or NULL */
    PyObject *writer; /* owned Handle or NULL */
    /* Owned weak reference to a socket, or NULL: a sock_recv() wait on this
     * fd finished, and the libev watcher was left armed for reading (with
     * no reader) so the next wait on the same socket costs no system call.
     * Only while reader and writer are NULL.  See sock.c. */
    PyObject *armed_for;
    /* Owned, or NULL while reader and writer are NULL: the object the first
     * add_reader()/add_writer() of the fd was given, as a selector key keeps
     * its fileobj, so that remove_reader(sock) still finds the fd once sock
     * is closed and its fileno() is -1 (selectors search their keys for the
     * object then; anyio removes its readers that way). */
    PyObject *fileobj;
} gh_io_slot;

/* The loop's fd watchers (gh_Loop.io). */
typedef struct {
    gh_io_slot *slots; /* PyMem array indexed by fd; each slot owns its references */
    int n_slots;
    /* Owned list or NULL (`_io_trace`, for tests/fuzz_loop.py): each fd the
     * poll reports is appended, in the order its handles are queued.  The
     * order between fds in one poll is unspecified (the stock loop follows
     * epoll's; libev runs its pending watchers last-in first-out), so the
     * differential fuzzer replays greenhub's order on the stock loop. */
    PyObject *trace;
} gh_io;

/* The part's life cycle, called by the Loop type (loop.c).  tp_alloc zeroes
 * the part, which is its initial state. */
int gh_io_traverse(gh_io *io, visitproc visit, void *arg);
/* Stops every watcher and drops the handles (close()); `_io_trace` stays. */
void gh_io_close(gh_Loop *loop);
/* gh_io_close(), and drops `_io_trace` (tp_clear, dealloc). */
void gh_io_clear(gh_Loop *loop);

/* The four reader/writer methods, and the reactor callback. */
PyObject *gh_loop_add_reader(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_add_writer(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_remove_reader(PyObject *op, PyObject *fd);
PyObject *gh_loop_remove_writer(PyObject *op, PyObject *fd);
void gh_io_ready(void *arg, int fd, int readable, int writable);
/* {fd: events} of the watched fds (1 read, 2 write, as selectors' masks). */
PyObject *gh_loop_io_watchers(PyObject *op, PyObject *ignored);
/* The `_io_trace` property: None or the list of reported fds (see gh_io.trace). */
PyObject *gh_loop_get_io_trace(PyObject *op, void *closure);
int gh_loop_set_io_trace(PyObject *op, PyObject *value, void *closure);

/* For sock.c's waits: */
/* 1 if fd's watcher is armed for reading on behalf of `sock` and has not
 * reported it readable since: a read now would only fail with EAGAIN.
 * 0 for sock NULL. */
int gh_io_armed_for(gh_Loop *loop, int fd, PyObject *sock);
/* Makes `handle` fd's reader, as add_reader() would; an armed watcher for
 * the same socket is reused as it is.  `sock` is borrowed and may be NULL:
 * a bare fd, which no armed watcher is ever for (fd_wait.c).  -1 with an
 * exception on error. */
int gh_io_wait_read(gh_Loop *loop, int fd, PyObject *sock, PyObject *handle);
/* The wait with `handle` is over: removes the reader, as remove_reader()
 * would, but leaves the watcher armed for `sock` when nothing else uses
 * the fd (with sock NULL: never; the watcher stops as for remove_reader()).
 * -1 with an exception on error. */
int gh_io_wait_done(gh_Loop *loop, int fd, PyObject *sock, PyObject *handle);

/* For the waits of fd_wait.c and green_sock.c: */
/* fd's reader (GH_IO_READ) or writer (GH_IO_WRITE) Handle, borrowed, or NULL. */
PyObject *gh_io_waiter(gh_Loop *loop, int fd, int which);
/* Makes `handle` fd's writer, as add_writer() would.  -1 with an exception. */
int gh_io_wait_write(gh_Loop *loop, int fd, PyObject *handle);
/* The write wait with `handle` is over: removes the writer if it is still
 * `handle`.  -1 with an exception on error. */
int gh_io_wait_write_done(gh_Loop *loop, int fd, PyObject *handle);
/* `sock` (fd) is about to be closed: stops a watcher left armed for it and
 * removes the green waits on fd (their handles are cancelled; the caller
 * has woken their waiters).  -1 with an exception on error. */
int gh_io_forget(gh_Loop *loop, int fd, PyObject *sock);

#endif /* GH_IO_H */
