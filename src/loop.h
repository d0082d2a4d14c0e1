/*
 * loop.h - the Loop object and the loop core.
 *
 * greenhub.Loop (Python) subclasses this type and asyncio.BaseEventLoop.
 * This type owns everything on the hot path - call_soon and friends, the
 * ready queue, timers, the run loop, time() - and the state that both the
 * C and the inherited Python code read (_closed, _stopping, _debug,
 * _thread_id, _current_handle), so there is one copy of each.
 *
 * gh_Loop is the list of its parts; each subsystem's header declares its
 * part and the functions loop.c calls to traverse, clear and close it.  The
 * core functions below (sched.c) are what the subsystems call in turn: the
 * type and the run loop (loop.c, run.c) sit above the subsystems, the core
 * below them, so calls and includes point one way (docs/design.md, Layers).
 */
#ifndef GH_LOOP_H
#define GH_LOOP_H

#include <Python.h>

#include "fd_wait.h"
#include "handle.h"
#include "io.h"
#include "reactor.h"
#include "readyq.h"
#include "sock.h"
#include "state.h"
#include "timerq.h"
#include "transport.h"
#include "vthread.h"
#include "watchdog.h"

/* The loop is the list of its parts: its own state (the lifecycle flags and
 * the attributes shared with asyncio's Python code) and one sub-struct per
 * subsystem, each declared in that subsystem's header with the functions
 * that initialise, traverse, clear and close it (loop.c calls them). */
struct gh_Loop_s {
    PyObject_HEAD gh_state *st; /* module state, valid while `module` is held */
    PyObject *module;           /* owned, released last in dealloc: keeps `st` valid even
                                 * when shutdown's garbage collection has cleared our type's
                                 * reference to the module; never cleared by tp_clear */
    /* Borrowed: the module's list of live loops (st->loops), which a forked
     * child walks to give each loop kernel state of its own. */
    struct gh_Loop_s *next_loop, *prev_loop;

    PyObject *debug_obj;      /* owned: the value given to set_debug() */
    PyObject *thread_id_obj;  /* owned: None, or the int ident of the running thread */
    PyObject *current_handle; /* owned or NULL: the running handle, debug mode only */
    PyObject *task_factory;   /* owned or NULL: set_task_factory()'s callable */
    unsigned long thread_id;  /* mirrors thread_id_obj when has_thread_id */
    char has_thread_id;       /* 1 while running: is_running() */
    char debug;               /* truth of debug_obj */
    char closed;
    char stopping;
    /* 0 not known yet, 1 the type's time() is greenhub's, 2 a subclass
     * overrides it (see loop_now_obj in sched.c). */
    char time_kind;
    /* Wakeups from other threads (call_soon_threadsafe; the invariant is
     * written out in sched.c, above gh_loop_wake_if_sleeping()): `sleeping`
     * is set from run_once()'s "nothing is ready" decision until its poll
     * returns, `wakeup_sent` once a wakeup is on its way in that window; both
     * change only with the GIL held, which orders them for the other threads. */
    char sleeping;
    char wakeup_sent;
    PyThreadState *poll_tstate; /* set while polling with the GIL released */

    /* The parts. */
    gh_reactor *reactor;              /* reactor.h: owned (malloc); NULL if creation failed
                                       * or closed */
    gh_readyq ready;                  /* readyq.h: owns one reference to each queued handle */
    gh_timerq timers;                 /* timerq.h: owns one reference to each scheduled
                                       * TimerHandle */
    Py_ssize_t timer_cancelled_count; /* cancelled handles still in `timers` */
    gh_io io;                         /* io.h: fd watchers */
    gh_fd_waits fdw;                  /* fd_wait.h: green waits on bare fds */
    gh_sock_waits sockw;              /* sock.h: sock_recv() & co. */
    gh_write_queues writes;           /* transport.h: writes sent at the end of the iteration */
    gh_workers vt;                    /* vthread.h: task steps, worker greenlets */
    gh_loop_watch watch;              /* watchdog.h: progress ticks, the watchdog thread */
};

extern PyType_Spec gh_loop_spec;

/* _core._after_fork_child(): in a child process after fork(), each live
 * loop gets an epoll set and wakeup fd of its own (os.register_at_fork in
 * greenhub/_loop.py calls it). */
PyObject *gh_loop_after_fork_child(PyObject *module, PyObject *ignored);

/* --- the loop core (sched.c) ---------------------------------------------- *
 * What the run loop and every subsystem schedule through.  It calls no
 * subsystem, so a subsystem may call it without a cycle. */

/* Wakes the poll if the loop may be sleeping (the wakeup invariant in
 * sched.c): for pushes from other threads, and for fd watchers changed from
 * another thread while the loop sleeps. */
void gh_loop_wake_if_sleeping(gh_Loop *loop);

/* Queues a handle to run in the next pass; steals the reference (also on
 * failure: -1 with MemoryError set). */
int gh_loop_push_ready(gh_Loop *loop, PyObject *h);

/* A TimerHandle for callback(*args) at loop time `when` (args[0] is the
 * callback), in `context`; a new reference. */
PyObject *gh_loop_call_at(gh_Loop *loop, double when, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *context);

/* RuntimeError("Event loop is closed") and -1 if the loop is closed.
 * Inline: every call_soon() tests it. */
static inline int
gh_loop_check_closed(gh_Loop *loop)
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

/* TimerHandle.cancel() tells its loop: a timer still in the heap is now
 * lazily cancelled (the run loop drops it when it reaches the top). */
static inline void
gh_loop_timer_cancelled(gh_Loop *loop, PyObject *timer)
{
    if (gh_hd(timer)->scheduled) {
        loop->timer_cancelled_count++;
    }
}

static inline gh_Loop *
gh_as_loop(gh_state *st, PyObject *obj)
{
    return PyObject_TypeCheck(obj, st->LoopType) ? (gh_Loop *)obj : NULL;
}

#endif /* GH_LOOP_H */
