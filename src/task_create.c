/*
 * task_create.c - the Task a greenhub loop makes, and what get_coro() reports.
 *
 * Loop.create_task() (below) wraps the coroutine in a GreenCoro (task_step.c)
 * and builds CPython's own asyncio.Task around the wrapper: the Task steps
 * whatever its coroutine field holds, and only the wrapper's send()/throw()
 * move a step onto a greenlet.  That field is also what Task.get_coro()
 * returns, and users, asyncio.graph and debuggers expect the coroutine they
 * passed there (`task.get_coro() is coro`).  Neither the field nor asyncio's
 * get_coro() can change, so greenhub changes the class instead:
 *
 * - Without a task factory, the Task is greenhub._task.Task, a subclass of
 *   asyncio.Task (installed by the Python layer) whose only difference is a
 *   get_coro() that looks through the wrapper.  Its instances cost nothing
 *   more to make; internals read the wrapper through asyncio.Task.get_coro.
 * - asyncio.eager_task_factory is stood in for by the same factory made for
 *   greenhub's Task: the loop's `_task_factory` attribute, which
 *   BaseEventLoop.create_task() calls, reports the stand-in, while
 *   get_task_factory() reports what the user set (loop.c).
 * - Any other factory makes its own Task around the wrapper.  If that is an
 *   asyncio.Task whose class keeps asyncio's get_coro(), an instance
 *   attribute `get_coro` (a callable bound to the wrapper) reports the user's
 *   coroutine: one small dict per task, paid only with such factories.  A
 *   class that defines get_coro() itself is left alone.
 *
 * What cannot change: asyncio.Task.get_coro(task), called on the class, and
 * the Task's `_coro` attribute still give the wrapper (it forwards the
 * cr_* attributes, so asyncio's repr and get_stack() show the user's
 * coroutine), and tools that read the Task's C struct from outside the
 * process (python -m asyncio ps/pstree on 3.14+) find the wrapper, not a
 * coroutine.
 */
#include "task_create.h"

#include "loop.h"
#include "vthread.h"

int
gh_tasks_init(gh_state *st)
{
    st->tk.tasks_module = PyImport_ImportModule("asyncio.tasks");
    if (st->tk.tasks_module == NULL) {
        return -1;
    }
    st->tk.str_Task = PyUnicode_InternFromString("Task");
    st->tk.str_get_coro = PyUnicode_InternFromString("get_coro");
    st->tk.kw_init = Py_BuildValue("(sss)", "loop", "name", "context");
    st->tk.kw_init_eager = Py_BuildValue("(ssss)", "loop", "name", "context", "eager_start");
    if (st->tk.str_Task == NULL || st->tk.str_get_coro == NULL || st->tk.kw_init == NULL ||
        st->tk.kw_init_eager == NULL) {
        return -1;
    }
    /* The Task class as asyncio defines it, before anyone replaces the name. */
    st->tk.stock_task = PyObject_GetAttr(st->tk.tasks_module, st->tk.str_Task);
    if (st->tk.stock_task == NULL) {
        return -1;
    }
    if (!PyType_Check(st->tk.stock_task)) {
        PyErr_SetString(PyExc_TypeError, "asyncio.tasks.Task is not a class");
        return -1;
    }
    /* What the class's get_coro is when a subclass keeps asyncio's. */
    st->tk.stock_get_coro = PyObject_GetAttr(st->tk.stock_task, st->tk.str_get_coro);
    if (st->tk.stock_get_coro == NULL) {
        return -1;
    }
    /* The Task's `_coro` descriptor reads its coroutine field as get_coro()
     * does, but gives None once the Task has dropped the coroutine (an eager
     * task that finished in its first step, 3.12+), where 3.12.0-3.12.1's
     * get_coro() crashes. */
    PyObject *name = PyUnicode_FromString("_coro");
    if (name == NULL) {
        return -1;
    }
    st->tk.stock_coro_descr = PyObject_GetAttr(st->tk.stock_task, name);
    Py_DECREF(name);
    if (st->tk.stock_coro_descr == NULL) {
        return -1;
    }
    st->tk.read_coro_field = PyType_GetSlot(Py_TYPE(st->tk.stock_coro_descr), Py_tp_descr_get);
    if (st->tk.read_coro_field == NULL) {
        PyErr_SetString(PyExc_TypeError, "asyncio.Task._coro is not a descriptor");
        return -1;
    }
    /* asyncio.eager_task_factory exists from 3.12 on. */
    name = PyUnicode_FromString("eager_task_factory");
    if (name == NULL) {
        return -1;
    }
    int found = gh_get_optional_attr(st->tk.tasks_module, name, &st->tk.stock_eager);
    Py_DECREF(name);
    if (found < 0) {
        return -1;
    }
    PyObject *base_loop = NULL;
    PyObject *base_events = PyImport_ImportModule("asyncio.base_events");
    if (base_events != NULL) {
        base_loop = PyObject_GetAttrString(base_events, "BaseEventLoop");
        Py_DECREF(base_events);
    }
    if (base_loop == NULL) {
        return -1;
    }
    st->tk.base_create_task = PyObject_GetAttrString(base_loop, "create_task");
    Py_DECREF(base_loop);
    return st->tk.base_create_task == NULL ? -1 : 0;
}

