/*
 * reactor.c - the libev wrapper.  See reactor.h.
 *
 * Why libev never sees a closed fd.  libev applies watcher changes lazily,
 * at the start of the next poll (fd_reify), and re-registers every watched
 * fd when it rebuilds its epoll set (after a fork, or when the kernel
 * reports an event it cannot place: a stale registration of a closed and
 * reused fd).  Debian builds libev with assertions, and its epoll backend
 * aborts the process when epoll_ctl() then fails with EBADF, EINVAL or
 * ELOOP.  asyncio lets a program close an fd whenever it likes - with a
 * reader on it, or right after add_writer() - and the stock selector loop
 * shrugs (the kernel dropped the fd from its epoll set; the registration
 * just never fires).  So the reactor checks, itself, every fd libev is
 * about to hand to epoll_ctl():
 *
 *   - each fd whose watcher was started or changed since the last poll is
 *     queued (`changed`), and checked right before the next poll;
 *   - an ev_fork watcher runs when libev is about to rebuild its epoll set
 *     (libev calls fork watchers first), and checks every watched fd.
 *
 * A watcher whose fd fails the check is stopped, silently, as the kernel
 * dropped it: the loop layer keeps its handles, exactly as the stock loop
 * keeps a closed fd's selector key.  Stopping is always safe: libev never
 * calls epoll_ctl() to remove an fd (it leaves that to close()).
 *
 * The check is one fcntl(F_GETFD) per changed fd.  (libev's assertion also
 * covers EINVAL and ELOOP, which epoll_ctl() gives for libev's own epoll fd
 * or an epoll set that contains it.  That fd is not reachable through any
 * greenhub API, so only a program that digs it out of /proc can hand it
 * back to us; nothing checks for that.)
 *
 * Why libev watchers never run user code: libev callbacks here only record
 * that something happened (or do nothing at all: waking the poll is their
 * whole job).  The loop layer runs Python callbacks after the poll returns,
 * in asyncio's order.  That keeps greenlet switches and Python exceptions out
 * of libev's stack frames.
 */
#include "reactor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

/* A watched fd.  `changed` is set while the fd is queued in the reactor's
 * `changed` list, so that it is queued once per poll. */
typedef struct {
    ev_io io;
    unsigned char changed;
} gh_watch;

struct gh_reactor {
    struct ev_loop *ev;
    ev_timer timeout; /* bounds a poll's wait; its callback does nothing */
    ev_io wakeup;     /* watches wake_fd; its callback drains it */
    int wake_fd;      /* owned: eventfd that gh_reactor_wakeup() writes to */
    gh_reactor_hook release, acquire;
    void *hook_arg;
    ev_fork rebuild; /* runs before libev re-registers every fd (see above) */
    int io_watchers; /* active watchers for user I/O */
    int may_block;   /* the poll in progress may wait (timeout != 0) */
    gh_watch **ios;  /* owned (malloc): watcher per fd, NULL where none */
    int nios;        /* length of ios */
    int *changed;    /* owned (malloc): fds started or changed since the last poll */
    int nchanged, changed_cap;
    gh_reactor_io_cb io_cb;
    void *io_cb_arg;
};

static void
noop_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev, (void)w, (void)revents;
}

static void
wakeup_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev, (void)revents;
    uint64_t n;
    while (read(w->fd, &n, sizeof(n)) < 0 && errno == EINTR) {
    }
}

/* libev reports a failed system call here instead of aborting the process
 * (its default).  The only ones the reactor can meet are epoll_wait()
 * failing - which libev then treats as a poll that saw nothing, and
 * gh_reactor_poll() reports - and, when libev rebuilds its epoll set,
 * epoll_create() failing, which libev retries until it works: the pause
 * keeps that from spinning.  The hook is process-wide (libev has one);
 * the error is recorded per thread, for the poll running on it. */
static _Thread_local int syserr_errno;

static void
syserr_cb(const char *msg)
{
    (void)msg;
    syserr_errno = errno ? errno : EIO;
    struct timespec pause = {0, 1000000};
    (void)nanosleep(&pause, NULL);
}

static void
io_ready_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    gh_reactor *r = ev_userdata(ev);
    int failed = (revents & EV_ERROR) != 0;
    if (r->io_cb) {
        r->io_cb(r->io_cb_arg, w->fd, failed || (revents & EV_READ),
                 failed || (revents & EV_WRITE));
    }
}

