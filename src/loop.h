/*
 * loop.h - the Loop type: asyncio's scheduling core in C.
 *
 * greenhub.Loop (Python) subclasses this type and asyncio.BaseEventLoop.
 * This type owns everything on the hot path - call_soon and friends, the
 * ready queue, timers, the run loop, time() - and the state that both the
 * C and the inherited Python code read (_closed, _stopping, _debug,
 * _thread_id, _current_handle), so there is one copy of each.
 */
#ifndef GH_LOOP_H
#define GH_LOOP_H

#include <Python.h>
#include <stdatomic.h>

#include "readyq.h"
#include "reactor.h"
#include "state.h"
#include "timerq.h"
#include "vthread.h"

typedef struct gh_Loop_s {
    PyObject_HEAD gh_state *st; /* module state, valid while `module` is held */
    PyObject *module;           /* owned, released last in dealloc: keeps `st` valid even
                                 * when shutdown's garbage collection has cleared our type's
                                 * reference to the module; never cleared by tp_clear */
    gh_reactor *reactor;        /* owned (malloc); NULL if creation failed or closed */
    /* Borrowed: the module's list of live loops (st->loops), which a forked
     * child walks to give each loop kernel state of its own. */
    struct gh_Loop_s *next_loop, *prev_loop;
    gh_readyq ready;                  /* owns one reference to each queued handle */
    gh_timerq timers;                 /* owns one reference to each scheduled TimerHandle */
    Py_ssize_t timer_cancelled_count; /* cancelled handles still in `timers` */
    PyThreadState *poll_tstate;       /* set while polling with the GIL released */

    PyObject *debug_obj;      /* owned: the value given to set_debug() */
    PyObject *thread_id_obj;  /* owned: None, or the int ident of the running thread */
    PyObject *current_handle; /* owned or NULL: the running handle, debug mode only */
    PyObject *task_factory;   /* owned or NULL: set_task_factory()'s callable */

    /* add_reader()/add_writer() (io.c): per fd, the handles to run when it
     * is ready.  Each slot owns its two references (or NULL). */
    struct gh_io_slot *io_slots; /* PyMem array indexed by fd */
    int n_io_slots;
    /* Owned list or NULL (`_io_trace`, for tests/fuzz_loop.py): each fd the
     * poll reports is appended, in the order its handles are queued.  The
     * order between fds in one poll is unspecified (the stock loop follows
     * epoll's; libev runs its pending watchers last-in first-out), so the
     * differential fuzzer replays greenhub's order on the stock loop. */
    PyObject *io_trace;

    /* Socket transports (transport.c): the write queues to send at the end
     * of this iteration; the list owns a reference to each. */
    struct gh_TransportState *wq_head, *wq_tail;
    /* sock.c's reader callbacks, bound to this loop; owned, made on first use. */
    PyObject *sock_recv_ready, *sock_recv_into_ready;
    /* fd_wait.c's reader/writer/timer callback, bound to this loop;
     * owned, made on first use. */
    PyObject *green_ready;

    /* Virtual threads (vthread.h). */
    gh_GreenCoro *current_step; /* borrowed: the task step running now, or NULL */
    gh_GreenCoro *parked;       /* borrowed: list of coros suspended inside await_() */
    gh_pool pool;               /* idle worker greenlets */
    Py_ssize_t bound_workers;   /* workers bound to a task */
    unsigned long thread_id;    /* mirrors thread_id_obj when has_thread_id */
    char has_thread_id;         /* 1 while running: is_running() */
    char debug;                 /* truth of debug_obj */
    char closed;
    char stopping;
    /* 0 not known yet, 1 the type's time() is greenhub's, 2 a subclass
     * overrides it (see loop_now in loop.c). */
    char time_kind;
    /* Wakeups from other threads (call_soon_threadsafe; the invariant is
     * written out in loop.c, above release_gil()): `sleeping` is set from
     * run_once()'s "nothing is ready" decision until its poll returns,
     * `wakeup_sent` once a wakeup is on its way in that window; both change
     * only with the GIL held, which orders them for the other threads. */
    char sleeping;
    char wakeup_sent;

    /* The watchdog (watchdog.c).  `ticks` moves each time the loop starts
     * a callback or comes back from a blocking poll, and `polling` is set
     * while it waits in the poll: a native thread that sees `ticks` stand
     * still while the loop is not polling knows one callback has held the
     * loop since.  Written only by the loop's thread, read by the watchdog
     * thread without the GIL, hence atomics (relaxed: plain loads and
     * stores on the platforms greenhub supports). */
    _Atomic(unsigned long) ticks;
    _Atomic(int) polling;
    PyObject *running_handle;  /* borrowed: the handle being run now, or NULL */
    PyThreadState *run_tstate; /* borrowed: the thread running _run(), or NULL */
    double wd_threshold;       /* seconds; 0 when the watchdog is off */
    PyObject *wd_handler;      /* owned or NULL: set_watchdog()'s handler */
    struct gh_watchdog *wd;    /* owned (malloc) while the watchdog thread runs */
} gh_Loop;

