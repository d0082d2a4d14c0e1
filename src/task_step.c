/*
 * task_step.c - GreenCoro and the worker greenlets that run task steps.
 * See vthread.h for the design; bridge.c holds greenhub.await_().
 *
 * One step, seen from the driver (the greenlet that calls send/throw -
 * usually the one running the loop; for an eager task, whoever called
 * create_task):
 *
 *   driver: coro_step()  --switch-->  worker: worker_main() steps the coroutine
 *                        <--switch--  ... yields / returns / raises
 *
 * or, when synchronous code under the coroutine called await_():
 *
 *   driver: coro_step()  --switch-->  greenlet parked in gh_await()
 *                        <--switch--  await_ yields the next future
 *
 * Values cross the switch in the GreenCoro's in_value, in_exc and out fields, not
 * through greenlet's switch arguments, so a step allocates nothing to switch.
 */
#include "loop.h"

#include <alloca.h>
#include <assert.h>
#include <structmember.h>

#include "compat.h"
#include "defer.h"
#include "green.h"
#include "switches.h"
#include "vthread.h"

/* Idle workers a loop keeps for reuse.  After a burst of many concurrent
 * tasks it keeps up to as many as were bound at the peak (at most
 * POOL_BURST_MAX): making a greenlet and killing it costs ~20 us, which a
 * program that runs 10,000 virtual threads at a time would otherwise pay for
 * most of them on every round.  The surplus is killed a few at a time
 * (POOL_TRIM_STEP) whenever the loop goes idle, so the memory comes back. */
#define POOL_MAX 256
#define POOL_BURST_MAX 65536
#define POOL_TRIM_STEP 128
/* Up to this many bound workers per loop, tasks keep theirs between steps
 * (no rebinding cost); beyond it, idle tasks give unobservable workers back
 * so that many idle tasks cost no greenlet each. */
#define KEEP_BOUND_MAX 64

/* How far below the driver's stack a new worker starts (see switch_in). */
#define WORKER_STACK_GAP (64 * 1024)

static inline gh_Loop *
coro_loop(gh_GreenCoro *w)
{
    return (gh_Loop *)w->loop;
}

/* The task a worker greenlet is bound to (borrowed), or NULL while it is
 * idle in the pool: the one C field of the worker type. */
static inline gh_GreenCoro **
worker_owner(PyObject *g)
{
    return (gh_GreenCoro **)gh_green_extra(g);
}

/* --- the pool ------------------------------------------------------------- */

static int
pool_push(gh_pool *p, PyObject *g)
{
    if (p->len == p->cap) {
        Py_ssize_t ncap = p->cap ? p->cap * 2 : 16;
        PyObject **gs = PyMem_Realloc(p->greenlets, ncap * sizeof(PyObject *));
        if (gs == NULL) {
            return -1;
        }
        p->greenlets = gs;
        p->cap = ncap;
    }
    p->greenlets[p->len++] = g;
    return 0;
}

void
gh_pool_clear(gh_pool *p)
{
    /* Releasing an idle worker kills it: greenlet throws GreenletExit into
     * worker_main(), which returns.  Pop first so the pool stays valid. */
    while (p->len > 0) {
        PyObject *g = p->greenlets[--p->len];
        Py_DECREF(g);
    }
    PyMem_Free(p->greenlets);
    p->greenlets = NULL;
    p->cap = 0;
    p->keep = 0;
}

int
gh_pool_trim(gh_pool *p)
{
    if (p->keep <= POOL_MAX) {
        return 0;
    }
    for (int i = 0; i < POOL_TRIM_STEP && p->len > POOL_MAX; i++) {
        PyObject *g = p->greenlets[--p->len];
        Py_DECREF(g); /* kills it (GreenletExit) */
    }
    p->keep = p->len > POOL_MAX ? p->len : 0;
    return p->keep != 0;
}

/* --- the loop's part ------------------------------------------------------ */

int
gh_workers_traverse(gh_workers *vt, visitproc visit, void *arg)
{
    /* current_step and parked are borrowed: not visited. */
    for (Py_ssize_t i = 0; i < vt->pool.len; i++) {
        Py_VISIT(vt->pool.greenlets[i]);
    }
    return 0;
}

void
gh_workers_clear(gh_workers *vt)
{
    gh_pool_clear(&vt->pool);
}

PyObject *
gh_loop_parked_coros(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    PyObject *list = PyList_New(0);
    for (gh_GreenCoro *w = self->vt.parked; list != NULL && w != NULL; w = w->park_next) {
        if (PyList_Append(list, (PyObject *)w) < 0) {
            Py_CLEAR(list);
        }
    }
    return list;
}

void
gh_workers_unwind_parked(gh_Loop *loop)
{
    /* greenhub.Loop.close() cancels them properly first; this is for what
     * is left. */
    while (loop->vt.parked != NULL) {
        /* Owned for the call: closing may drop the task's last reference. */
        gh_GreenCoro *w = (gh_GreenCoro *)Py_NewRef(loop->vt.parked);
        PyObject *res = PyObject_CallMethodNoArgs((PyObject *)w, loop->st->str_close);
        if (res == NULL) {
            if (loop->vt.parked == w) {
                gh_coro_unpark(w); /* it refused; do not loop forever */
            }
            /* Reported with the error still set: WriteUnraisable() reads it. */
            PyErr_WriteUnraisable((PyObject *)w);
        }
        Py_XDECREF(res);
        Py_DECREF(w);
    }
}

/* --- binding workers to tasks --------------------------------------------- */

