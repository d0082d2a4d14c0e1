/*
 * handle.c - the Handle and TimerHandle types.  See handle.h.
 */
#include "handle.h"

#include <structmember.h>

#include "compat.h"
#include "loop.h"

static inline gh_state *
handle_state(PyObject *self)
{
    return (gh_state *)PyType_GetModuleState(Py_TYPE(self));
}

gh_Handle *
gh_handle_new(gh_state *st, PyTypeObject *tp, PyObject *loop,
              PyObject *callback, PyObject *const *args, Py_ssize_t nargs,
              PyObject *context)
{
    PyObject *argtuple = NULL;
    if (nargs > 0) {
        argtuple = PyTuple_New(nargs);
        if (argtuple == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyTuple_SET_ITEM(argtuple, i, Py_NewRef(args[i]));
        }
    }
    if (context == NULL || context == Py_None) {
        context = PyContext_CopyCurrent();
        if (context == NULL) {
            Py_XDECREF(argtuple);
            return NULL;
        }
    }
    else {
        Py_INCREF(context);
    }

    gh_Handle *h;
    if (tp == st->TimerHandleType) {
        gh_TimerHandle *t = PyObject_GC_New(gh_TimerHandle, tp);
        if (t != NULL) {
            t->when = 0.;
            t->when_obj = NULL;
            t->scheduled = 0;
            st->live_timers++;
        }
        h = (gh_Handle *)t;
    }
    else {
        h = PyObject_GC_New(gh_Handle, tp);
    }
    if (h == NULL) {
        Py_XDECREF(argtuple);
        Py_DECREF(context);
        return NULL;
    }
    h->callback = Py_NewRef(callback);
    h->args = argtuple;
    h->context = context;
    h->loop = Py_NewRef(loop);
    h->source_traceback = NULL;
    h->repr = NULL;
    h->weakreflist = NULL;
    h->cancelled = 0;
    st->live_handles++;
    PyObject_GC_Track(h);
    return h;
}

/* Hands an exception raised by a callback to the loop's exception handler
 * (through the Python layer, which builds asyncio's context dict).  Takes
 * the raised exception from the error indicator. */
static int
report_callback_error(gh_state *st, gh_Handle *h)
{
    PyObject *exc = gh_err_get_raised();
    if (PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) ||
        PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        st->hook_callback_error == NULL) {
        gh_err_set_raised(exc);
        return -1;
    }
    PyObject *res = PyObject_CallFunctionObjArgs(st->hook_callback_error,
                                                 (PyObject *)h, exc, NULL);
    Py_DECREF(exc);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

int
gh_handle_run(gh_state *st, gh_Handle *h)
{
    PyObject *res;
    if (PyContext_Enter(h->context) < 0) {
        return report_callback_error(st, h);
    }
    if (h->args == NULL) {
        res = PyObject_CallNoArgs(h->callback);
    }
    else {
        res = PyObject_Vectorcall(h->callback, &PyTuple_GET_ITEM(h->args, 0),
                                  PyTuple_GET_SIZE(h->args), NULL);
    }
    if (PyContext_Exit(h->context) < 0) {
        Py_XDECREF(res);
        res = NULL;
    }
    if (res == NULL) {
        return report_callback_error(st, h);
    }
    Py_DECREF(res);
    return 0;
}

static int
loop_is_debug(gh_state *st, PyObject *loop)
{
    gh_Loop *l = gh_as_loop(st, loop);
    if (l != NULL) {
        return l->debug;
    }
    PyObject *res = PyObject_CallMethod(loop, "get_debug", NULL);
    if (res == NULL) {
        return -1;
    }
    int debug = PyObject_IsTrue(res);
    Py_DECREF(res);
    return debug;
}

int
gh_handle_cancel(gh_Handle *h)
{
    if (h->cancelled) {
        return 0;
    }
    gh_state *st = handle_state((PyObject *)h);
    if (gh_is_timer(st, (PyObject *)h)) {
        gh_Loop *l = gh_as_loop(st, h->loop);
        if (l != NULL) {
            gh_loop_timer_cancelled(l, (PyObject *)h);
        }
    }
    h->cancelled = 1;
    int debug = loop_is_debug(st, h->loop);
    if (debug < 0) {
        return -1;
    }
    if (debug && h->repr == NULL) {
        /* Keep the callback's description for debug messages that are
         * written after the callback itself has been dropped. */
        PyObject *r = PyObject_Repr((PyObject *)h);
        if (r == NULL) {
            return -1;
        }
        h->repr = r;
    }
    Py_CLEAR(h->callback);
    Py_CLEAR(h->args);
    return 0;
}

