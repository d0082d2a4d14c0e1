/*
 * loop.c - the Loop type: its life cycle (new, traverse, clear, dealloc,
 * _close_core, fork), the attributes shared with asyncio's Python code, and
 * the method table.  It calls each part's functions (the parts are listed in
 * loop.h); the methods themselves live with the concept they belong to:
 * call_soon() & co. and time() in sched.c, the run loop in run.c, the fd
 * watchers in io.c, create_task() in task_create.c, sock_recv() & co. in
 * sock.c, the watchdog in watchdog.c.
 */
#include "loop.h"

#include <assert.h>
#include <structmember.h>

#include "compat.h"
#include "run.h"
#include "sched.h"
#include "task_create.h"

static PyObject *
loop_is_running(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((gh_Loop *)op)->has_thread_id);
}

static PyObject *
loop_is_closed(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((gh_Loop *)op)->closed);
}

static PyObject *
loop_get_debug(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(((gh_Loop *)op)->debug_obj);
}

/* Closes the scheduling core: marks the loop closed and drops every pending
 * callback and timer.  greenhub.Loop.close() does the rest. */
static PyObject *
loop_close_core(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    if (self->has_thread_id) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
        return NULL;
    }
    self->closed = 1;
    /* Virtual threads still suspended inside await_(): unwind their stacks. */
    gh_workers_unwind_parked(self);
    gh_io_close(self);
    gh_writes_clear(self);
    gh_sched_clear(self);
    gh_workers_clear(&self->vt);
    /* The epoll set and wakeup fd go now, as the stock loop closes its
     * selector and self-pipe in close(): a closed loop holds no fd.  Every
     * use of the reactor checks for NULL (a closed loop refuses new work
     * before it gets there). */
    gh_reactor_free(self->reactor);
    self->reactor = NULL;
    Py_RETURN_NONE;
}

/* --- attributes shared with the inherited Python code ------------------- */

static int
set_flag(char *flag, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        return -1;
    }
    *flag = (char)truth;
    return 0;
}

static PyObject *
get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_Loop *)op)->closed);
}

static int
set_closed(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_flag(&((gh_Loop *)op)->closed, value);
}

static PyObject *
get_stopping(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_Loop *)op)->stopping);
}

static int
set_stopping(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    return set_flag(&((gh_Loop *)op)->stopping, value);
}

static PyObject *
get_debug_attr(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((gh_Loop *)op)->debug_obj);
}

static int
set_debug_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (set_flag(&self->debug, value) < 0) {
        return -1;
    }
    Py_SETREF(self->debug_obj, Py_NewRef(value));
    return 0;
}

static PyObject *
get_thread_id(PyObject *op, void *Py_UNUSED(closure))
{
    return Py_NewRef(((gh_Loop *)op)->thread_id_obj);
}

static int
set_thread_id(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _thread_id");
        return -1;
    }
    if (value == Py_None) {
        self->has_thread_id = 0;
    }
    else {
        unsigned long ident = PyLong_AsUnsignedLong(value);
        if (ident == (unsigned long)-1 && PyErr_Occurred()) {
            return -1;
        }
        self->thread_id = ident;
        self->has_thread_id = 1;
    }
    Py_SETREF(self->thread_id_obj, Py_NewRef(value));
    return 0;
}

static PyObject *
get_current_handle(PyObject *op, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    return Py_NewRef(self->current_handle ? self->current_handle : Py_None);
}

static int
set_current_handle(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    Py_XSETREF(self->current_handle, (value && value != Py_None) ? Py_NewRef(value) : NULL);
    return 0;
}

/* `_task_factory` is what BaseEventLoop.create_task() calls, and there
 * asyncio.eager_task_factory stands for the same factory for greenhub's Task
 * (task_create.c); get_task_factory() returns what was set. */
static PyObject *
get_task_factory_attr(PyObject *op, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (self->task_factory == NULL) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(gh_task_factory_to_call(self->st, self->task_factory));
}

static int
set_task_factory_attr(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    PyObject *f = (value && value != Py_None) ? gh_task_factory_to_store(self->st, value) : NULL;
    Py_XSETREF(self->task_factory, Py_XNewRef(f));
    return 0;
}

static PyObject *
loop_get_task_factory(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    return Py_NewRef(self->task_factory ? self->task_factory : Py_None);
}

static PyObject *
get_backend(PyObject *op, void *Py_UNUSED(closure))
{
    gh_reactor *r = ((gh_Loop *)op)->reactor;
    return PyUnicode_FromString(r ? gh_reactor_backend_name(r) : "closed");
}

/* --- type slots ----------------------------------------------------------- */