static int
bind_worker(gh_state *st, gh_Loop *loop, gh_GreenCoro *w)
{
    if (w->context == NULL) {
        /* The first step runs inside the Task's Context (the handle entered
         * it); the current greenlet's gr_context is that very object.  The
         * worker adopts it at the start of each step (worker_main). */
        PyObject *cur = gh_green_current();
        if (cur == NULL) {
            return -1;
        }
        w->context = gh_green_get_context(cur, st->str_gr_context);
        Py_DECREF(cur);
        if (w->context == NULL) {
            return -1;
        }
    }
    PyObject *g;
    unsigned long here = PyThread_get_thread_ident();
    if (loop->vt.pool.len > 0 && loop->vt.pool.thread_id != here) {
        /* The loop now runs in another thread; greenlets cannot follow.
         * (greenlet frees them in their own thread.) */
        gh_pool_clear(&loop->vt.pool);
    }
    if (loop->vt.pool.len > 0) {
        g = loop->vt.pool.greenlets[--loop->vt.pool.len];
    }
    else {
        /* What it runs: worker_main, under the Python layer's base frame
         * (_core._set_worker_base) once that is set. */
        PyObject *run = st->worker_base == NULL
                            ? Py_NewRef(st->worker_main)
                            : PyObject_CallOneArg(st->worker_base, st->worker_main);
        if (run == NULL) {
            return -1;
        }
        g = gh_green_new_under_main(st->VThreadGreenletType, run);
        Py_DECREF(run);
        if (g == NULL) {
            return -1;
        }
        st->live_workers++;
    }
    *worker_owner(g) = w;
    w->worker = g;
    w->thread_id = here;
    loop->vt.bound_workers++;
    if (loop->vt.bound_workers > loop->vt.pool.keep && loop->vt.bound_workers <= POOL_BURST_MAX) {
        loop->vt.pool.keep = loop->vt.bound_workers;
    }
    return 0;
}

/* The worker is back in worker_main() after a step: keep it with the task
 * or return it to the pool (see vthread.h, "Ownership of greenlets"). */
static void
maybe_unbind_worker(gh_Loop *loop, gh_GreenCoro *w)
{
    PyObject *g = w->worker;
    if (g == NULL || w->parked_in != NULL) {
        return;
    }
    int observable = gh_green_observable(g, 1);
    if (!w->finished && (observable || loop->vt.bound_workers <= KEEP_BOUND_MAX)) {
        return;
    }
    w->worker = NULL;
    *worker_owner(g) = NULL;
    loop->vt.bound_workers--;
    if (loop->vt.pool.len == 0) {
        loop->vt.pool.thread_id = w->thread_id;
    }
    Py_ssize_t room = loop->vt.pool.keep > POOL_MAX ? loop->vt.pool.keep : POOL_MAX;
    if (observable || !gh_green_active(g) || loop->vt.pool.len >= room || loop->closed ||
        loop->vt.pool.thread_id != w->thread_id) {
        /* Not reusable here: someone else holds it, or no room.  Dropping
         * our reference kills it if nobody else has one. */
        Py_DECREF(g);
        return;
    }
    /* Attributes set on a finished task's greenlet must not reach the next
     * task.  (An idle task's unobservable greenlet has none.) */
    gh_green_clear_attributes(g);
    if (pool_push(&loop->vt.pool, g) < 0) {
        Py_DECREF(g);
    }
}

/* --- the worker greenlet's main function ---------------------------------- */

/* Runs one step of w's coroutine on the current (worker) greenlet. */
static void
step_coroutine(gh_state *st, gh_GreenCoro *w)
{
    PyObject *value = w->in_value, *exc = w->in_exc, *res = NULL;
    w->in_value = w->in_exc = NULL;
    PySendResult status;
    if (exc == NULL) {
        status = PyIter_Send(w->coro, value ? value : Py_None, &res);
    }
    else {
        res = PyObject_CallMethodOneArg(w->coro, st->str_throw, exc);
        if (res != NULL) {
            status = PYGEN_NEXT;
        }
        else if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyObject *stop = gh_err_get_raised();
            res = PyObject_GetAttrString(stop, "value");
            Py_DECREF(stop);
            status = res ? PYGEN_RETURN : PYGEN_ERROR;
        }
        else {
            status = PYGEN_ERROR;
        }
    }
    Py_XDECREF(value);
    Py_XDECREF(exc);
    if (status == PYGEN_ERROR) {
        res = gh_err_get_raised();
    }
    if (status != PYGEN_NEXT) {
        w->finished = 1;
    }
    w->out = res;
    w->out_status = status;
}

/* A native `await` yielded inside a greenhub.no_switch() block: instead of
 * suspending the task, raise SwitchError at that await (switches.c); inside
 * a greenhub.defer_cancellation() block, RuntimeError (defer.c).  The
 * future it yielded is dropped unwaited, as when a waiting task is
 * cancelled; the coroutine may catch the error and go on. */
static void
refuse_native_switches(gh_state *st, gh_GreenCoro *w)
{
    while (w->out_status == PYGEN_NEXT && (w->no_switch > 0 || w->defer_cancel > 0)) {
        Py_CLEAR(w->out);
        w->in_exc = w->no_switch > 0 ? gh_switch_error(st, w, "`await`") : gh_defer_await_error();
        if (w->in_exc == NULL) {
            w->out = gh_err_get_raised();
            w->out_status = PYGEN_ERROR;
            w->finished = 1;
            return;
        }
        step_coroutine(st, w);
    }
}

/* Makes `ctx` the current greenlet's (and so the thread's) context, the way
 * a greenlet switch does: without "entering" it, since the step's handle
 * has already entered it on the driver.  (greenlet refuses to set the
 * context of a suspended greenlet that has no Python frame, so a worker sets
 * its own.) */
static int
adopt_context(gh_state *st, PyObject *ctx)
{
    PyObject *self = gh_green_current();
    if (self == NULL) {
        return -1;
    }
    int rc = gh_green_set_context(self, st->str_gr_context, ctx);
    Py_DECREF(self);
    return rc;
}

