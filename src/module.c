/*
 * module.c - greenhub._core: module state, multi-phase init, and the few
 * module-level functions (counters, hooks from the Python layer).
 */
#include <Python.h>

#include "capi.h"
#include "defer.h"
#include "fd_wait.h"
#include "green.h"
#include "green_sock.h"
#include "handle.h"
#include "loop.h"
#include "reactor.h"
#include "sock.h"
#include "state.h"
#include "switches.h"
#include "task_create.h"
#include "transport.h"
#include "vthread.h"
#include "watchdog.h"

static gh_state *
module_state(PyObject *mod)
{
    return (gh_state *)PyModule_GetState(mod);
}

static PyObject *
debug_counters(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = module_state(mod);
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}", "handles", st->live_handles, "timers",
                         st->live_timers, "loops", st->live_loops, "queued", st->queued_items,
                         "coros", st->live_coros, "workers", st->live_workers, "parked",
                         st->parked_coros, "transport_states", st->live_transport_states);
}

/* _install_hooks(*, handle_repr=, callback_error=, slow_callback=, run_sync=):
 * the Python helpers the C code calls on slow paths (repr, errors in
 * callbacks, debug mode, await_() with no loop).  Each Python module installs
 * the ones it defines when it is imported (greenhub/_loop.py the first three,
 * greenhub/_thread_loop.py run_sync); until then the C code falls back (see
 * each hook's use).  extract_stack, asyncio's own, is installed by
 * module_exec. */
static PyObject *
install_hooks(PyObject *mod, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"handle_repr", "callback_error", "slow_callback", "run_sync", NULL};
    PyObject *hooks[4] = {NULL, NULL, NULL, NULL}; /* borrowed */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:_install_hooks", kwlist, &hooks[0],
                                     &hooks[1], &hooks[2], &hooks[3])) {
        return NULL;
    }
    gh_state *st = module_state(mod);
    PyObject **slots[4] = {&st->hook_handle_repr, &st->hook_callback_error, &st->hook_slow_callback,
                           &st->hook_run_sync};
    for (int i = 0; i < 4; i++) {
        if (hooks[i] != NULL) {
            Py_XSETREF(*slots[i], Py_NewRef(hooks[i])); /* the state owns it */
        }
    }
    Py_RETURN_NONE;
}

/* Called once by greenhub/_watchdog.py, _switches.py and _cancel.py (each
 * passes its own hook) with the Python helpers of the debugging tools and of
 * defer_cancellation(). */
static PyObject *
install_tool_hooks(PyObject *mod, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"watchdog", "log_switch", "deferred_wait", NULL};
    PyObject *watchdog = NULL, *log_switch = NULL, *deferred_wait = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOO:_install_tool_hooks", kwlist, &watchdog,
                                     &log_switch, &deferred_wait)) {
        return NULL;
    }
    gh_state *st = module_state(mod);
    if (watchdog != NULL) {
        Py_XSETREF(st->hook_watchdog, Py_NewRef(watchdog));
    }
    if (log_switch != NULL) {
        Py_XSETREF(st->hook_log_switch, Py_NewRef(log_switch));
    }
    if (deferred_wait != NULL) {
        Py_XSETREF(st->hook_deferred_wait, Py_NewRef(deferred_wait));
    }
    Py_RETURN_NONE;
}

static PyObject *
await_(PyObject *mod, PyObject *awaitable)
{
    return gh_await(module_state(mod), awaitable);
}

static PyObject *
in_vthread(PyObject *mod, PyObject *Py_UNUSED(ignored))
{
    int r = gh_in_vthread(module_state(mod));
    return r < 0 ? NULL : PyBool_FromLong(r);
}

/* Called once by greenhub/socket.py with its socket class (see
 * gh_is_plain_socket). */