PyObject *
gh_loop_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = PyModule_GetState(module);
    for (gh_Loop *lp = st->loops; lp != NULL; lp = lp->next_loop) {
        if (lp->reactor != NULL) {
            gh_reactor_after_fork(lp->reactor);
        }
    }
    /* Data socket transports queued for the end of the iteration belongs to
     * the parent, which sends it: the stock loop sent it in write(), before
     * the fork, so the child has none to send.  (Dropping can run Python
     * code that frees loops: find the next loop from the start each time.) */
    for (;;) {
        gh_Loop *lp = st->loops;
        while (lp != NULL && !gh_writes_pending(&lp->writes)) {
            lp = lp->next_loop;
        }
        if (lp == NULL) {
            break;
        }
        gh_writes_clear(lp);
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    gh_state *st = gh_state_from_type(type);
    if (st == NULL) {
        return NULL;
    }
    /* What can fail is done before the object exists: a Loop freed here would run
     * the Python subclass's __del__ (BaseEventLoop.__del__ -> close()) on an object
     * whose __init__ never ran. */
    double wd_threshold;
    if (gh_watchdog_env_threshold(&wd_threshold) < 0) {
        return NULL;
    }
    gh_reactor *reactor = gh_reactor_new();
    if (reactor == NULL) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    gh_Loop *self = (gh_Loop *)type->tp_alloc(type, 0);
    if (self == NULL) {
        gh_reactor_free(reactor);
        return NULL;
    }
    /* tp_alloc zeroed the struct; set what is not zero. */
    self->st = st;
    self->module = PyType_GetModuleByDef(type, &gh_moduledef); /* borrowed: found above */
    Py_INCREF(self->module);
    self->debug_obj = Py_NewRef(Py_False);
    self->thread_id_obj = Py_NewRef(Py_None);
    st->live_loops++;
    self->next_loop = st->loops;
    if (st->loops != NULL) {
        st->loops->prev_loop = self;
    }
    st->loops = self;
    self->reactor = reactor; /* owned: freed by dealloc */
    gh_reactor_set_blocking_hooks(self->reactor, gh_run_release_gil, gh_run_acquire_gil, self);
    gh_reactor_set_io_callback(self->reactor, gh_io_ready, self);
    self->watch.threshold = wd_threshold;
    return (PyObject *)self;
}

/* tp_traverse and tp_clear: the loop's own references, then each part's. */
static int
loop_traverse(PyObject *op, visitproc visit, void *arg)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->module);
    Py_VISIT(self->debug_obj);
    Py_VISIT(self->thread_id_obj);
    Py_VISIT(self->current_handle);
    Py_VISIT(self->task_factory);
    int rc;
    if ((rc = gh_sched_traverse(self, visit, arg)) != 0 ||
        (rc = gh_io_traverse(&self->io, visit, arg)) != 0 ||
        (rc = gh_fd_waits_traverse(&self->fdw, visit, arg)) != 0 ||
        (rc = gh_sock_waits_traverse(&self->sockw, visit, arg)) != 0 ||
        (rc = gh_writes_traverse(&self->writes, visit, arg)) != 0 ||
        (rc = gh_workers_traverse(&self->vt, visit, arg)) != 0 ||
        (rc = gh_watch_traverse(&self->watch, visit, arg)) != 0) {
        return rc;
    }
    return 0;
}

static int
loop_clear(PyObject *op)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_io_clear(self);
    gh_writes_clear(self);
    gh_sched_clear(self);
    gh_sock_waits_clear(&self->sockw);
    gh_fd_waits_clear(&self->fdw);
    Py_CLEAR(self->current_handle);
    Py_CLEAR(self->task_factory);
    gh_watch_clear(&self->watch);
    gh_workers_clear(&self->vt);
    return 0;
}