static PyObject *
worker_main(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    PyObject *ctx = NULL;             /* owned: the context this greenlet is in */
    PyObject *r = Py_NewRef(Py_None); /* what resumed this greenlet last */
    PyObject *self = gh_green_current();
    if (self == NULL) {
        st->live_workers--;
        return NULL;
    }
    Py_DECREF(self); /* borrowed: a running greenlet is alive */
    for (;;) {
        /* Only coro_step() starts a step here: it marks the task bound to
         * this greenlet `handed` first.  Anything else resumed this greenlet
         * (see gh_pass_on_resume()).  The mark is the task's, not a global
         * one: another thread's loop runs its own steps whenever Python code
         * lets the GIL go (a greenlet.settrace() hook runs on the target of
         * each switch). */
        for (;;) {
            if (r == NULL && PyErr_ExceptionMatches(gh_green_exit_type())) {
                /* Killed (GreenletExit: the pool let it go, or greenlet
                 * collected it): this worker's life ends here. */
                PyErr_Clear();
                st->live_workers--;
                Py_XDECREF(ctx);
                Py_RETURN_NONE;
            }
            gh_GreenCoro *owner = *worker_owner(self);
            if (owner != NULL && owner->handed && owner->worker == self) {
                break;
            }
            int nobody;
            r = gh_pass_on_resume(st, NULL, r, &nobody);
            if (nobody) {
                st->live_workers--;
                Py_XDECREF(ctx);
                return NULL; /* nothing else to do: end this greenlet */
            }
        }
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
        gh_GreenCoro *w = *worker_owner(self); /* the driver holds a reference */
        w->handed = 0;
        if (w->context != ctx) {
            if (adopt_context(st, w->context) < 0) {
                /* Report it as the step's outcome. */
                Py_CLEAR(w->in_value);
                Py_CLEAR(w->in_exc);
                w->out = gh_err_get_raised();
                w->out_status = PYGEN_ERROR;
                w->finished = 1;
                goto step_done;
            }
            Py_XSETREF(ctx, Py_NewRef(w->context));
        }
        assert(w->running && w->out == NULL);
        step_coroutine(st, w);
        if (w->no_switch > 0 || w->defer_cancel > 0) {
            refuse_native_switches(st, w);
        }
        if (w->finished) {
            /* An idle worker must not keep the task's Context (and what
             * its variables hold) alive. */
            if (adopt_context(st, Py_None) < 0) {
                PyErr_Clear(); /* cannot fail for the current greenlet */
            }
            Py_CLEAR(ctx);
        }
    step_done:
        w->step_over = 1;
        r = gh_green_switch(w->driver);
    }
}

/* The loop running in this thread whose step is in progress, or NULL. */
static gh_GreenCoro *
running_step(gh_state *st)
{
    unsigned long here = PyThread_get_thread_ident();
    for (gh_Loop *lp = st->loops; lp != NULL; lp = lp->next_loop) {
        if (lp->vt.current_step != NULL && lp->vt.current_step->thread_id == here) {
            return lp->vt.current_step;
        }
    }
    return NULL;
}

/*
 * The current greenlet was switched or thrown into while it must not run: a
 * virtual thread parked in await_(), an idle worker, or the loop's greenlet
 * while a step it drives is away.  greenhub's own workers refuse user
 * switch() and throw() calls up front (vthread_greenlet_switch below); this
 * handles what bypasses that: a finished child greenlet whose parent this
 * is (greenlet returns to the parent), greenlet's base-class methods, a
 * switch from C, and any switch into the loop's greenlet.
 *
 * The resume is passed on - `resumed` (taken; NULL when an exception is
 * set) becomes what the pending switch() call of the greenlet most likely
 * to have made it returns or raises - and this greenlet goes on waiting.
 * greenlet does not say who switched; the likely one is `hint` if given (the
 * greenlet the driver's step runs on), else the greenlet running the
 * loop's current task step, else the thread's main greenlet.  That is the
 * stock loop's behaviour, where every task runs on the main greenlet: a
 * greenlet made in one task and finished by another returns to the one
 * running, and a switch into the main greenlet from a task is a switch to
 * itself, which returns its own arguments.
 *
 * Returns once something switches back here (what it passed, or NULL with
 * its exception set); the caller checks again whether it may go on.  If no
 * greenlet can take it, returns NULL with greenlet.error set and *nobody
 * set, and the caller gives up waiting.
 */
