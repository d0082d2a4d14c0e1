/*
 * fd_wait.h - a virtual thread waits for a file descriptor on the loop: the
 * wait under greenhub.socket's blocking calls (green_sock.c) and
 * _core._wait_fd(); see fd_wait.c.
 */
#ifndef GH_FD_WAIT_H
#define GH_FD_WAIT_H

#include <Python.h>

#include "state.h"
#include "vthread.h"

/* fd_wait.c's part of the loop (gh_Loop.fdw). */
typedef struct {
    /* Owned, made on first use: the reader/writer/timer callback, bound to
     * the loop, that wakes a green wait. */
    PyObject *ready;
} gh_fd_waits;

int gh_fd_waits_traverse(gh_fd_waits *fw, visitproc visit, void *arg);
void gh_fd_waits_clear(gh_fd_waits *fw);

/* Suspends the task step `w` (running now on `loop`, the caller holds a
 * reference to it) until fd is ready for `events` (GH_IO_READ and/or
 * GH_IO_WRITE) or the monotonic clock reaches `deadline` (< 0: no limit).
 * `sock` (borrowed) is the socket that owns fd, or NULL for a bare fd: a
 * read wait on a socket leaves the watcher armed for it (io.c).  Returns the
 * ready direction, GH_IO_READ or GH_IO_WRITE (the first that fired), 0 when
 * the deadline passed, or -1 with an exception: CancelledError (or any
 * exception thrown into the step), OSError(EBADF) if the fd was closed
 * through greenhub.socket meanwhile (gh_fd_wait_wake_closed), RuntimeError
 * if something else already waits on fd in one of the directions, OSError
 * if the fd cannot be watched.  The loop's watchers and timer are removed
 * before it returns, whatever the outcome. */
int gh_fd_wait(gh_Loop *loop, gh_GreenCoro *w, int fd, PyObject *sock, int events, double deadline);

/* Waits in poll() (with the GIL released when it may block; retried after
 * EINTR once signal handlers ran) until fd is ready for `events` or
 * `timeout` seconds pass (< 0: no limit; 0: only looks).  For callers
 * outside virtual threads: it blocks the OS thread.  The ready mask (an
 * error or hang-up on fd counts as every direction asked for), 0 on
 * timeout, -1 with an exception (OSError(EBADF) for a closed fd). */
int gh_fd_poll(int fd, int events, double timeout);

/* fd is about to be closed: completes the waits of gh_fd_wait() on it in
 * `loop` with "closed" (they raise OSError(EBADF) when their task resumes).
 * -1 with an exception on error. */
int gh_fd_wait_wake_closed(gh_Loop *loop, int fd);

/* module.c: adds _wait_fd to the module and fills the wait's fields of
 * st->gs. */
int gh_fd_wait_init(PyObject *mod, gh_state *st);
void gh_fd_wait_clear(gh_state *st);
int gh_fd_wait_traverse(gh_state *st, visitproc visit, void *arg);

#endif /* GH_FD_WAIT_H */
