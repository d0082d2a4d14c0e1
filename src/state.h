/*
 * state.h - the module state: the one struct that holds every Python object
 * the C code needs (types, interned strings, hooks into the Python layer)
 * and the live-object counters.  No C globals hold Python objects.
 */
#ifndef GH_STATE_H
#define GH_STATE_H

#include <Python.h>

#include "compat.h"

/* asyncio's max_size for one read of a socket transport. */
#define GH_RBUF_SIZE (256 * 1024)

/* The Loop object (loop.h); declared here so that each subsystem's header
 * can name it without including loop.h, which includes those headers. */
typedef struct gh_Loop_s gh_Loop;

typedef struct {
    /* Heap types made by module.c; each field owns a reference. */
    PyTypeObject *LoopType;
    PyTypeObject *HandleType;
    PyTypeObject *TimerHandleType;
    /* What call_soon_threadsafe() returns where asyncio has a thread-safe handle
     * (events._ThreadSafeHandle, 3.14+), else NULL (it returns a Handle then). */
    PyTypeObject *ThreadSafeHandleType;
    PyObject *RLock; /* owned: threading.RLock, for those handles' locks */
    PyTypeObject *GreenCoroType;
    PyTypeObject *TransportStateType;  /* transport.c */
    PyTypeObject *TransportBaseType;   /* transport.c */
    PyTypeObject *SockDoneType;        /* sock.c */
    PyTypeObject *VThreadGreenletType; /* task_step.c: the workers' greenlet subclass */
    PyObject *worker_main;             /* owned: the C function that steps task coroutines */
    PyObject *worker_base; /* owned or NULL: make_run(worker_main) -> what a new worker greenlet
                              runs (_core._set_worker_base; greenhub/_vthread.py) */
    PyObject *in_transit;  /* owned or NULL: what gh_pass_on_resume() passes on (task_step.c) */

    /* Hooks into the Python layer, installed through _core._install_hooks()
     * by the module that defines each (greenhub/_loop.py, _thread_loop.py;
     * extract_stack by module_exec); each owns a reference, NULL until then.
     * They run only on slow paths (repr, errors, debug mode). */
    PyObject *hook_handle_repr;    /* (handle) -> str */
    PyObject *hook_callback_error; /* (handle, exc) -> None: exception handler */
    PyObject *hook_slow_callback;  /* (handle, seconds) -> None: debug warning */
    PyObject *hook_extract_stack;  /* (frame) -> StackSummary: debug tracebacks */
    PyObject *hook_run_sync;       /* (awaitable) -> result: await_() with no loop */

    /* Hooks of the debugging tools (greenhub/_watchdog.py, _switches.py),
     * installed through _core._install_tool_hooks(); owned, NULL until then. */
    PyObject *hook_watchdog;       /* (loop, task, handle, stack, since, threshold, handler) */
    PyObject *hook_log_switch;     /* (awaitable, yielded) -> None: the switch log */
    PyObject *hook_deferred_wait;  /* (yielded) -> _DeferredWait or None (defer.c) */
    PyObject *SwitchError;         /* owned: greenhub.SwitchError */
    PyObject *current_task;        /* owned: asyncio.current_task */
    PyObject *CancelledError;      /* owned: asyncio.CancelledError */
    struct gh_watchdog *watchdogs; /* borrowed: running watchdogs (watchdog.c) */
    struct gh_Loop_s *loops;       /* borrowed: every live loop (loop.c), linked */
    char wd_exiting;               /* the interpreter is exiting: no new watchdog */
    char log_switches;             /* set_switch_log(True): gh_await calls hook_log_switch */

    /* From asyncio.coroutines; owned.  Used only off the fast paths. */
    PyObject *iscoroutine;
    PyObject *iscoroutinefunction;
    PyObject *get_running_loop; /* asyncio.events._get_running_loop */

    /* Making Tasks (task_create.c); each owns a reference, or is NULL where
     * noted. */
    struct {
        PyObject *tasks_module;     /* asyncio.tasks: Task is looked up per call, as asyncio does */
        PyObject *stock_task;       /* asyncio.tasks.Task as imported: the C Task */
        PyObject *stock_get_coro;   /* its get_coro (a subclass may keep it) */
        PyObject *stock_coro_descr; /* its `_coro` descriptor: reads the coroutine field */
        descrgetfunc read_coro_field; /* ... through this slot of its type (borrowed) */
        PyObject *stock_eager;        /* asyncio.eager_task_factory; NULL before 3.12 */
        PyObject *green_task;         /* greenhub._task.Task; NULL until installed */
        PyObject *green_eager;        /* the eager factory for it; NULL until installed */
        PyObject *base_create_task;   /* asyncio.BaseEventLoop.create_task */
        PyObject *kw_init;            /* ("loop", "name", "context") */
        PyObject *kw_init_eager;      /* ("loop", "name", "context", "eager_start") */
        PyObject *str_Task, *str_get_coro;
    } tk;
    PyObject *await_probe; /* owned: `async def (x): await x` (bridge.c) */

    /* Interned strings; owned. */
    PyObject *str_context;
    PyObject *str_slow_callback_duration;
    PyObject *str_gr_context;
    PyObject *str_throw;
    PyObject *str_close;
    PyObject *str_time;
    PyObject *str_standin;

    /* The socket transport's hot paths (transport.c); each owns a
     * reference: names they look up, and what the fallbacks call. */
    struct {
        PyObject *socket_type;       /* socket.socket: only it gets the C paths ... */
        PyObject *green_socket_type; /* ... and greenhub.socket.socket once registered
                                      * (greenhub/socket.py), else NULL: the same fd
                                      * behaviour, so monkey-patched programs keep them */
        PyObject *stock_write;       /* asyncio's _SelectorSocketTransport.write */
        PyObject *stock_data_received, *stock_get_buffer; /* ... and its read paths */
        PyObject *state;                                  /* "_gh_state" */
        PyObject *fileno, *max_size, *data_received, *get_buffer, *buffer_updated;
        PyObject *fatal_error, *on_eof, *recv_into;
    } tr;
    char *rbuf; /* PyMem, GH_RBUF_SIZE: what reads go through (GIL-protected) */

    /* sock.c's names; each owns a reference. */
    struct {
        PyObject *future_type; /* asyncio.Future */
        PyObject *kw_loop;     /* ("loop",) */
        PyObject *gettimeout, *transports, *data, *recv, *recv_into;
        PyObject *done, *set_result, *set_exception, *add_done_callback;
    } sk;

    /* The green waits' names: green_sock.c's (timeout_attr) and fd_wait.c's
     * (the rest); each owns a reference. */
    struct {
        PyObject *timeout_attr;    /* "_gh_timeout" */
        PyObject *future_blocking; /* "_asyncio_future_blocking" */
        PyObject *result;          /* "result" */
        PyObject *context;         /* the Context the wait Handles run in */
    } gs;

    /* Live-object counters, checked by the tests (debug_counters()).  Plain
     * integers: every change happens with the GIL held. */
    Py_ssize_t live_handles;          /* Handle and TimerHandle objects */
    Py_ssize_t live_timers;           /* TimerHandle objects */
    Py_ssize_t live_loops;            /* Loop objects */
    Py_ssize_t queued_items;          /* references held by ready and timer queues */
    Py_ssize_t live_coros;            /* GreenCoro objects */
    Py_ssize_t live_workers;          /* worker greenlets that have not died */
    Py_ssize_t parked_coros;          /* coros suspended inside await_() */
    Py_ssize_t live_transport_states; /* TransportState objects (socket transports) */
} gh_state;

extern PyModuleDef gh_moduledef;

static inline gh_state *
gh_state_from_type(PyTypeObject *tp)
{
    /* Works for subclasses too: finds the module of our defining base. */
    PyObject *mod = PyType_GetModuleByDef(tp, &gh_moduledef);
    return mod ? (gh_state *)PyModule_GetState(mod) : NULL;
}

/* The module state for a dealloc function, or NULL once it is gone.  At
 * interpreter shutdown the last garbage collection may clear a type (and with
 * it the type's reference to our module) before the type's last instance is
 * deallocated; counters kept in the state are then skipped.  Never leaves an
 * exception set, and keeps one that is in flight. */
static inline gh_state *
gh_state_in_dealloc(PyTypeObject *tp)
{
    PyObject *exc = PyErr_Occurred() ? gh_err_get_raised() : NULL;
    PyObject *mod = PyType_GetModule(tp); /* `tp` is one of ours: no subclasses */
    if (mod == NULL) {
        PyErr_Clear();
    }
    if (exc != NULL) {
        gh_err_set_raised(exc);
    }
    return mod ? (gh_state *)PyModule_GetState(mod) : NULL;
}

#endif /* GH_STATE_H */