/* 1 if libev may hand `fd` to epoll_ctl() without tripping an assertion;
 * 0 with errno set to EBADF if it is not open, or open with O_PATH (no I/O:
 * epoll_ctl() refuses it with EBADF too). */
static int
fd_usable(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) {
        return errno != EBADF;
    }
    if (flags & O_PATH) {
        errno = EBADF;
        return 0;
    }
    return 1;
}

/* 1 if epoll can watch `fd`; 0 with errno set as epoll_ctl(EPOLL_CTL_ADD)
 * would set it: EBADF (closed, O_PATH), EPERM (a regular file or a
 * directory, which epoll refuses and the selector loop reports as
 * PermissionError; libev would instead call the watcher on every poll).  A
 * socket or pipe needs nothing more than fstat(); a device or an anonymous
 * inode (eventfd, pidfd, another epoll set, ...) may or may not support
 * polling, so it is tried on a private epoll set. */
static int
fd_watchable(int fd)
{
    if (!fd_usable(fd)) {
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        return 1; /* let epoll_ctl() decide */
    }
    switch (st.st_mode & S_IFMT) {
    case S_IFSOCK:
    case S_IFIFO:
        return 1;
    case S_IFREG:
    case S_IFDIR:
        errno = EPERM;
        return 0;
    default:
        break;
    }
    /* The probe set lives for this call only: a loop holds no fd beyond its
     * epoll set and wakeup fd (code that counts its fds around a watcher, as
     * CPython's tests do, sees the same count as with the stock loop). */
    int probe = epoll_create1(EPOLL_CLOEXEC);
    if (probe < 0) {
        return 1; /* no fd to spare for the probe: let epoll_ctl() decide */
    }
    struct epoll_event ev = {.events = EPOLLIN};
    int ok = epoll_ctl(probe, EPOLL_CTL_ADD, fd, &ev) == 0;
    int saved = errno;
    close(probe);
    errno = saved;
    return ok;
}

/* Stops the watcher of each fd in `fds` (all watched fds when fds is NULL)
 * that libev must not see; see the file comment. */
static void
drop_unusable(gh_reactor *r, const int *fds, int n)
{
    int saved = errno;
    for (int i = 0; i < n; i++) {
        int fd = fds ? fds[i] : i;
        gh_watch *w = fd < r->nios ? r->ios[fd] : NULL;
        if (w != NULL && ev_is_active(&w->io) && !fd_usable(fd)) {
            ev_io_stop(r->ev, &w->io);
        }
    }
    errno = saved;
}

/* Checks the fds changed since the last poll: called right before each
 * ev_run(), which applies those changes. */
static void
check_changed(gh_reactor *r)
{
    if (r->nchanged == 0) {
        return;
    }
    drop_unusable(r, r->changed, r->nchanged);
    for (int i = 0; i < r->nchanged; i++) {
        int fd = r->changed[i];
        if (fd < r->nios && r->ios[fd] != NULL) {
            r->ios[fd]->changed = 0;
        }
    }
    r->nchanged = 0;
}

/* libev is about to rebuild its epoll set from every active watcher. */
static void
rebuild_cb(struct ev_loop *ev, ev_fork *w, int revents)
{
    (void)w, (void)revents;
    gh_reactor *r = ev_userdata(ev);
    drop_unusable(r, NULL, r->nios);
    if (ev_is_active(&r->wakeup) && !fd_usable(r->wake_fd)) {
        /* Someone closed our eventfd: wakeups now come only with events. */
        ev_io_stop(ev, &r->wakeup);
    }
}

/* The hooks run only around polls that may wait: a non-blocking poll
 * returns at once, so giving up the GIL for it would only cost time. */
static void
release_cb(struct ev_loop *ev)
{
    gh_reactor *r = ev_userdata(ev);
    if (r->release && r->may_block) {
        r->release(r->hook_arg);
    }
}

static void
acquire_cb(struct ev_loop *ev)
{
    gh_reactor *r = ev_userdata(ev);
    if (r->acquire && r->may_block) {
        r->acquire(r->hook_arg);
    }
}