/* --- Python-visible methods --------------------------------------------- */

static PyObject *
handle_cancel(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gh_handle_cancel((gh_Handle *)self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_cancelled(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(((gh_Handle *)self)->cancelled);
}

static PyObject *
handle_get_context(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(((gh_Handle *)self)->context);
}

static PyObject *
handle_run_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    gh_Handle *h = (gh_Handle *)self;
    if (h->callback == NULL) {
        /* asyncio would call None and report the TypeError; do the same. */
        PyErr_SetString(PyExc_TypeError, "'NoneType' object is not callable");
        if (report_callback_error(handle_state(self), h) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (gh_handle_run(handle_state(self), h) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_repr(PyObject *self)
{
    gh_Handle *h = (gh_Handle *)self;
    if (h->repr != NULL) {
        return Py_NewRef(h->repr);
    }
    gh_state *st = handle_state(self);
    if (st->hook_handle_repr == NULL) {
        return PyUnicode_FromFormat("<%s>", Py_TYPE(self)->tp_name);
    }
    return PyObject_CallOneArg(st->hook_handle_repr, self);
}

static PyObject *
get_callback(PyObject *self, void *Py_UNUSED(closure))
{
    gh_Handle *h = (gh_Handle *)self;
    return Py_NewRef(h->callback ? h->callback : Py_None);
}

static PyObject *
get_args(PyObject *self, void *Py_UNUSED(closure))
{
    gh_Handle *h = (gh_Handle *)self;
    if (h->args != NULL) {
        return Py_NewRef(h->args);
    }
    if (h->callback == NULL) {
        Py_RETURN_NONE; /* cancelled: asyncio drops the arguments too */
    }
    return PyTuple_New(0);
}

static PyObject *
get_cancelled(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_Handle *)self)->cancelled);
}

static PyObject *
get_source_traceback(PyObject *self, void *Py_UNUSED(closure))
{
    gh_Handle *h = (gh_Handle *)self;
    return Py_NewRef(h->source_traceback ? h->source_traceback : Py_None);
}

static PyObject *
get_repr(PyObject *self, void *Py_UNUSED(closure))
{
    gh_Handle *h = (gh_Handle *)self;
    return Py_NewRef(h->repr ? h->repr : Py_None);
}

static int
handle_traverse(PyObject *self, visitproc visit, void *arg)
{
    gh_Handle *h = (gh_Handle *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(h->callback);
    Py_VISIT(h->args);
    Py_VISIT(h->context);
    Py_VISIT(h->loop);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->repr);
    return 0;
}

static int
handle_clear(PyObject *self)
{
    gh_Handle *h = (gh_Handle *)self;
    Py_CLEAR(h->callback);
    Py_CLEAR(h->args);
    Py_CLEAR(h->context);
    Py_CLEAR(h->loop);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr);
    return 0;
}

static void
handle_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    gh_state *st = handle_state(self);
    PyObject_GC_UnTrack(self);
    if (((gh_Handle *)self)->weakreflist != NULL) {
        PyObject_ClearWeakRefs(self);
    }
    handle_clear(self);
    st->live_handles--;
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef handle_methods[] = {
    {"cancel", handle_cancel, METH_NOARGS, "Cancel the call."},
    {"cancelled", handle_cancelled, METH_NOARGS, "Return True if the call was cancelled."},
    {"get_context", handle_get_context, METH_NOARGS,
     "Return the contextvars.Context the callback runs in."},
    {"_run", handle_run_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
    {"_context", T_OBJECT, offsetof(gh_Handle, context), READONLY, NULL},
    {"_loop", T_OBJECT, offsetof(gh_Handle, loop), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(gh_Handle, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef handle_getset[] = {
    {"_callback", get_callback, NULL, NULL, NULL},
    {"_args", get_args, NULL, NULL, NULL},
    {"_cancelled", get_cancelled, NULL, NULL, NULL},
    {"_source_traceback", get_source_traceback, NULL, NULL, NULL},
    {"_repr", get_repr, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_doc, "Object returned by callback registration methods."},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, handle_methods},
    {Py_tp_members, handle_members},
    {Py_tp_getset, handle_getset},
    {0, NULL},
};

PyType_Spec gh_handle_spec = {
    .name = "greenhub._core.Handle",
    .basicsize = sizeof(gh_Handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = handle_slots,
};

/* --- TimerHandle ------------------------------------------------------- */

static PyObject *
timer_when_object(gh_TimerHandle *t)
{
    return t->when_obj ? Py_NewRef(t->when_obj) : PyFloat_FromDouble(t->when);
}

static PyObject *
timer_when(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return timer_when_object((gh_TimerHandle *)self);
}

static PyObject *
get_when(PyObject *self, void *Py_UNUSED(closure))
{
    return timer_when_object((gh_TimerHandle *)self);
}

static PyObject *
get_scheduled(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((gh_TimerHandle *)self)->scheduled);
}

static Py_hash_t
timer_hash(PyObject *self)
{
    PyObject *when = timer_when_object((gh_TimerHandle *)self);
    if (when == NULL) {
        return -1;
    }
    Py_hash_t hash = PyObject_Hash(when);
    Py_DECREF(when);
    return hash;
}

/* Equality as asyncio defines it: same deadline, callback, args, state. */
static int
timer_equal(gh_TimerHandle *a, gh_TimerHandle *b)
{
    if (a == b) {
        return 1;
    }
    if (a->when != b->when || a->base.cancelled != b->base.cancelled) {
        return 0;
    }
    PyObject *ca = a->base.callback ? a->base.callback : Py_None;
    PyObject *cb = b->base.callback ? b->base.callback : Py_None;
    int eq = PyObject_RichCompareBool(ca, cb, Py_EQ);
    if (eq <= 0) {
        return eq;
    }
    PyObject *aa = get_args((PyObject *)a, NULL);
    PyObject *ab = aa ? get_args((PyObject *)b, NULL) : NULL;
    if (ab == NULL) {
        Py_XDECREF(aa);
        return -1;
    }
    eq = PyObject_RichCompareBool(aa, ab, Py_EQ);
    Py_DECREF(aa);
    Py_DECREF(ab);
    return eq;
}

static PyObject *
timer_richcompare(PyObject *self, PyObject *other, int op)
{
    gh_state *st = handle_state(self);
    if (!gh_is_timer(st, other)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    gh_TimerHandle *a = (gh_TimerHandle *)self, *b = (gh_TimerHandle *)other;
    int res;
    switch (op) {
    case Py_LT:
        return PyBool_FromLong(a->when < b->when);
    case Py_GT:
        return PyBool_FromLong(a->when > b->when);
    case Py_LE:
    case Py_GE:
        if (op == Py_LE ? a->when < b->when : a->when > b->when) {
            Py_RETURN_TRUE;
        }
        res = timer_equal(a, b); /* "or equal" */
        return res < 0 ? NULL : PyBool_FromLong(res);
    case Py_EQ:
        res = timer_equal(a, b);
        return res < 0 ? NULL : PyBool_FromLong(res);
    case Py_NE:
        res = timer_equal(a, b);
        return res < 0 ? NULL : PyBool_FromLong(!res);
    }
    Py_RETURN_NOTIMPLEMENTED;
}

static int
timer_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(((gh_TimerHandle *)self)->when_obj);
    return handle_traverse(self, visit, arg);
}

static int
timer_clear(PyObject *self)
{
    Py_CLEAR(((gh_TimerHandle *)self)->when_obj);
    return handle_clear(self);
}

static void
timer_dealloc(PyObject *self)
{
    gh_state *st = handle_state(self);
    st->live_timers--;
    PyObject_GC_UnTrack(self);
    Py_CLEAR(((gh_TimerHandle *)self)->when_obj);
    handle_dealloc(self);
}

static PyMethodDef timer_methods[] = {
    {"when", timer_when, METH_NOARGS,
     "Return the scheduled time, on the loop.time() clock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef timer_getset[] = {
    {"_when", get_when, NULL, NULL, NULL},
    {"_scheduled", get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot timer_slots[] = {
    {Py_tp_doc, "Object returned by timed callback registration methods."},
    {Py_tp_dealloc, timer_dealloc},
    {Py_tp_traverse, timer_traverse},
    {Py_tp_clear, timer_clear},
    {Py_tp_hash, timer_hash},
    {Py_tp_richcompare, timer_richcompare},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {0, NULL},
};

PyType_Spec gh_timerhandle_spec = {
    .name = "greenhub._core.TimerHandle",
    .basicsize = sizeof(gh_TimerHandle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timer_slots,
};