static PyObject *
register_green_socket(PyObject *mod, PyObject *cls)
{
    if (!PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)module_state(mod)->tr.socket_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a subclass of socket.socket");
        return NULL;
    }
    Py_XSETREF(module_state(mod)->tr.green_socket_type, Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* _set_worker_base(make_run): from now on, each new worker greenlet runs
 * make_run(run) instead of run, the C function that steps task coroutines.
 * greenhub/_vthread.py sets it once, at import, to put a module-level frame
 * of __main__ under every task's frames (see _worker_run there); it is
 * called once per new worker, which the pool then reuses, so it costs
 * nothing per step.  The state owns make_run. */
static PyObject *
set_worker_base(PyObject *mod, PyObject *make_run)
{
    if (!PyCallable_Check(make_run)) {
        PyErr_Format(PyExc_TypeError, "worker base must be callable, not %.100s",
                     Py_TYPE(make_run)->tp_name);
        return NULL;
    }
    Py_XSETREF(module_state(mod)->worker_base, Py_NewRef(make_run));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"debug_counters", debug_counters, METH_NOARGS,
     "Return live-object counters: handles, timers, loops and queued items.\n\n"
     "All four are zero once every loop is closed and collected."},
    {"await_", await_, METH_O,
     "await_(awaitable) -> result\n\n"
     "Wait for an awaitable from synchronous code and return its result (or raise\n"
     "its exception).  Inside a task on a greenhub loop only that task waits, at\n"
     "any call depth; with no loop running, the awaitable runs to completion on\n"
     "this thread's greenhub loop."},
    {"in_vthread", in_vthread, METH_NOARGS,
     "in_vthread() -> bool\n\n"
     "True if the caller runs inside a task on a greenhub loop running in this\n"
     "thread: there, greenhub.await_() and greenhub's blocking calls suspend only\n"
     "that task.  False anywhere else (no loop, another loop, a loop callback)."},
    {"_register_green_socket", register_green_socket, METH_O, NULL},
    {"_set_worker_base", set_worker_base, METH_O, NULL},
    {"_install_hooks", (PyCFunction)(void (*)(void))install_hooks, METH_VARARGS | METH_KEYWORDS,
     NULL},
    {"_install_task_type", (PyCFunction)(void (*)(void))gh_install_task_type, METH_FASTCALL, NULL},
    {"_install_tool_hooks", (PyCFunction)(void (*)(void))install_tool_hooks,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_watchdog_atexit", gh_watchdog_atexit, METH_NOARGS, NULL},
    {"_after_fork_child", gh_loop_after_fork_child, METH_NOARGS, NULL},
    {"_check_watchdog_threshold", gh_check_watchdog_threshold, METH_O, NULL},
    {"_no_switch_enter", gh_no_switch_enter, METH_O, NULL},
    {"_no_switch_exit", gh_no_switch_exit, METH_O, NULL},
    {"_set_switch_log", gh_set_switch_log, METH_O, NULL},
    {"_defer_enter", gh_defer_enter, METH_NOARGS, NULL},
    {"_defer_exit", gh_defer_exit, METH_O, NULL},
    {"check_switch", gh_check_switch, METH_NOARGS,
     "check_switch()\n\n"
     "Raise greenhub.SwitchError if the caller is a virtual thread inside a\n"
     "greenhub.no_switch() block; for blocking calls whose fast path does not\n"
     "reach greenhub.await_()."},
    {NULL, NULL, 0, NULL},
};

static int
add_type(PyObject *mod, PyType_Spec *spec, PyObject *base, PyTypeObject **slot)
{
    PyObject *tp = PyType_FromModuleAndSpec(mod, spec, base);
    if (tp == NULL) {
        return -1;
    }
    *slot = (PyTypeObject *)tp; /* the state owns this reference */
    return PyModule_AddObjectRef(mod, strrchr(spec->name, '.') + 1, tp);
}

static PyObject *
import_attr(const char *module, const char *name)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *attr = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    return attr;
}