extern PyType_Spec gh_loop_spec;

/* _core._after_fork_child(): in a child process after fork(), each live
 * loop gets an epoll set and wakeup fd of its own (os.register_at_fork in
 * greenhub/_loop.py calls it). */
PyObject *gh_loop_after_fork_child(PyObject *module, PyObject *ignored);

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

/* Wakes the poll if the loop may be sleeping (the wakeup invariant in
 * loop.c): for pushes from other threads, and for fd watchers changed from
 * another thread while the loop sleeps. */
void gh_loop_wake_if_sleeping(gh_Loop *loop);

/* Queues a handle to run in the next pass; steals the reference (also on
 * failure: -1 with MemoryError set). */
int gh_loop_push_ready(gh_Loop *loop, PyObject *h);

/* io.c: the four reader/writer methods, and the reactor callback. */
PyObject *gh_loop_add_reader(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_add_writer(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_remove_reader(PyObject *op, PyObject *fd);
PyObject *gh_loop_remove_writer(PyObject *op, PyObject *fd);
void gh_loop_io_ready(void *arg, int fd, int readable, int writable);
/* {fd: events} of the watched fds (1 read, 2 write, as selectors' masks). */
PyObject *gh_loop_io_watchers(PyObject *op, PyObject *ignored);
/* The `_io_trace` property: None or the list of reported fds (see io_trace). */
PyObject *gh_loop_get_io_trace(PyObject *op, void *closure);
int gh_loop_set_io_trace(PyObject *op, PyObject *value, void *closure);
/* Stops every watcher and drops the handles (close, GC). */
void gh_loop_io_clear(gh_Loop *loop);

/* io.c, for sock.c's waits: */
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

/* A new callback starts, or the loop is back from a blocking poll: the
 * watchdog's sign of progress.  Only the loop's thread writes `ticks`, so a
 * relaxed load and store (no locked instruction) are enough. */
static inline void
gh_loop_tick(gh_Loop *loop)
{
    unsigned long t = atomic_load_explicit(&loop->ticks, memory_order_relaxed);
    atomic_store_explicit(&loop->ticks, t + 1, memory_order_relaxed);
}

/* io.c, for the waits of fd_wait.c and green_sock.c: */
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

/* A TimerHandle for callback(*args) at loop time `when` (args[0] is the
 * callback), in `context`; a new reference.  loop.c. */
PyObject *gh_loop_call_at(gh_Loop *loop, double when, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *context);

/* TimerHandle.cancel() tells its loop (counts lazily-cancelled timers). */
void gh_loop_timer_cancelled(gh_Loop *loop, PyObject *timer);

static inline gh_Loop *
gh_as_loop(gh_state *st, PyObject *obj)
{
    return PyObject_TypeCheck(obj, st->LoopType) ? (gh_Loop *)obj : NULL;
}

#endif /* GH_LOOP_H */