gh_reactor *
gh_reactor_new(void)
{
    gh_reactor *r = calloc(1, sizeof(*r));
    if (r != NULL) {
        r->wake_fd = -1;
    }
    if (r == NULL) {
        return NULL;
    }
    ev_set_syserr_cb(syserr_cb);
    /* The wakeup is our own eventfd, not an ev_async: libev makes the fd of
     * its ev_async lazily and aborts if it cannot (EMFILE), while a loop
     * made here fails with an OSError instead. */
    r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->wake_fd < 0) {
        goto error;
    }
    /* EVFLAG_NOSIGMASK: libev must not touch the signal mask; CPython owns
     * signal handling. */
    errno = 0;
    r->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (r->ev == NULL) {
        errno = errno ? errno : ENOMEM; /* EMFILE when epoll_create() failed */
        goto error;
    }
    ev_set_userdata(r->ev, r);
    ev_set_loop_release_cb(r->ev, release_cb, acquire_cb);

    ev_timer_init(&r->timeout, noop_timer_cb, 0., 0.);
    ev_io_init(&r->wakeup, wakeup_cb, r->wake_fd, EV_READ);
    ev_io_start(r->ev, &r->wakeup);
    ev_fork_init(&r->rebuild, rebuild_cb);
    ev_fork_start(r->ev, &r->rebuild);
    return r;

error:;
    int saved = errno;
    gh_reactor_free(r);
    errno = saved;
    return NULL;
}

void
gh_reactor_free(gh_reactor *r)
{
    if (r == NULL) {
        return;
    }
    /* Every watcher is stopped before the libev loop goes: stopping one
     * touches the loop's fd table. */
    for (int fd = 0; fd < r->nios; fd++) {
        if (r->ios[fd] != NULL) {
            if (r->ev != NULL) {
                ev_io_stop(r->ev, &r->ios[fd]->io);
            }
            free(r->ios[fd]);
        }
    }
    if (r->ev != NULL) {
        ev_timer_stop(r->ev, &r->timeout);
        ev_io_stop(r->ev, &r->wakeup);
        ev_fork_stop(r->ev, &r->rebuild);
        ev_loop_destroy(r->ev);
    }
    if (r->wake_fd >= 0) {
        close(r->wake_fd);
    }
    free(r->ios);
    free(r->changed);
    free(r);
}

void
gh_reactor_set_blocking_hooks(gh_reactor *r, gh_reactor_hook release, gh_reactor_hook acquire,
                              void *arg)
{
    r->release = release;
    r->acquire = acquire;
    r->hook_arg = arg;
}

/* One ev_run(); -1 with errno set if its epoll_wait() failed (see
 * syserr_cb). */
static int
run(gh_reactor *r, int flags)
{
    syserr_errno = 0;
    ev_run(r->ev, flags);
    if (syserr_errno != 0) {
        errno = syserr_errno;
        syserr_errno = 0;
        return -1;
    }
    return 0;
}

int
gh_reactor_poll(gh_reactor *r, double timeout)
{
    if (timeout == 0.) {
        /* A non-blocking poll exists to collect I/O events.  With no user
         * I/O watchers there is nothing to collect: wakeups and signals need
         * no poll when the loop is not going to sleep (the queued callbacks
         * and PyErr_CheckSignals() already see them), so save the system
         * call and the GIL round trip. */
        if (r->io_watchers == 0) {
            return 0;
        }
        r->may_block = 0;
        check_changed(r);
        return run(r, EVRUN_NOWAIT);
    }
    r->may_block = 1;
    check_changed(r);
    if (timeout < 0.) {
        return run(r, EVRUN_ONCE);
    }
    /* libev measures timers from its cached "now", which may be stale by
     * the time we get here; refresh it so the wait is not cut short.
     * (A short wait would only cost a spurious iteration: the loop layer
     * compares deadlines against a fresh clock, so a timer never fires
     * early either way.) */
    ev_now_update(r->ev);
    ev_timer_set(&r->timeout, timeout, 0.);
    ev_timer_start(r->ev, &r->timeout);
    int rc = run(r, EVRUN_ONCE);
    ev_timer_stop(r->ev, &r->timeout);
    return rc;
}

