/*
 * vthread.h - running task steps on greenlets (virtual threads).
 *
 * greenhub keeps CPython's own asyncio.Task.  Loop.create_task() wraps the
 * task's coroutine in a GreenCoro: a coroutine-like object whose send() and
 * throw() - what the Task calls for each step - switch to a greenlet
 * ("worker") that steps the real coroutine there and switches back with
 * what it yielded.  Because the step runs on its own greenlet, synchronous
 * code anywhere under it can call greenhub.await_(): await_ steps its
 * awaitable itself and passes each future it yields up to the Task as if the
 * coroutine had yielded it, by switching to the greenlet that drove the step.
 * The Task waits on that future exactly as for `await`, and resumes the
 * step by calling send()/throw() again, which switches back into await_.
 *
 * Ownership of greenlets.  A worker is bound to one GreenCoro at a time and
 * goes back to the loop's pool when the task ends.  Between steps a task
 * keeps its worker while anything but greenhub can observe the greenlet (a
 * child greenlet's parent link, a stored greenlet.getcurrent(), a weak
 * reference, attributes) and while the loop has few bound workers;
 * otherwise the idle worker returns to the pool, which is what keeps an
 * idle task as small as a stock asyncio task.  Nothing can tell the two
 * apart: code that can reach the greenlet pins it.
 */
#ifndef GH_VTHREAD_H
#define GH_VTHREAD_H

#include <Python.h>

#include "state.h"

typedef struct gh_GreenCoro {
    PyObject_HEAD PyObject *coro; /* owned: the task's real coroutine */
    PyObject *loop;               /* owned: the greenhub loop (a gh_Loop) */
    PyObject *context;     /* owned or NULL: the Context steps run in, learnt at the first step */
    PyObject *worker;      /* owned or NULL: the greenlet bound to this task */
    PyObject *parked_in;   /* owned or NULL: the greenlet suspended inside await_() */
    PyObject *driver;      /* owned while a step runs: the greenlet that called send/throw */
    PyObject *stepping;    /* borrowed while a step runs: the greenlet it was switched to
                              (coro_step's reference keeps it alive) */
    PyObject *in_value;    /* owned or NULL: what the resumed step receives */
    PyObject *in_exc;      /* owned or NULL: the exception to throw into the step */
    PyObject *out;         /* owned or NULL: what the step produced */
    PyObject *weakreflist; /* managed by CPython */
    PyObject *no_switch_block; /* owned or NULL: describes the innermost no_switch() block */
    PyObject *awaiting;        /* borrowed or NULL: the awaitable of the innermost await_() call
                                  running in this task; that call's caller owns it */
    PyObject *deferred_cancel; /* owned or NULL: the CancelledError a defer_cancellation()
                                  block held back (defer.c) */
    Py_ssize_t kept_requests;  /* the task's cancelling() when deferred_cancel was kept,
                                  -1 if it could not be read (defer.c) */
    Py_ssize_t entry_requests; /* the same as the outermost defer_cancellation() began */
    struct gh_GreenCoro *prev_step; /* borrowed: the loop's current step before this one */
    struct gh_GreenCoro *park_prev; /* borrowed: links in the loop's list of parked coros */
    struct gh_GreenCoro *park_next;
    PySendResult out_status;
    int no_switch;           /* depth of greenhub.no_switch() blocks in this task */
    int defer_cancel;        /* depth of greenhub.defer_cancellation() blocks in this task */
    unsigned long thread_id; /* thread of the greenlets, while one is held */
    char running;            /* a step is in progress (switched away from the driver) */
    char finished;           /* the coroutine returned or raised */
    char parked;             /* in the loop's parked list */
    char step_over;          /* set by the step's greenlet right before it switches back to
                                the driver: what resumes the driver otherwise is passed on */
    char handed;             /* coro_step() hands a step to the worker: set before it switches
                                there, cleared by the worker as it takes it */
} gh_GreenCoro;

/* Idle worker greenlets of one loop. */
typedef struct {
    PyObject **greenlets; /* owned */
    Py_ssize_t len;
    Py_ssize_t cap;
    Py_ssize_t keep;         /* how many idle workers to keep: follows peak demand */
    unsigned long thread_id; /* the thread the pooled greenlets belong to */
} gh_pool;

/* The virtual threads' part of the loop (gh_Loop.vt; task_step.c). */
typedef struct {
    gh_GreenCoro *current_step; /* borrowed: the task step running now, or NULL */
    gh_GreenCoro *parked;       /* borrowed: list of coros suspended inside await_() */
    gh_pool pool;               /* idle worker greenlets */
    Py_ssize_t bound_workers;   /* workers bound to a task */
} gh_workers;

int gh_workers_traverse(gh_workers *vt, visitproc visit, void *arg);
/* Empties the pool (tp_clear, dealloc, close). */
void gh_workers_clear(gh_workers *vt);
/* close(): unwinds the virtual threads still parked inside await_()
 * (GeneratorExit raised at the await_ call, finally blocks run). */