PyObject *
gh_pass_on_resume(gh_state *st, PyObject *hint, PyObject *resumed, int *nobody)
{
    /* Nothing may stay referenced from this C frame while the greenlet is
     * suspended below: the collector cannot see such a reference, and the
     * value (or the exception's traceback) can refer back to this very
     * greenlet - an uncollectable cycle.  So the target is borrowed (it is
     * alive: the greenlet of a running step, or the thread's main
     * greenlet) and what is passed on waits in st->in_transit, which the
     * module state owns and traverses, until the next step clears it. */
    *nobody = 0;
    PyObject *here = gh_green_current();
    if (here == NULL) {
        Py_XDECREF(resumed);
        return NULL;
    }
    Py_DECREF(here); /* borrowed: the running greenlet is alive */
    PyObject *target = NULL;
    if (hint != NULL && hint != here && gh_green_active(hint)) {
        target = hint;
    }
    if (target == NULL) {
        gh_GreenCoro *step = running_step(st);
        if (step != NULL && step->stepping != NULL && step->stepping != here &&
            gh_green_active(step->stepping)) {
            target = step->stepping;
        }
    }
    if (target == NULL) {
        PyObject *main = gh_green_main();
        if (main == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(main); /* borrowed: the thread's main greenlet lives as long as it */
        target = main != here ? main : NULL;
    }
    if (target == NULL) {
        *nobody = 1;
        if (resumed == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(resumed);
        PyErr_SetString(gh_green_error_type(),
                        "a waiting greenhub greenlet was resumed from outside, and no greenlet "
                        "can take the switch back");
        return NULL;
    }
    int thrown = resumed == NULL;
    PyObject *payload = thrown ? gh_err_get_raised() : PyTuple_Pack(1, resumed);
    Py_XDECREF(resumed);
    if (payload == NULL) {
        return NULL;
    }
    /* Held there, not here.  What was in transit before was delivered long
     * ago; dropping it can run Python code (and let another thread pass
     * something on), so it is dropped first, and nothing runs between the
     * store and the switch, where greenlet takes its own references. */
    while (st->in_transit != NULL) {
        PyObject *old = st->in_transit;
        st->in_transit = NULL;
        Py_DECREF(old);
    }
    st->in_transit = payload;
    PyObject *r = thrown ? gh_green_throw(target, payload) : gh_green_switch_args(target, payload);
    Py_CLEAR(st->in_transit); /* delivered long ago, if it is still there */
    return r;
}

/* The worker greenlets' own switch() and throw(): a virtual thread's
 * greenlet may be switched to by code of its own step (a child greenlet
 * switching back to its parent: SQLAlchemy's greenlet_spawn does), never
 * while it is parked in await_(), idle between steps or idle in the pool,
 * where only the event loop may resume it. */
static int
vthread_greenlet_may_switch(PyObject *g)
{
    PyObject *here = gh_green_current();
    if (here == NULL) {
        return -1;
    }
    Py_DECREF(here);
    if (here == g) {
        return 0; /* a switch to oneself does nothing */
    }
    gh_GreenCoro *w = *worker_owner(g);
    const char *why = NULL;
    if (w == NULL) {
        why = "an idle greenhub worker greenlet";
    }
    else if (w->parked_in != NULL) {
        why = "the greenlet of a virtual thread suspended in greenhub.await_()";
    }
    else if (!w->running) {
        why = "the greenlet of a virtual thread between two steps of its task";
    }
    if (why == NULL) {
        return 0;
    }
    PyErr_Format(gh_green_error_type(),
                 "cannot switch into %s: only its event loop resumes it (to wake a "
                 "virtual thread, complete the future it waits on)",
                 why);
    return -1;
}

static PyObject *
vthread_greenlet_switch(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (vthread_greenlet_may_switch(self) < 0) {
        return NULL;
    }
    return gh_green_base_switch(self, args, kwargs);
}

static PyObject *
vthread_greenlet_throw(PyObject *self, PyObject *args)
{
    if (vthread_greenlet_may_switch(self) < 0) {
        return NULL;
    }
    return gh_green_base_method(self, "throw", args);
}

static PyMethodDef vthread_greenlet_methods[] = {
    {"switch", (PyCFunction)(void (*)(void))vthread_greenlet_switch, METH_VARARGS | METH_KEYWORDS,
     "switch(*args, **kwargs): greenlet.switch, refused while the virtual thread waits."},
    {"throw", vthread_greenlet_throw, METH_VARARGS,
     "throw(...): greenlet.throw, refused while the virtual thread waits."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot vthread_greenlet_slots[] = {
    {Py_tp_doc, "The greenlet of a greenhub virtual thread (a worker that runs task steps).\n\n"
                "A greenlet.greenlet in every respect, except that switch() and throw()\n"
                "refuse (greenlet.error) while its task waits: only the event loop\n"
                "resumes a waiting virtual thread."},
    {Py_tp_dealloc, gh_green_subclass_dealloc},
    {Py_tp_traverse, gh_green_subclass_traverse},
    {Py_tp_clear, gh_green_subclass_clear},
    {Py_tp_finalize, gh_green_subclass_finalize},
    {Py_tp_is_gc, gh_green_subclass_is_gc},
    {Py_tp_methods, vthread_greenlet_methods},
    {0, NULL},
};

PyType_Spec gh_vthread_greenlet_spec = {
    .name = "greenhub._core.VirtualThreadGreenlet",
    .basicsize = 0, /* set by gh_green_subclass() */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = vthread_greenlet_slots,
};

static PyMethodDef worker_main_def = {
    "greenhub_worker",
    worker_main,
    METH_NOARGS,
    "Main function of a greenhub worker greenlet: steps task coroutines.",
};

PyObject *
gh_make_worker_main(PyObject *module)
{
    return PyCFunction_New(&worker_main_def, module);
}

/* --- a step, from the driver's side ---------------------------------------- */

static void
park_unlink(gh_Loop *loop, gh_GreenCoro *w)
{
    if (!w->parked) {
        return;
    }
    if (w->park_prev) {
        w->park_prev->park_next = w->park_next;
    }
    else {
        loop->vt.parked = w->park_next;
    }
    if (w->park_next) {
        w->park_next->park_prev = w->park_prev;
    }
    w->park_prev = w->park_next = NULL;
    w->parked = 0;
    loop->st->parked_coros--;
}

/*
 * Switches to a worker.  greenlet keeps one C stack per thread and copies
 * out (to the heap) whatever part of the stack the greenlet it switches to
 * is going to use.  A greenlet's stack begins where it was first switched
 * to, so a worker started right here would share the region just below the
 * driver's frame: every step would copy a slice of the driver's stack out
 * and back in (a malloc, two memcpy).  A new worker therefore starts
 * WORKER_STACK_GAP bytes further down, below anything the driver uses when
 * it steps tasks.  (The worker's own small slice is still saved when it
 * switches back to the thread's main greenlet, which greenlet must assume
 * may grow to any depth.)
 */
static PyObject *
switch_in(PyObject *target, int fresh)
{
    if (!fresh) {
        return gh_green_switch(target);
    }
    volatile char *gap = alloca(WORKER_STACK_GAP);
    gap[0] = 0;
    PyObject *r = gh_green_switch(target);
    gap[WORKER_STACK_GAP - 1] = 0; /* keep the gap alive across the call */
    return r;
}

static PySendResult
coro_step(gh_GreenCoro *w, PyObject *value, PyObject *exc, PyObject **presult)
{
    gh_Loop *loop = coro_loop(w);
    gh_state *st = loop->st;
    *presult = NULL;
    if (w->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return PYGEN_ERROR;
    }
    if (w->finished) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (st->in_transit != NULL) {
        Py_CLEAR(st->in_transit); /* delivered: see gh_pass_on_resume() */
    }
    unsigned long here = PyThread_get_thread_ident();
    if ((loop->has_thread_id && here != loop->thread_id) ||
        ((w->worker != NULL || w->parked_in != NULL) && here != w->thread_id)) {
        /* Greenlets belong to one thread; greenlet itself would refuse the
         * switch, with a less helpful error. */
        PyErr_SetString(PyExc_RuntimeError,
                        "a greenhub task can only be stepped in the thread that runs its "
                        "event loop; use loop.call_soon_threadsafe() to reach it");
        return PYGEN_ERROR;
    }

    PyObject *target;
    int fresh = 0;
    if (w->parked_in != NULL) {
        target = w->parked_in; /* take the reference */
        w->parked_in = NULL;
        park_unlink(loop, w);
        if (!gh_green_active(target)) {
            /* Dead: a switch cannot kill a parked greenlet (it is passed on,
             * see gh_pass_on_resume()), but greenlet frees those of a thread
             * that is gone; its stack is gone, and the step with it. */
            Py_DECREF(target);
            w->finished = 1;
            PyErr_SetString(PyExc_RuntimeError,
                            "the greenlet of this virtual thread was killed while it waited "
                            "in greenhub.await_()");
            return PYGEN_ERROR;
        }
    }
    else {
        if (w->worker != NULL && gh_green_started(w->worker) && !gh_green_active(w->worker)) {
            /* An idle bound worker killed from outside: bind another one. */
            *worker_owner(w->worker) = NULL;
            Py_CLEAR(w->worker);
            loop->vt.bound_workers--;
        }
        if (w->worker == NULL && bind_worker(st, loop, w) < 0) {
            return PYGEN_ERROR;
        }
        target = Py_NewRef(w->worker);
        fresh = !gh_green_active(target);
        w->handed = 1;
    }
    PyObject *driver = gh_green_current();
    if (driver == NULL) {
        Py_DECREF(target);
        return PYGEN_ERROR;
    }
    assert(w->driver == NULL && w->in_value == NULL && w->in_exc == NULL && w->out == NULL);
    w->in_value = Py_XNewRef(value);
    w->in_exc = Py_XNewRef(exc);
    w->driver = driver;
    w->running = 1;
    w->step_over = 0;
    w->stepping = target;
    w->prev_step = loop->vt.current_step;
    loop->vt.current_step = w;
    Py_INCREF(w); /* alive across the switch, whatever the step does */

    PyObject *r = switch_in(target, fresh);
    while (!w->step_over) {
        /* The loop's greenlet was resumed while the step is away: by the
         * step (a switch up to the main greenlet) or a greenlet it switched
         * to (a child greenlet whose parent is the loop's greenlet
         * finishing).  Pass it on and keep waiting for the step
         * (gh_pass_on_resume). */
        int nobody;
        r = gh_pass_on_resume(st, w->stepping, r, &nobody);
        if (nobody) {
            break; /* give up on the step (below) */
        }
    }
    w->stepping = NULL;
    w->handed = 0; /* not taken if the switch failed */

    Py_DECREF(target);
    loop->vt.current_step = w->prev_step;
    w->prev_step = NULL;
    w->running = 0;
    Py_CLEAR(w->driver);
    Py_CLEAR(w->in_value);
    Py_CLEAR(w->in_exc);
    PySendResult status;
    if (!w->step_over) {
        /* Unreachable in practice (gh_pass_on_resume() found no greenlet
         * to refuse to); the step's outcome is lost, say so. */
        Py_XDECREF(r);
        Py_CLEAR(w->out);
        status = PYGEN_ERROR;
    }
    else if (r == NULL) {
        /* The step's greenlet switched back with an exception instead of
         * an outcome (greenlet cannot switch: a dead stack).  Report it. */
        Py_CLEAR(w->out);
        status = PYGEN_ERROR;
    }
    else {
        Py_DECREF(r);
        status = w->out_status;
        PyObject *out = w->out;
        w->out = NULL;
        /* Before raising: this may call into Python (greenlet attributes). */
        maybe_unbind_worker(loop, w);
        if (status == PYGEN_ERROR) {
            gh_err_set_raised(out);
        }
        else {
            *presult = out;
        }
    }
    Py_DECREF(w);
    return status;
}

void
gh_coro_unpark(gh_GreenCoro *w)
{
    park_unlink(coro_loop(w), w);
    Py_CLEAR(w->parked_in);
}

/* Called by bridge.c: w's step is suspended inside await_() on the current
 * greenlet `here`; record it so send()/throw() resume it there. */
void
gh_coro_park(gh_GreenCoro *w, PyObject *here)
{
    gh_Loop *loop = coro_loop(w);
    assert(!w->parked && w->parked_in == NULL && w->running);
    w->parked_in = Py_NewRef(here);
    w->parked = 1;
    w->park_prev = NULL;
    w->park_next = loop->vt.parked;
    if (loop->vt.parked) {
        loop->vt.parked->park_prev = w;
    }
    loop->vt.parked = w;
    loop->st->parked_coros++;
}

/* --- the coroutine protocol ------------------------------------------------ */

static PySendResult
coro_am_send(PyObject *self, PyObject *arg, PyObject **presult)
{
    return coro_step((gh_GreenCoro *)self, arg, NULL, presult);
}

/* Converts a send-style result into the method-call convention: a yielded
 * value is returned, a returned value raises StopIteration(value). */
static PyObject *
send_result_to_call(PySendResult status, PyObject *res)
{
    if (status == PYGEN_NEXT) {
        return res;
    }
    if (status == PYGEN_RETURN) {
        if (res == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, res);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_StopIteration, exc);
                Py_DECREF(exc);
            }
        }
        Py_DECREF(res);
    }
    return NULL;
}

static PyObject *
coro_send(PyObject *self, PyObject *arg)
{
    PyObject *res;
    PySendResult status = coro_step((gh_GreenCoro *)self, arg, NULL, &res);
    return send_result_to_call(status, res);
}

static PyObject *
coro_iternext(PyObject *self)
{
    PyObject *res;
    PySendResult status = coro_step((gh_GreenCoro *)self, Py_None, NULL, &res);
    if (status == PYGEN_RETURN) {
        /* iternext signals the return value through StopIteration too */
        return send_result_to_call(status, res);
    }
    return status == PYGEN_NEXT ? res : NULL;
}

/* throw(exc) / throw(type[, value[, tb]]), as a coroutine accepts it. */
static PyObject *
coro_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
    PyObject *exc;
    if (nargs == 1 && PyExceptionInstance_Check(args[0])) {
        exc = Py_NewRef(args[0]);
    }
    else if (PyExceptionClass_Check(args[0])) {
        PyObject *val = nargs > 1 ? args[1] : Py_None;
        if (PyExceptionInstance_Check(val)) {
            exc = Py_NewRef(val);
        }
        else {
            exc = val == Py_None ? PyObject_CallNoArgs(args[0]) : PyObject_CallOneArg(args[0], val);
            if (exc == NULL) {
                return NULL;
            }
        }
        if (nargs == 3 && args[2] != Py_None && PyException_SetTraceback(exc, args[2]) < 0) {
            Py_DECREF(exc);
            return NULL;
        }
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
        return NULL;
    }
    PyObject *res;
    PySendResult status = coro_step(w, NULL, exc, &res);
    Py_DECREF(exc);
    return send_result_to_call(status, res);
}