void
gh_reactor_wakeup(gh_reactor *r)
{
    /* One write(); the caller decides whether the poll may be sleeping. */
    uint64_t one = 1;
    int saved = errno;
    while (write(r->wake_fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
    errno = saved;
}

void
gh_reactor_after_fork(gh_reactor *r)
{
    /* A wakeup fd of our own, so that the parent's wakeups do not wake us
     * (or ours the parent); if none can be made, sharing is harmless. */
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd >= 0) {
        ev_io_stop(r->ev, &r->wakeup);
        close(r->wake_fd);
        r->wake_fd = fd;
        ev_io_set(&r->wakeup, fd, EV_READ);
        ev_io_start(r->ev, &r->wakeup);
    }
    ev_loop_fork(r->ev);
}

void
gh_reactor_set_io_callback(gh_reactor *r, gh_reactor_io_cb cb, void *arg)
{
    r->io_cb = cb;
    r->io_cb_arg = arg;
}

/* Queues fd to be checked before the next poll. */
static int
mark_changed(gh_reactor *r, gh_watch *w, int fd)
{
    if (w->changed) {
        return 0;
    }
    if (r->nchanged == r->changed_cap) {
        int n = r->changed_cap ? 2 * r->changed_cap : 64;
        int *changed = realloc(r->changed, (size_t)n * sizeof(*changed));
        if (changed == NULL) {
            errno = ENOMEM;
            return -1;
        }
        r->changed = changed;
        r->changed_cap = n;
    }
    r->changed[r->nchanged++] = fd;
    w->changed = 1;
    return 0;
}

int
gh_reactor_io_watch(gh_reactor *r, int fd, int events)
{
    if (r == NULL) { /* the loop is closed: nothing is watched any more */
        errno = EBADF;
        return events ? -1 : 0;
    }
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    gh_watch *w = fd < r->nios ? r->ios[fd] : NULL;
    if (events == 0) {
        if (w != NULL) {
            ev_io_stop(r->ev, &w->io);
            /* Still queued in `changed`: check_changed() skips a NULL. */
            free(w);
            r->ios[fd] = NULL;
            r->io_watchers--;
        }
        return 0;
    }
    if (w == NULL) {
        /* Refused now, with the error asyncio's selector gets from
         * epoll_ctl() (libev would fail later, or poll a file for ever). */
        if (!fd_watchable(fd)) {
            return -1;
        }
        if (fd >= r->nios) {
            /* fd is open, so below the kernel's limit (nr_open <= 2**30):
             * the doubling stays within an int. */
            size_t n = r->nios ? (size_t)r->nios : 64;
            while (n <= (size_t)fd) {
                n *= 2;
            }
            gh_watch **ios = realloc(r->ios, n * sizeof(*ios));
            if (ios == NULL) {
                errno = ENOMEM;
                return -1;
            }
            for (size_t i = (size_t)r->nios; i < n; i++) {
                ios[i] = NULL;
            }
            r->ios = ios;
            r->nios = (int)n;
        }
        w = calloc(1, sizeof(*w));
        if (w == NULL) {
            errno = ENOMEM;
            return -1;
        }
        ev_io_init(&w->io, io_ready_cb, fd, 0);
        r->ios[fd] = w;
        r->io_watchers++;
    }
    else {
        ev_io_stop(r->ev, &w->io);
    }
    if (mark_changed(r, w, fd) < 0) {
        return -1; /* the watcher stays stopped: nothing unchecked reaches libev */
    }
    ev_io_set(&w->io, fd,
              (events & GH_IO_READ ? EV_READ : 0) | (events & GH_IO_WRITE ? EV_WRITE : 0));
    ev_io_start(r->ev, &w->io);
    return 0;
}

int
gh_reactor_fd_usable(gh_reactor *r, int fd)
{
    (void)r; /* kept: whether an fd may be watched could depend on the backend */
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    return fd_usable(fd) ? 0 : -1;
}

const char *
gh_reactor_backend_name(const gh_reactor *r)
{
    switch (ev_backend(r->ev)) {
    case EVBACKEND_EPOLL:
        return "epoll";
    case EVBACKEND_POLL:
        return "poll";
    case EVBACKEND_SELECT:
        return "select";
    case EVBACKEND_KQUEUE:
        return "kqueue";
    default:
        return "other";
    }
}

void
gh_reactor_libev_version(int *major, int *minor)
{
    *major = ev_version_major();
    *minor = ev_version_minor();
}