int
gh_tasks_traverse(gh_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->tk.tasks_module);
    Py_VISIT(st->tk.stock_task);
    Py_VISIT(st->tk.stock_get_coro);
    Py_VISIT(st->tk.stock_coro_descr);
    Py_VISIT(st->tk.stock_eager);
    Py_VISIT(st->tk.green_task);
    Py_VISIT(st->tk.green_eager);
    Py_VISIT(st->tk.base_create_task);
    Py_VISIT(st->tk.kw_init);
    Py_VISIT(st->tk.kw_init_eager);
    Py_VISIT(st->tk.str_Task);
    Py_VISIT(st->tk.str_get_coro);
    return 0;
}

void
gh_tasks_clear(gh_state *st)
{
    Py_CLEAR(st->tk.tasks_module);
    Py_CLEAR(st->tk.stock_task);
    Py_CLEAR(st->tk.stock_get_coro);
    Py_CLEAR(st->tk.stock_coro_descr);
    st->tk.read_coro_field = NULL;
    Py_CLEAR(st->tk.stock_eager);
    Py_CLEAR(st->tk.green_task);
    Py_CLEAR(st->tk.green_eager);
    Py_CLEAR(st->tk.base_create_task);
    Py_CLEAR(st->tk.kw_init);
    Py_CLEAR(st->tk.kw_init_eager);
    Py_CLEAR(st->tk.str_Task);
    Py_CLEAR(st->tk.str_get_coro);
}

PyObject *
gh_task_new(gh_state *st, PyObject *loop, PyObject *coro, PyObject *name, PyObject *context,
            PyObject *eager)
{
    /* Looked up per call, as BaseEventLoop.create_task() does: a program (or
     * a test) may replace asyncio.tasks.Task, and then gets its own class. */
    PyObject *type = PyObject_GetAttr(st->tk.tasks_module, st->tk.str_Task);
    if (type == NULL) {
        return NULL;
    }
    if (type == st->tk.stock_task && st->tk.green_task != NULL) {
        Py_SETREF(type, Py_NewRef(st->tk.green_task));
    }
    PyObject *args[6] = {NULL, coro, loop, name, context, eager};
    PyObject *task = PyObject_Vectorcall(type, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         eager ? st->tk.kw_init_eager : st->tk.kw_init);
    int ours = type == st->tk.green_task;
    Py_DECREF(type);
    if (task != NULL && !ours && gh_task_expose_coro(st, task, coro) < 0) {
        Py_CLEAR(task);
    }
    return task;
}

int
gh_task_expose_coro(gh_state *st, PyObject *task, PyObject *green)
{
    if (!Py_IS_TYPE(green, st->GreenCoroType) ||
        !PyObject_TypeCheck(task, (PyTypeObject *)st->tk.stock_task) ||
        (st->tk.green_task != NULL &&
         PyObject_TypeCheck(task, (PyTypeObject *)st->tk.green_task))) {
        return 0;
    }
    /* Only where asyncio's get_coro() is the one the class uses: a class that
     * defines its own decides what it reports. */
    PyObject *meth = PyObject_GetAttr((PyObject *)Py_TYPE(task), st->tk.str_get_coro);
    if (meth == NULL) {
        return -1;
    }
    int stock = meth == st->tk.stock_get_coro;
    Py_DECREF(meth);
    if (!stock) {
        return 0;
    }
    /* ... and only for a Task that steps the wrapper it was given.  (An eager
     * Task that finished in its first step has already dropped it: its
     * get_coro() gives None, as the stock loop's, and nothing can change that
     * later.) */
    PyObject *held = st->tk.read_coro_field(st->tk.stock_coro_descr, task, st->tk.stock_task);
    if (held == NULL) {
        return -1;
    }
    Py_DECREF(held); /* compared by identity only */
    if (held != green) {
        return 0;
    }
    PyObject *getter = gh_coro_getter(green);
    if (getter == NULL) {
        return -1;
    }
    /* Straight into the instance dict: a __setattr__ of the class is not a
     * party to this. */
    int rc = PyObject_GenericSetAttr(task, st->tk.str_get_coro, getter);
    Py_DECREF(getter);
    if (rc < 0 && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        /* A Task without an instance dict: get_coro() keeps reporting the
         * wrapper, as documented. */
        PyErr_Clear();
        rc = 0;
    }
    return rc;
}