static PyObject *
coro_close(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (w->finished) {
        Py_RETURN_NONE;
    }
    if (w->running) {
        PyErr_SetString(PyExc_ValueError, "coroutine already executing");
        return NULL;
    }
    if (w->parked_in == NULL) {
        /* Suspended at an ordinary await (or never started): nothing is on
         * a greenlet stack, so closing the real coroutine is enough. */
        w->finished = 1;
        return PyObject_CallMethodNoArgs(w->coro, coro_loop(w)->st->str_close);
    }
    /* Suspended inside await_(): unwind the synchronous frames too, by
     * raising GeneratorExit at the await_() call. */
    PyObject *exc = PyObject_CallNoArgs(PyExc_GeneratorExit);
    if (exc == NULL) {
        return NULL;
    }
    PyObject *res;
    PySendResult status = coro_step(w, NULL, exc, &res);
    Py_DECREF(exc);
    if (status == PYGEN_NEXT) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_RuntimeError, "coroutine ignored GeneratorExit");
        return NULL;
    }
    if (status == PYGEN_RETURN) {
        Py_DECREF(res);
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_GeneratorExit) ||
        PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
coro_await(PyObject *self)
{
    return Py_NewRef(self);
}

/* --- object protocol ------------------------------------------------------- */

static PyObject *
coro_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"coro", "loop", NULL};
    PyObject *coro, *loop;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:GreenCoro", kwlist, &coro, &loop)) {
        return NULL;
    }
    gh_state *st = gh_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(loop, st->LoopType)) {
        PyErr_Format(PyExc_TypeError, "GreenCoro needs a greenhub loop, got %R", loop);
        return NULL;
    }
    gh_GreenCoro *w = (gh_GreenCoro *)type->tp_alloc(type, 0);
    if (w == NULL) {
        return NULL;
    }
    w->coro = Py_NewRef(coro);
    w->loop = Py_NewRef(loop);
    st->live_coros++;
    return (PyObject *)w;
}

