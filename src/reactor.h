/*
 * reactor.h - libev behind a small C interface.
 *
 * This layer knows nothing about Python: it polls, it wakes up, and it
 * reports which watched file descriptors are ready.  Only reactor.c
 * includes <ev.h>.  Every function must be called with the loop's Python
 * lock (the GIL) held - usually on the loop's thread; another thread may
 * change watchers while the loop sleeps, since libev touches its tables
 * only outside epoll_wait(), where the loop thread holds the GIL - except
 * gh_reactor_wakeup(), which is thread- and async-signal-safe.
 */
#ifndef GH_REACTOR_H
#define GH_REACTOR_H

typedef struct gh_reactor gh_reactor;

/* Called around the blocking part of a poll (the loop layer releases and
 * re-acquires the GIL there). */
typedef void (*gh_reactor_hook)(void *arg);

/* Returns NULL with errno set on failure. */
gh_reactor *gh_reactor_new(void);
void gh_reactor_free(gh_reactor *r);

void gh_reactor_set_blocking_hooks(gh_reactor *r, gh_reactor_hook release, gh_reactor_hook acquire,
                                   void *arg);

/* Waits for events at most `timeout` seconds: < 0 waits without limit
 * (until a wakeup, a signal or an event), 0 only collects what is ready.
 * Returns after one round of event processing: 0, or -1 with errno set
 * when the poll's system call failed. */
int gh_reactor_poll(gh_reactor *r, double timeout);

/* Makes a poll in progress (or the next one) return promptly.  Costs a
 * system call each time: callers send it only when the poll may sleep. */
void gh_reactor_wakeup(gh_reactor *r);

/* File descriptor readiness.  The reactor calls `cb` from inside
 * gh_reactor_poll() for each watched fd that became ready (or failed: then
 * both flags are set, so that the owner's callbacks find the error). */
typedef void (*gh_reactor_io_cb)(void *arg, int fd, int readable, int writable);
void gh_reactor_set_io_callback(gh_reactor *r, gh_reactor_io_cb cb, void *arg);

/* Watches `fd` for GH_IO_READ and/or GH_IO_WRITE, replacing the previous
 * interest; 0 stops watching.  Returns -1 with errno set on failure: a new
 * watcher on an fd that gh_reactor_fd_usable() refuses, or no memory.
 * The fd may be closed at any time afterwards: the reactor checks it again
 * before libev applies the change, and stops the watcher if it is gone
 * (the kernel forgets a closed fd; so does the reactor). */
#define GH_IO_READ 1
#define GH_IO_WRITE 2
int gh_reactor_io_watch(gh_reactor *r, int fd, int events);

/* 0 if `fd` may be watched; -1 with errno set if not (EBADF: not open;
 * EINVAL or ELOOP: an epoll fd this reactor's epoll set cannot hold). */
int gh_reactor_fd_usable(gh_reactor *r, int fd);

/* In a child process after fork(): the next poll rebuilds the kernel state
 * (libev's own epoll set and wakeup fd instead of the parent's). */
void gh_reactor_after_fork(gh_reactor *r);

/* Name of the libev backend in use ("epoll", "poll", ...). */
const char *gh_reactor_backend_name(const gh_reactor *r);

/* The version of the libev library loaded at run time. */
void gh_reactor_libev_version(int *major, int *minor);

#endif /* GH_REACTOR_H */