PyObject *
gh_task_factory_to_call(gh_state *st, PyObject *factory)
{
    if (factory == st->tk.stock_eager && factory != NULL && st->tk.green_eager != NULL) {
        return st->tk.green_eager;
    }
    return factory;
}

PyObject *
gh_task_factory_to_store(gh_state *st, PyObject *value)
{
    if (value == st->tk.green_eager && value != NULL && st->tk.stock_eager != NULL) {
        return st->tk.stock_eager;
    }
    return value;
}

PyObject *
gh_install_task_type(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    gh_state *st = (gh_state *)PyModule_GetState(mod);
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_install_task_type(task_type, eager_task_factory)");
        return NULL;
    }
    PyObject *type = args[0], *eager = args[1];
    if (!PyType_Check(type) ||
        !PyType_IsSubtype((PyTypeObject *)type, (PyTypeObject *)st->tk.stock_task)) {
        PyErr_SetString(PyExc_TypeError, "task_type must be a subclass of asyncio.Task");
        return NULL;
    }
    if (eager != Py_None && !PyCallable_Check(eager)) {
        PyErr_SetString(PyExc_TypeError, "eager_task_factory must be callable or None");
        return NULL;
    }
    Py_XSETREF(st->tk.green_task, Py_NewRef(type));
    Py_XSETREF(st->tk.green_eager, eager == Py_None ? NULL : Py_NewRef(eager));
    Py_RETURN_NONE;
}

/* --- Loop.create_task() ------------------------------------------------------ */

/*
 * create_task(coro, *, name=None, context=None) - and on 3.14+ any keyword
 * arguments, which go to the Task (eager_start=).  Every coroutine is wrapped
 * in a GreenCoro so that its steps run on a greenlet (vthread.h).  Without a
 * task factory the Task is made here, as greenhub's Task (task_create.c);
 * otherwise, and for arguments asyncio refuses, asyncio's
 * BaseEventLoop.create_task() does the rest with the wrapped coroutine, so
 * factories, names and errors behave exactly as on the stock loop.  (Made
 * here, in debug mode too, the Task's source traceback ends at the caller as
 * asyncio's does once create_task() deletes its own frame from it.)
 */
PyObject *
gh_loop_create_task(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    gh_Loop *self = (gh_Loop *)op;
    gh_state *st = self->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = Py_None, *context = Py_None, *eager = NULL;
    int fast = nargs == 1 && self->task_factory == NULL;
    for (Py_ssize_t i = 0; fast && kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(key, "name") == 0) {
            name = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(key, "context") == 0) {
            context = args[nargs + i];
        }
#if PY_VERSION_HEX >= 0x030E0000
        /* 3.14's create_task() passes its keyword arguments on to the Task. */
        else if (PyUnicode_CompareWithASCIIString(key, "eager_start") == 0) {
            eager = args[nargs + i];
        }
#endif
        else {
            fast = 0; /* let asyncio report the unexpected argument */
        }
    }
    /* Where the coroutine is: first positional, or create_task(coro=...). */
    Py_ssize_t at = nargs >= 1 ? 0 : -1;
    for (Py_ssize_t i = 0; at < 0 && kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "coro") == 0) {
            at = nargs + i;
        }
    }
    if (at >= 0 && gh_loop_check_closed(self) < 0) {
        return NULL;
    }
    PyObject *coro = at >= 0 ? gh_wrap_coroutine(st, args[at], op) : NULL;
    if (at >= 0 && coro == NULL) {
        return NULL;
    }
    PyObject *res;
    if (fast) {
        res = gh_task_new(st, op, coro, name, context, eager);
    }
    else {
        /* BaseEventLoop.create_task(self, coro, ...) with the same arguments */
        Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
        PyObject **cargs = PyMem_Malloc((total + 2) * sizeof(PyObject *));
        if (cargs == NULL) {
            Py_XDECREF(coro);
            return PyErr_NoMemory();
        }
        cargs[1] = op;
        for (Py_ssize_t i = 0; i < total; i++) {
            cargs[i + 2] = i == at ? coro : args[i];
        }
        res = PyObject_Vectorcall(st->tk.base_create_task, cargs + 1,
                                  (nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
        PyMem_Free(cargs);
        if (res != NULL && at >= 0 && coro != args[at] && gh_task_expose_coro(st, res, coro) < 0) {
            Py_CLEAR(res);
        }
    }
    Py_XDECREF(coro);
    return res;
}