PyObject *
gh_wrap_coroutine(gh_state *st, PyObject *coro, PyObject *loop)
{
    if (!PyCoro_CheckExact(coro)) {
        /* Other objects asyncio accepts as coroutines (Cython's, the
         * Coroutine ABC) are wrapped too; GreenCoros are not re-wrapped. */
        if (Py_IS_TYPE(coro, st->GreenCoroType)) {
            return Py_NewRef(coro);
        }
        PyObject *yes = PyObject_CallOneArg(st->iscoroutine, coro);
        if (yes == NULL) {
            return NULL;
        }
        int is = PyObject_IsTrue(yes);
        Py_DECREF(yes);
        if (is <= 0) {
            return is < 0 ? NULL : Py_NewRef(coro);
        }
    }
    gh_GreenCoro *w = PyObject_GC_New(gh_GreenCoro, st->GreenCoroType);
    if (w == NULL) {
        return NULL;
    }
    memset((char *)w + sizeof(PyObject), 0, sizeof(*w) - sizeof(PyObject));
    w->coro = Py_NewRef(coro);
    w->loop = Py_NewRef(loop);
    st->live_coros++;
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

static int
coro_traverse(PyObject *self, visitproc visit, void *arg)
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(w->coro);
    Py_VISIT(w->loop);
    Py_VISIT(w->context);
    Py_VISIT(w->worker);
    Py_VISIT(w->parked_in);
    Py_VISIT(w->driver);
    Py_VISIT(w->in_value);
    Py_VISIT(w->in_exc);
    Py_VISIT(w->out);
    Py_VISIT(w->no_switch_block);
    Py_VISIT(w->deferred_cancel);
    return 0;
}

/* Breaks cycles through an idle task.  A running or parked step is left
 * whole: a greenlet stack uses it (and holds a reference the collector
 * cannot see, so it is never found unreachable; see gh_await()).  `loop` is
 * kept: the dealloc reaches the module state through it, and a loop does
 * not refer to an idle task. */
static int
coro_clear(PyObject *self)
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (w->running || w->parked_in != NULL) {
        return 0;
    }
    if (w->worker != NULL) {
        gh_Loop *loop = coro_loop(w);
        w->finished = 1;
        maybe_unbind_worker(loop, w);
        if (w->worker != NULL) {
            loop->vt.bound_workers--;
            *worker_owner(w->worker) = NULL;
            Py_CLEAR(w->worker);
        }
    }
    Py_CLEAR(w->in_value);
    Py_CLEAR(w->in_exc);
    Py_CLEAR(w->out);
    w->finished = 1; /* no coroutine left to step: send() and close() see a finished one */
    Py_CLEAR(w->coro);
    Py_CLEAR(w->context);
    Py_CLEAR(w->no_switch_block);
    Py_CLEAR(w->deferred_cancel);
    return 0;
}