static void
loop_dealloc(PyObject *op)
{
    gh_Loop *self = (gh_Loop *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    assert(self->watch.running == NULL); /* joined before _run() returned */
    loop_clear(op);
    Py_CLEAR(self->debug_obj);
    Py_CLEAR(self->thread_id_obj);
    gh_sched_free(self);
    gh_reactor_free(self->reactor);
    self->reactor = NULL;
    self->st->live_loops--;
    if (self->prev_loop != NULL) {
        self->prev_loop->next_loop = self->next_loop;
    }
    else if (self->st->loops == self) {
        self->st->loops = self->next_loop;
    }
    if (self->next_loop != NULL) {
        self->next_loop->prev_loop = self->prev_loop;
    }
    PyObject *module = self->module;
    tp->tp_free(op);
    Py_DECREF(tp);
    Py_XDECREF(module); /* last: the state may go with it */
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))gh_loop_call_soon, FASTKW,
     "call_soon(callback, *args, context=None) -> Handle\n\n"
     "Arrange for callback(*args) to be called soon, in FIFO order."},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))gh_loop_call_soon_threadsafe, FASTKW,
     "Like call_soon(), but callable from any thread; wakes the loop."},
    {"call_later", (PyCFunction)(void (*)(void))gh_loop_call_later, FASTKW,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"call_at", (PyCFunction)(void (*)(void))gh_loop_call_at_method, FASTKW,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"create_task", (PyCFunction)(void (*)(void))gh_loop_create_task, FASTKW,
     "create_task(coro, *, name=None, context=None) -> Task\n\n"
     "Schedule a coroutine as an asyncio Task whose steps run on a greenlet, so\n"
     "synchronous code under it can call greenhub.await_().  task.get_coro() is\n"
     "`coro`; the Task steps it through a GreenCoro wrapper."},
    {"get_task_factory", loop_get_task_factory, METH_NOARGS,
     "Return the task factory set by set_task_factory(), or None."},
    {"time", gh_loop_time, METH_NOARGS,
     "Return the loop's time: time.monotonic()'s clock, in seconds."},
    {"stop", gh_loop_stop, METH_NOARGS, "Stop running once the current iteration ends."},
    {"is_running", loop_is_running, METH_NOARGS, "Return True if the loop is running."},
    {"is_closed", loop_is_closed, METH_NOARGS, "Return True if the loop was closed."},
    {"get_debug", loop_get_debug, METH_NOARGS, "Return the debug mode setting."},
    {"_run", gh_loop_run, METH_NOARGS, NULL},
    {"set_watchdog", (PyCFunction)(void (*)(void))gh_loop_set_watchdog, FASTKW,
     "set_watchdog(threshold, *, handler=None)\n\n"
     "Report any callback or task step that holds the loop for more than `threshold`\n"
     "seconds, with its stack at that time (a native thread watches the loop).\n"
     "The report goes to handler(loop, context) if given, else to the loop's\n"
     "exception handler.  set_watchdog(None) turns it off (the default)."},
    {"get_watchdog", gh_loop_get_watchdog, METH_NOARGS,
     "Return the watchdog's threshold in seconds, or None when it is off."},
    {"_run_once", gh_loop_run_once, METH_NOARGS, NULL},
    {"_close_core", loop_close_core, METH_NOARGS, NULL},
    {"_check_closed", gh_loop_check_closed_method, METH_NOARGS, NULL},
    {"_check_thread", gh_loop_check_thread_method, METH_NOARGS, NULL},
    {"_check_callback", (PyCFunction)(void (*)(void))gh_loop_check_callback_method, METH_FASTCALL,
     NULL},
    {"_write_to_self", gh_loop_write_to_self, METH_NOARGS, NULL},
    {"_parked_coros", gh_loop_parked_coros, METH_NOARGS, NULL},
    {"_add_reader", (PyCFunction)(void (*)(void))gh_loop_add_reader, METH_FASTCALL | METH_KEYWORDS,
     "_add_reader(fd, callback, *args) -> Handle: run callback(*args) while fd is readable.\n"
     "From Python 3.15, context=None: the contextvars.Context callback runs in."},
    {"_add_writer", (PyCFunction)(void (*)(void))gh_loop_add_writer, METH_FASTCALL | METH_KEYWORDS,
     "_add_writer(fd, callback, *args) -> Handle: run callback(*args) while fd is writable.\n"
     "From Python 3.15, context=None: the contextvars.Context callback runs in."},
    {"_io_watchers", gh_loop_io_watchers, METH_NOARGS,
     "_io_watchers() -> {fd: events}: what the loop watches (selectors' EVENT_* masks)."},
    {"_remove_reader", gh_loop_remove_reader, METH_O,
     "Stop watching fd for reading; return True if a reader was registered."},
    {"_remove_writer", gh_loop_remove_writer, METH_O,
     "Stop watching fd for writing; return True if a writer was registered."},
    {"_timer_handle_cancelled", gh_loop_timer_handle_cancelled, METH_O, NULL},
    {"_gh_sock_recv", (PyCFunction)(void (*)(void))gh_loop_sock_recv, METH_FASTCALL,
     "_gh_sock_recv(sock, n) -> bytes, a Future, or None: use asyncio's sock_recv()."},
    {"_gh_sock_recv_into", (PyCFunction)(void (*)(void))gh_loop_sock_recv_into, METH_FASTCALL,
     "_gh_sock_recv_into(sock, buf) -> int, a Future, or None: use asyncio's."},
    {"_gh_sock_send", (PyCFunction)(void (*)(void))gh_loop_sock_send, METH_FASTCALL,
     "_gh_sock_send(sock, data) -> bytes sent by one send(), or None: use asyncio's."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loop_getset[] = {
    {"_closed", get_closed, set_closed, NULL, NULL},
    {"_stopping", get_stopping, set_stopping, NULL, NULL},
    {"_debug", get_debug_attr, set_debug_attr, NULL, NULL},
    {"_thread_id", get_thread_id, set_thread_id, NULL, NULL},
    {"_current_handle", get_current_handle, set_current_handle, NULL, NULL},
    {"_task_factory", get_task_factory_attr, set_task_factory_attr, NULL, NULL},
    {"_backend", get_backend, NULL, NULL, NULL},
    {"_io_trace", gh_loop_get_io_trace, gh_loop_set_io_trace,
     "None, or a list to which each poll appends the fds it reports, in the order their "
     "handles are queued (tests/fuzz_loop.py)",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_doc, "The C scheduling core of greenhub.Loop; use greenhub.Loop."},
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getset},
    {0, NULL},
};

PyType_Spec gh_loop_spec = {
    .name = "greenhub._core.Loop",
    .basicsize = sizeof(gh_Loop),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = loop_slots,
};