void gh_workers_unwind_parked(gh_Loop *loop);

extern PyType_Spec gh_greencoro_spec;

/* greenhub.await_(awaitable) - see bridge.c. */
PyObject *gh_await(gh_state *st, PyObject *awaitable);

/* Makes st->await_probe; module_exec() calls it.  0, or -1 with an exception. */
int gh_bridge_init(gh_state *st);

/* 1 if the caller runs inside a task step of a greenhub loop running in
 * this thread (where gh_await() suspends only that task), 0 if not, -1 with
 * an exception set on error.  task_step.c. */
int gh_in_vthread(gh_state *st);

/* Suspends the task step `w` (running on the current greenlet, inside
 * synchronous code) on `yielded` (stolen: a future, or None for a bare
 * yield), which the Task then waits on as for `await`.  When the Task
 * resumes the step: 0, with *value or *exc (owned) set to what send() or
 * throw() passed.  -1 with an exception set if the step cannot be resumed
 * (a foreign greenlet switched into it).  The caller holds a reference to
 * w.  bridge.c. */
int gh_suspend(gh_GreenCoro *w, PyObject *yielded, PyObject **value, PyObject **exc);

/* gh_suspend() without its checks: the switch to the step's driver and back,
 * with the same contract.  For defer.c, which may suspend several times for
 * one wait.  task_step.c (below bridge.c and defer.c, which both call it). */
int gh_switch_out(gh_GreenCoro *w, PyObject *yielded, PyObject **value, PyObject **exc);

/* The task step running now on this thread's running greenhub loop
 * (borrowed), with asyncio's current task the one stepping it, or NULL: not
 * in a virtual thread (*loop is the running greenhub loop, or NULL if there
 * is none), or an error if PyErr_Occurred(). */
struct gh_Loop_s;
gh_GreenCoro *gh_vthread_step(gh_state *st, struct gh_Loop_s **loop);

/* The task asyncio has current on `loop` (new reference; None if none), and
 * in *stepping whether it is the Task whose step `w` (maybe NULL) is: 1 if
 * so; -1 if it is another task a greenhub loop made; 0 if it is a task whose
 * steps greenhub does not run (built by asyncio.Task() directly), as in the
 * eager first step of a task started inside w's step.  NULL on error. */
PyObject *gh_step_current_task(gh_state *st, struct gh_Loop_s *loop, gh_GreenCoro *w,
                               int *stepping);

/* The step running on `loop` if the caller runs inside it (on the step's greenlet
 * or one it switched to, not parked, not switching back to the driver), or NULL;
 * borrowed.  gh_vthread_step() without looking up the running loop. */
gh_GreenCoro *gh_step_here(struct gh_Loop_s *loop);

/* The current greenlet was resumed while it must wait (see task_step.c):
 * passes the resume on - `resumed` (taken; NULL when an exception is set)
 * goes to the greenlet most likely to have made it (`hint` first, if
 * given) - and returns when something switches back.  *nobody is set (NULL
 * returned, greenlet.error set) when no greenlet can take it. */
PyObject *gh_pass_on_resume(gh_state *st, PyObject *hint, PyObject *resumed, int *nobody);

/* The greenlet type of the workers (switch() and throw() refuse while the
 * virtual thread waits); module.c makes it with gh_green_subclass(). */
extern PyType_Spec gh_vthread_greenlet_spec;

/* Wraps a coroutine for a task of `loop`: a new GreenCoro for a coroutine,
 * a new reference to anything else (asyncio.Task rejects what it must). */
PyObject *gh_wrap_coroutine(gh_state *st, PyObject *coro, PyObject *loop);

/* A new callable that returns the coroutine the GreenCoro `green` (borrowed)
 * wraps: what task_create.c installs as a factory-made Task's get_coro. */
PyObject *gh_coro_getter(PyObject *green);

/* Records that w's step is suspended inside await_() on greenlet `here`. */
void gh_coro_park(gh_GreenCoro *w, PyObject *here);

/* Undoes gh_coro_park(). */
void gh_coro_unpark(gh_GreenCoro *w);

/* Called by the loop: empties the pool (kills its greenlets). */
void gh_pool_clear(gh_pool *pool);

/* Called by the loop when it is about to wait idle: kills a few of the idle
 * workers kept beyond the usual pool size after a burst of tasks.  Returns 1
 * if some are left to kill on a later idle pass. */
int gh_pool_trim(gh_pool *pool);

/* The run loop is about to wait: frees a few idle workers left from a burst
 * (gh_pool_trim()); 1 while more remain. */
static inline int
gh_workers_trim(gh_workers *vt)
{
    return gh_pool_trim(&vt->pool);
}

/* Loop._parked_coros(): the GreenCoros suspended inside await_(), a list. */
PyObject *gh_loop_parked_coros(PyObject *op, PyObject *ignored);

/* Module-level function objects the workers run; made by module.c. */
PyObject *gh_make_worker_main(PyObject *module);

#endif /* GH_VTHREAD_H */