static void
coro_dealloc(PyObject *self)
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (w->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    gh_Loop *loop = coro_loop(w);
    gh_state *st = loop->st;
    if (w->worker != NULL) {
        /* Bound but idle (parked coros cannot reach dealloc: await_ holds
         * them).  Give the worker back, or drop it. */
        w->finished = 1;
        maybe_unbind_worker(loop, w);
        if (w->worker != NULL) { /* kept: someone else observes it */
            loop->vt.bound_workers--;
            *worker_owner(w->worker) = NULL;
            Py_CLEAR(w->worker);
        }
    }
    Py_CLEAR(w->parked_in);
    Py_CLEAR(w->driver);
    Py_CLEAR(w->in_value);
    Py_CLEAR(w->in_exc);
    Py_CLEAR(w->out);
    Py_CLEAR(w->coro);
    Py_CLEAR(w->context);
    Py_CLEAR(w->no_switch_block);
    Py_CLEAR(w->deferred_cancel);
    st->live_coros--;
    Py_CLEAR(w->loop);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
coro_repr(PyObject *self)
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    return w->coro ? PyObject_Repr(w->coro) : PyUnicode_FromString("<GreenCoro (cleared)>");
}

/* Attributes of the real coroutine, so that asyncio's task repr, get_stack()
 * and introspection tools see the user's coroutine. */
static PyObject *
coro_getattro(PyObject *self, PyObject *name)
{
    PyObject *res = PyObject_GenericGetAttr(self, name);
    if (res != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return res;
    }
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (w->coro == NULL || !PyUnicode_Check(name)) {
        return NULL;
    }
    /* Only the coroutine introspection attributes are forwarded. */
    const char *s = PyUnicode_AsUTF8(name);
    if (s == NULL) {
        return NULL;
    }
    if (strncmp(s, "cr_", 3) == 0 || strcmp(s, "__name__") == 0 || strcmp(s, "__qualname__") == 0) {
        PyErr_Clear();
        return PyObject_GetAttr(w->coro, name);
    }
    return NULL;
}

static PyObject *
coro_get_inner(PyObject *self, void *Py_UNUSED(closure))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    return Py_NewRef(w->coro ? w->coro : Py_None);
}

/* The wrapped coroutine, as Task.get_coro() returns its own: None once the
 * GreenCoro was cleared. */
static PyObject *
coro_user_coroutine(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return coro_get_inner(self, NULL);
}

static PyMethodDef coro_getter_def = {
    "get_coro",
    coro_user_coroutine,
    METH_NOARGS,
    "Return the coroutine this task runs.",
};

PyObject *
gh_coro_getter(PyObject *green)
{
    return PyCFunction_New(&coro_getter_def, green);
}

static PyObject *
coro_get_parked(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_GreenCoro *)self)->parked_in != NULL);
}

static PyObject *
coro_get_worker(PyObject *self, void *Py_UNUSED(closure))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    PyObject *g = w->parked_in ? w->parked_in : w->worker;
    return Py_NewRef(g ? g : Py_None);
}

static PyObject *
coro_get_awaiting(PyObject *self, void *Py_UNUSED(closure))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    /* Only while parked is the await_() call - which owns it - suspended. */
    PyObject *a = w->parked_in != NULL ? w->awaiting : NULL;
    return Py_NewRef(a ? a : Py_None);
}

/* _release_worker(): the loop is closing and this task waits at a native
 * await (its worker idle, bound to it): let the worker go now, on the
 * loop's thread, where greenlet can end it - after the thread is gone it
 * could only be freed without running its exit (a leak of its frames). */
static PyObject *
coro_release_worker(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (w->worker == NULL || w->running || w->parked_in != NULL) {
        Py_RETURN_NONE;
    }
    gh_Loop *loop = coro_loop(w);
    PyObject *g = w->worker;
    w->worker = NULL;
    *worker_owner(g) = NULL;
    loop->vt.bound_workers--;
    Py_DECREF(g); /* ends it (GreenletExit) unless someone else holds it */
    Py_RETURN_NONE;
}

