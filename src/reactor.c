/*
 * reactor.c - the libev wrapper.  See reactor.h.
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
#include <stdlib.h>
#include <unistd.h>

#include <ev.h>

struct gh_reactor {
    struct ev_loop *ev;
    ev_timer timeout; /* bounds a poll's wait; its callback does nothing */
    ev_async wakeup;  /* gh_reactor_wakeup(): eventfd/pipe owned by libev */
    gh_reactor_hook release, acquire;
    void *hook_arg;
    int io_watchers; /* active watchers for user I/O */
    int may_block;   /* the poll in progress may wait (timeout != 0) */
    ev_io **ios;     /* owned (malloc): watcher per fd, NULL where none */
    int nios;        /* length of ios */
    gh_reactor_io_cb io_cb;
    void *io_cb_arg;
};

static void
noop_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev, (void)w, (void)revents;
}

static void
noop_async_cb(struct ev_loop *ev, ev_async *w, int revents)
{
    (void)ev, (void)w, (void)revents;
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
    if (r == NULL) {
        return NULL;
    }
    /* EVFLAG_NOSIGMASK: libev must not touch the signal mask; CPython owns
     * signal handling. */
    r->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (r->ev == NULL) {
        errno = ENOMEM;
        goto error;
    }
    ev_set_userdata(r->ev, r);
    ev_set_loop_release_cb(r->ev, release_cb, acquire_cb);

    ev_timer_init(&r->timeout, noop_timer_cb, 0., 0.);
    ev_async_init(&r->wakeup, noop_async_cb);
    ev_async_start(r->ev, &r->wakeup);
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
    if (r->ev != NULL) {
        ev_timer_stop(r->ev, &r->timeout);
        ev_async_stop(r->ev, &r->wakeup);
        ev_loop_destroy(r->ev);
    }
    for (int fd = 0; fd < r->nios; fd++) {
        if (r->ios[fd] != NULL) {
            if (r->ev != NULL) {
                ev_io_stop(r->ev, r->ios[fd]);
            }
            free(r->ios[fd]);
        }
    }
    free(r->ios);
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

void
gh_reactor_poll(gh_reactor *r, double timeout)
{
    if (timeout == 0.) {
        /* A non-blocking poll exists to collect I/O events.  With no user
         * I/O watchers there is nothing to collect: wakeups and signals need
         * no poll when the loop is not going to sleep (the queued callbacks
         * and PyErr_CheckSignals() already see them), so save the system
         * call and the GIL round trip. */
        if (r->io_watchers > 0) {
            r->may_block = 0;
            ev_run(r->ev, EVRUN_NOWAIT);
        }
        return;
    }
    r->may_block = 1;
    if (timeout > 0.) {
        /* libev measures timers from its cached "now", which may be stale by
         * the time we get here; refresh it so the wait is not cut short.
         * (A short wait would only cost a spurious iteration: the loop
         * layer compares deadlines against a fresh clock, so a timer never
         * fires early either way.) */
        ev_now_update(r->ev);
        ev_timer_set(&r->timeout, timeout, 0.);
        ev_timer_start(r->ev, &r->timeout);
        ev_run(r->ev, EVRUN_ONCE);
        ev_timer_stop(r->ev, &r->timeout);
        return;
    }
    ev_run(r->ev, EVRUN_ONCE);
}

void
gh_reactor_wakeup(gh_reactor *r)
{
    /* Cheap when the loop is not blocked: libev only writes to its eventfd
     * when a poll is (about to be) waiting. */
    ev_async_send(r->ev, &r->wakeup);
}

void
gh_reactor_set_io_callback(gh_reactor *r, gh_reactor_io_cb cb, void *arg)
{
    r->io_cb = cb;
    r->io_cb_arg = arg;
}

int
gh_reactor_io_watch(gh_reactor *r, int fd, int events)
{
    if (fd < 0) {
        errno = EBADF;
        return -1;
    }
    ev_io *w = fd < r->nios ? r->ios[fd] : NULL;
    if (events == 0) {
        if (w != NULL) {
            ev_io_stop(r->ev, w);
            free(w);
            r->ios[fd] = NULL;
            r->io_watchers--;
        }
        return 0;
    }
    if (w == NULL) {
        /* epoll would accept a closed descriptor only to fail later;
         * refuse it now, as asyncio's selector does (EBADF). */
        if (fcntl(fd, F_GETFD) < 0) {
            return -1;
        }
        if (fd >= r->nios) {
            int n = r->nios ? r->nios : 64;
            while (n <= fd) {
                n *= 2;
            }
            ev_io **ios = realloc(r->ios, (size_t)n * sizeof(*ios));
            if (ios == NULL) {
                errno = ENOMEM;
                return -1;
            }
            for (int i = r->nios; i < n; i++) {
                ios[i] = NULL;
            }
            r->ios = ios;
            r->nios = n;
        }
        w = malloc(sizeof(*w));
        if (w == NULL) {
            errno = ENOMEM;
            return -1;
        }
        ev_io_init(w, io_ready_cb, fd, 0);
        r->ios[fd] = w;
        r->io_watchers++;
    }
    else {
        ev_io_stop(r->ev, w);
    }
    ev_io_set(w, fd, (events & GH_IO_READ ? EV_READ : 0) | (events & GH_IO_WRITE ? EV_WRITE : 0));
    ev_io_start(r->ev, w);
    return 0;
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