static int
module_exec(PyObject *mod)
{
    gh_state *st = module_state(mod);
    if (add_type(mod, &gh_loop_spec, NULL, &st->LoopType) < 0 ||
        gh_handle_types_init(mod, st) < 0 ||
        add_type(mod, &gh_greencoro_spec, NULL, &st->GreenCoroType) < 0 ||
        add_type(mod, &gh_transport_state_spec, NULL, &st->TransportStateType) < 0 ||
        add_type(mod, &gh_transport_base_spec, NULL, &st->TransportBaseType) < 0 ||
        add_type(mod, &gh_sockdone_spec, NULL, &st->SockDoneType) < 0 ||
        gh_transport_state_init(st) < 0 || gh_sock_state_init(st) < 0 ||
        gh_fd_wait_init(mod, st) < 0 || gh_green_sock_init(mod, st) < 0 || gh_bridge_init(st) < 0 ||
        gh_capi_init(mod) < 0) {
        return -1;
    }
    if (gh_green_import() < 0) {
        return -1;
    }
    st->VThreadGreenletType = gh_green_subclass(mod, &gh_vthread_greenlet_spec);
    if (st->VThreadGreenletType == NULL ||
        PyModule_AddObjectRef(mod, "VirtualThreadGreenlet", (PyObject *)st->VThreadGreenletType) <
            0) {
        return -1;
    }
    st->worker_main = gh_make_worker_main(mod);
    st->get_running_loop = import_attr("asyncio.events", "_get_running_loop");
    st->str_gr_context = PyUnicode_InternFromString("gr_context");
    st->str_throw = PyUnicode_InternFromString("throw");
    st->str_close = PyUnicode_InternFromString("close");
    if (gh_tasks_init(st) < 0) {
        return -1;
    }
    if (st->worker_main == NULL || st->get_running_loop == NULL || st->str_gr_context == NULL ||
        st->str_throw == NULL || st->str_close == NULL) {
        return -1;
    }
    /* Debug mode's source tracebacks: asyncio's own helper, so that the hook
     * needs no Python layer (the other hooks are greenhub's Python code). */
    st->hook_extract_stack = import_attr("asyncio.format_helpers", "extract_stack");
    if (st->hook_extract_stack == NULL) {
        return -1;
    }
    st->current_task = import_attr("asyncio.tasks", "current_task");
    st->CancelledError = import_attr("asyncio.exceptions", "CancelledError");
    st->str_standin = PyUnicode_InternFromString("standin");
    if (st->CancelledError == NULL || st->str_standin == NULL) {
        return -1;
    }
    st->SwitchError = PyErr_NewExceptionWithDoc(
        "greenhub.SwitchError",
        "A virtual thread tried to suspend (greenhub.await_(), a cooperative blocking\n"
        "call, an `await` that waits) inside a greenhub.no_switch() block.",
        PyExc_RuntimeError, NULL);
    if (st->current_task == NULL || st->SwitchError == NULL ||
        PyModule_AddObjectRef(mod, "SwitchError", st->SwitchError) < 0) {
        return -1;
    }
    st->iscoroutine = import_attr("asyncio.coroutines", "iscoroutine");
    /* Python 3.14 deprecated asyncio.iscoroutinefunction() (it warns); the stock
     * loop's call_soon() uses the private function behind it, which 3.14 added. */
#if PY_VERSION_HEX >= 0x030E0000
    st->iscoroutinefunction = import_attr("asyncio.coroutines", "_iscoroutinefunction");
#else
    st->iscoroutinefunction = import_attr("asyncio.coroutines", "iscoroutinefunction");
#endif
    st->str_context = PyUnicode_InternFromString("context");
    st->str_slow_callback_duration = PyUnicode_InternFromString("slow_callback_duration");
    st->str_time = PyUnicode_InternFromString("time");
    if (st->iscoroutine == NULL || st->iscoroutinefunction == NULL || st->str_context == NULL ||
        st->str_slow_callback_duration == NULL || st->str_time == NULL) {
        return -1;
    }
#ifdef GH_DEBUG
    int debug_build = 1;
#else
    int debug_build = 0;
#endif
    if (PyModule_AddIntConstant(mod, "DEBUG_BUILD", debug_build) < 0) {
        return -1;
    }
#ifndef GH_BUILD_FLAGS /* set by setup.py; a build by other means says so */
#define GH_BUILD_FLAGS "unknown (not built by setup.py)"
#endif
    if (PyModule_AddStringConstant(mod, "BUILD_FLAGS", GH_BUILD_FLAGS) < 0) {
        return -1;
    }
    int major, minor;
    gh_reactor_libev_version(&major, &minor);
    PyObject *version = Py_BuildValue("(ii)", major, minor);
    if (version == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(mod, "LIBEV_VERSION", version);
    Py_DECREF(version);
    return rc;
}

static int
module_traverse(PyObject *mod, visitproc visit, void *arg)
{
    gh_state *st = module_state(mod);
    Py_VISIT(st->LoopType);
    Py_VISIT(st->HandleType);
    Py_VISIT(st->TimerHandleType);
    Py_VISIT(st->ThreadSafeHandleType);
    Py_VISIT(st->RLock);
    Py_VISIT(st->GreenCoroType);
    Py_VISIT(st->TransportStateType);
    Py_VISIT(st->TransportBaseType);
    Py_VISIT(st->SockDoneType);
    Py_VISIT(st->VThreadGreenletType);
    Py_VISIT(st->worker_main);
    Py_VISIT(st->worker_base);
    Py_VISIT(st->get_running_loop);
    Py_VISIT(st->hook_run_sync);
    Py_VISIT(st->hook_handle_repr);
    Py_VISIT(st->hook_callback_error);
    Py_VISIT(st->hook_slow_callback);
    Py_VISIT(st->hook_extract_stack);
    Py_VISIT(st->iscoroutine);
    Py_VISIT(st->iscoroutinefunction);
    Py_VISIT(st->hook_watchdog);
    Py_VISIT(st->hook_log_switch);
    Py_VISIT(st->SwitchError);
    Py_VISIT(st->current_task);
    Py_VISIT(st->in_transit);
    Py_VISIT(st->CancelledError);
    Py_VISIT(st->hook_deferred_wait);
    Py_VISIT(st->str_standin);
    Py_VISIT(st->await_probe);
    Py_VISIT(st->str_gr_context);
    Py_VISIT(st->str_throw);
    Py_VISIT(st->str_close);
    Py_VISIT(st->str_context);
    Py_VISIT(st->str_slow_callback_duration);
    Py_VISIT(st->str_time);
    /* Each subsystem visits the part of the state it owns. */
    int rc = gh_transport_state_traverse(st, visit, arg);
    if (rc == 0) {
        rc = gh_tasks_traverse(st, visit, arg);
    }
    if (rc == 0) {
        rc = gh_sock_state_traverse(st, visit, arg);
    }
    if (rc == 0) {
        rc = gh_green_sock_traverse(st, visit, arg);
    }
    if (rc == 0) {
        rc = gh_fd_wait_traverse(st, visit, arg);
    }
    return rc;
}

static int
module_clear(PyObject *mod)
{
    gh_state *st = module_state(mod);
    Py_CLEAR(st->LoopType);
    Py_CLEAR(st->HandleType);
    Py_CLEAR(st->TimerHandleType);
    Py_CLEAR(st->ThreadSafeHandleType);
    Py_CLEAR(st->RLock);
    Py_CLEAR(st->GreenCoroType);
    Py_CLEAR(st->TransportStateType);
    Py_CLEAR(st->TransportBaseType);
    Py_CLEAR(st->SockDoneType);
    Py_CLEAR(st->VThreadGreenletType);
    gh_transport_state_clear(st);
    gh_sock_state_clear(st);
    gh_green_sock_clear(st);
    gh_fd_wait_clear(st);
    gh_tasks_clear(st);
    Py_CLEAR(st->worker_main);
    Py_CLEAR(st->worker_base);
    Py_CLEAR(st->get_running_loop);
    Py_CLEAR(st->await_probe);
    Py_CLEAR(st->hook_run_sync);
    Py_CLEAR(st->str_gr_context);
    Py_CLEAR(st->str_throw);
    Py_CLEAR(st->str_close);
    Py_CLEAR(st->hook_handle_repr);
    Py_CLEAR(st->hook_callback_error);
    Py_CLEAR(st->hook_slow_callback);
    Py_CLEAR(st->hook_extract_stack);
    Py_CLEAR(st->iscoroutine);
    Py_CLEAR(st->iscoroutinefunction);
    Py_CLEAR(st->str_context);
    Py_CLEAR(st->str_slow_callback_duration);
    Py_CLEAR(st->str_time);
    Py_CLEAR(st->hook_watchdog);
    Py_CLEAR(st->hook_log_switch);
    Py_CLEAR(st->SwitchError);
    Py_CLEAR(st->current_task);
    Py_CLEAR(st->in_transit);
    Py_CLEAR(st->CancelledError);
    Py_CLEAR(st->hook_deferred_wait);
    Py_CLEAR(st->str_standin);
    return 0;
}

static void
module_free(void *mod)
{
    module_clear((PyObject *)mod);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyModuleDef gh_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "greenhub._core",
    .m_doc = "greenhub's C core: the event loop's scheduling, timers and reactor.",
    .m_size = sizeof(gh_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&gh_moduledef);
}