static PyMethodDef coro_methods[] = {
    {"_release_worker", coro_release_worker, METH_NOARGS, NULL},
    {"send", coro_send, METH_O, "Run the next step of the task (on its greenlet)."},
    {"throw", (PyCFunction)(void (*)(void))coro_throw, METH_FASTCALL,
     "Raise an exception where the task is suspended (an await or an await_())."},
    {"close", coro_close, METH_NOARGS, "Close the coroutine, unwinding any await_()."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef coro_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(gh_GreenCoro, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* __class__ reports the wrapped coroutine's class, so isinstance(task
 * .get_coro(), types.CoroutineType) and inspect.iscoroutine() hold as for a
 * stock task (isinstance() consults __class__ when type() does not match);
 * type() still tells the truth. */
static PyObject *
coro_get_class(PyObject *self, void *Py_UNUSED(closure))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    return Py_NewRef(w->coro ? (PyObject *)Py_TYPE(w->coro) : (PyObject *)Py_TYPE(self));
}

static PyObject *
coro_get_thread_id(PyObject *self, void *Py_UNUSED(closure))
{
    gh_GreenCoro *w = (gh_GreenCoro *)self;
    if (w->worker == NULL && w->parked_in == NULL) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(w->thread_id);
}

static PyGetSetDef coro_getset[] = {
    {"_thread_id", coro_get_thread_id, NULL,
     "Ident of the thread whose greenlet holds the task's stack, or None.", NULL},
    {"__class__", coro_get_class, NULL, NULL, NULL},
    {"coroutine", coro_get_inner, NULL, "The wrapped coroutine.", NULL},
    {"parked", coro_get_parked, NULL, "True while suspended inside greenhub.await_().", NULL},
    {"greenlet", coro_get_worker, NULL, "The greenlet holding the task's suspended stack, or None.",
     NULL},
    {"awaiting", coro_get_awaiting, NULL,
     "While parked: the awaitable the innermost greenhub.await_() call waits for, else None.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot coro_slots[] = {
    {Py_tp_doc, "GreenCoro(coro, loop): a task's coroutine, stepped on a greenlet.\n\n"
                "greenhub.Loop.create_task() wraps every coroutine in one, which the Task\n"
                "steps; .coroutine is the original coroutine (what task.get_coro() returns)."},
    {Py_tp_new, coro_new},
    {Py_tp_dealloc, coro_dealloc},
    {Py_tp_traverse, coro_traverse},
    {Py_tp_clear, coro_clear},
    {Py_tp_repr, coro_repr},
    {Py_tp_getattro, coro_getattro},
    {Py_tp_iter, coro_await}, /* iter(coro) is itself, as for a generator */
    {Py_tp_iternext, coro_iternext},
    {Py_am_await, coro_await},
    {Py_am_send, coro_am_send},
    {Py_tp_methods, coro_methods},
    {Py_tp_members, coro_members},
    {Py_tp_getset, coro_getset},
    {0, NULL},
};

PyType_Spec gh_greencoro_spec = {
    .name = "greenhub._core.GreenCoro",
    .basicsize = sizeof(gh_GreenCoro),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = coro_slots,
};

/* --- switching out of a step ----------------------------------------------
 *
 * What every way of waiting in sync code ends in (await_() in bridge.c, the
 * deferred waits of defer.c, the fd waits of fd_wait.c and green_sock.c, the
 * C API): finding the step the caller runs in, and parking it.  Here, below
 * those files, so that calls between them point one way. */

int
gh_switch_out(gh_GreenCoro *w, PyObject *yielded, PyObject **value, PyObject **exc)
{
    *value = *exc = NULL;
    gh_state *st = ((gh_Loop *)w->loop)->st;
    PyObject *here = gh_green_current();
    if (here == NULL) {
        Py_DECREF(yielded);
        return -1;
    }
    w->out = yielded; /* the step's outcome owns it now */
    w->out_status = PYGEN_NEXT;
    gh_coro_park(w, here);
    Py_DECREF(here);
    w->step_over = 1;
    PyObject *r = gh_green_switch(w->driver);
    /* coro_step() resumes us after unparking the step, setting in_value /
     * in_exc and becoming the step's driver (w->running).  Anything else is
     * a switch or throw into a parked virtual thread that bypassed its
     * greenlet's switch() - a child greenlet of ours finishing, say: it is
     * passed on (gh_pass_on_resume), and the step stays parked until the
     * Task resumes it. */
    while (!w->running) {
        int nobody;
        r = gh_pass_on_resume(st, NULL, r, &nobody);
        if (nobody) {
            /* No greenlet to give control back to: the wait fails and
             * the stack unwinds (greenlet.error from await_()). */
            gh_coro_unpark(w);
            return -1;
        }
    }
    if (r == NULL) {
        /* Thrown into while being resumed: deliver it as the outcome. */
        *exc = gh_err_get_raised();
        Py_CLEAR(w->in_value);
        Py_CLEAR(w->in_exc);
        return 0;
    }
    Py_DECREF(r);
    *value = w->in_value;
    *exc = w->in_exc;
    w->in_value = w->in_exc = NULL;
    if (*value == NULL && *exc == NULL) {
        *value = Py_NewRef(Py_None);
    }
    return 0;
}

/* The loop's current step, if the caller runs inside it: on the step's
 * greenlet (or one it switched to), not parked in await_() and not already
 * switching back to the driver.  A greenlet.settrace() hook runs on the
 * greenlet a switch goes to, with the step still current: on the loop's
 * greenlet right after the step parked or ended, where a wait must not park
 * the step a second time. */
gh_GreenCoro *
gh_step_here(gh_Loop *loop)
{
    gh_GreenCoro *w = loop->vt.current_step;
    if (w == NULL || w->parked_in != NULL || w->step_over) {
        return NULL;
    }
    return w;
}

/* The task asyncio has current on `loop` (new reference, maybe None), and in
 * *stepping whether it is the Task stepping `w` (its coroutine field is w): 1
 * if so, -1 if it is another task made by a greenhub loop (its coroutine is
 * a GreenCoro), 0 if not.  w may be NULL.
 * It is another task in the eager first step of a task built by
 * asyncio.Task(..., eager_start=True) - directly, or by a task factory that
 * does not go through greenhub - inside w's step: that step runs on w's
 * greenlet but is not w's, and a wait parked there would suspend w's task
 * under the other one, whose Task then leaves a task that is not current.
 * No current task (w stepped by hand, outside any Task) counts as w's. */
PyObject *
gh_step_current_task(gh_state *st, gh_Loop *loop, gh_GreenCoro *w, int *stepping)
{
    PyObject *task = PyObject_CallOneArg(st->current_task, (PyObject *)loop);
    if (task == NULL) {
        return NULL;
    }
    if (task == Py_None) {
        *stepping = w != NULL;
        return task;
    }
    PyObject *coro;
    if (PyObject_TypeCheck(task, (PyTypeObject *)st->tk.stock_task)) {
        coro = st->tk.read_coro_field(st->tk.stock_coro_descr, task, st->tk.stock_task);
    }
    else {
        coro = PyObject_GetAttrString(task, "_coro"); /* a Task written in Python */
        if (coro == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            coro = Py_NewRef(Py_None);
        }
    }
    if (coro == NULL) {
        Py_DECREF(task);
        return NULL;
    }
    *stepping = coro == (PyObject *)w ? 1 : PyObject_TypeCheck(coro, st->GreenCoroType) ? -1 : 0;
    Py_DECREF(coro);
    return task;
}

gh_GreenCoro *
gh_vthread_step(gh_state *st, gh_Loop **loop)
{
    *loop = NULL;
    PyObject *loop_obj = PyObject_CallNoArgs(st->get_running_loop);
    if (loop_obj == NULL) {
        return NULL;
    }
    gh_Loop *l = gh_as_loop(st, loop_obj);
    /* The running loop is referenced by the thread state while it runs. */
    Py_DECREF(loop_obj);
    if (l == NULL) {
        return NULL;
    }
    *loop = l;
    gh_GreenCoro *w = gh_step_here(l);
    if (w == NULL) {
        return NULL;
    }
    int stepping;
    PyObject *task = gh_step_current_task(st, l, w, &stepping);
    if (task == NULL) {
        return NULL;
    }
    Py_DECREF(task);
    return stepping > 0 ? w : NULL; /* another task's eager step: not a virtual thread */
}

int
gh_in_vthread(gh_state *st)
{
    gh_Loop *loop;
    gh_GreenCoro *w = gh_vthread_step(st, &loop);
    if (w == NULL && PyErr_Occurred()) {
        return -1;
    }
    return w != NULL;
}
