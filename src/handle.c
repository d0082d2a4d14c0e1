/*
 * handle.c - the Handle and TimerHandle types.  See handle.h.
 */
#include "handle.h"

#include "compat.h"
#include "loop.h"

static inline gh_state *
handle_state(PyObject *self)
{
    return (gh_state *)PyType_GetModuleState(Py_TYPE(self));
}

Py_ssize_t gh_handle_data_offset;

PyObject *
gh_handle_new(gh_state *st, PyTypeObject *tp, PyObject *loop, PyObject *callback,
              PyObject *const *args, Py_ssize_t nargs, PyObject *context)
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

    /* tp_alloc zeroes the object (the base's slots and weak reference
     * list must start NULL) and starts GC tracking. */
    PyObject *h = tp->tp_alloc(tp, 0);
    if (h == NULL) {
        Py_XDECREF(argtuple);
        Py_DECREF(context);
        return NULL;
    }
    gh_handle_data *d = gh_hd(h);
    d->callback = Py_NewRef(callback);
    d->args = argtuple;
    d->context = context;
    d->loop = Py_NewRef(loop);
    st->live_handles++;
    if (tp == st->TimerHandleType) {
        st->live_timers++;
    }
    if (tp == st->ThreadSafeHandleType) {
        d->lock = PyObject_CallNoArgs(st->RLock);
        if (d->lock == NULL) {
            Py_DECREF(h);
            return NULL;
        }
    }
    return h;
}

/* Hands an exception raised by a callback to the loop's exception handler
 * (through the Python layer, which builds asyncio's context dict).  Takes
 * the raised exception from the error indicator. */
static int
report_callback_error(gh_state *st, PyObject *h)
{
    PyObject *exc = gh_err_get_raised();
    if (PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) ||
        PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt) ||
        st->hook_callback_error == NULL) {
        gh_err_set_raised(exc);
        return -1;
    }
    PyObject *res = PyObject_CallFunctionObjArgs(st->hook_callback_error, h, exc, NULL);
    Py_DECREF(exc);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

/* A thread-safe handle's lock: acquire (blocking; the GIL is released while
 * it waits) or release.  Returns -1 with an exception set on failure. */
static int
lock_call(PyObject *lock, const char *what)
{
    PyObject *r = PyObject_CallMethod(lock, what, NULL);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static int handle_run_unlocked(gh_state *st, PyObject *h);

int
gh_handle_run(gh_state *st, PyObject *h)
{
    gh_handle_data *d = gh_hd(h);
    if (d->lock == NULL) {
        return handle_run_unlocked(st, h);
    }
    /* Owned for the call: the callback may cancel the handle (it keeps the
     * lock), but nothing clears it before the handle goes. */
    PyObject *lock = Py_NewRef(d->lock);
    if (lock_call(lock, "acquire") < 0) {
        Py_DECREF(lock);
        return report_callback_error(st, h);
    }
    int rc = d->cancelled ? 0 : handle_run_unlocked(st, h);
    PyObject *exc = rc < 0 ? gh_err_get_raised() : NULL;
    if (lock_call(lock, "release") < 0) {
        /* cannot happen for an RLock this thread holds; reported, not lost */
        PyErr_WriteUnraisable(lock);
    }
    Py_DECREF(lock);
    if (exc != NULL) {
        gh_err_set_raised(exc);
    }
    return rc;
}

static int
handle_run_unlocked(gh_state *st, PyObject *h)
{
    gh_handle_data *d = gh_hd(h);
    PyObject *res;
    if (PyContext_Enter(d->context) < 0) {
        return report_callback_error(st, h);
    }
    if (d->args == NULL) {
        res = PyObject_CallNoArgs(d->callback);
    }
    else {
        res = PyObject_Vectorcall(d->callback, &PyTuple_GET_ITEM(d->args, 0),
                                  PyTuple_GET_SIZE(d->args), NULL);
    }
    if (PyContext_Exit(d->context) < 0) {
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
gh_handle_cancel(PyObject *h)
{
    gh_handle_data *d = gh_hd(h);
    if (d->cancelled) {
        return 0;
    }
    gh_state *st = handle_state(h);
    if (gh_is_timer(st, h)) {
        gh_Loop *l = gh_as_loop(st, d->loop);
        if (l != NULL) {
            gh_loop_timer_cancelled(l, h);
        }
    }
    d->cancelled = 1;
    int debug = loop_is_debug(st, d->loop);
    if (debug < 0) {
        return -1;
    }
    if (debug && d->repr == NULL) {
        /* Keep the callback's description for debug messages that are
         * written after the callback itself has been dropped. */
        PyObject *r = PyObject_Repr(h);
        if (r == NULL) {
            return -1;
        }
        d->repr = r;
    }
    Py_CLEAR(d->callback);
    Py_CLEAR(d->args);
    return 0;
}

/* --- Python-visible methods --------------------------------------------- */

static PyObject *
handle_cancel(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gh_handle_cancel(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_cancelled(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(gh_hd(self)->cancelled);
}

static PyObject *
handle_get_context(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(gh_hd(self)->context);
}

static PyObject *
handle_run_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gh_hd(self)->callback == NULL) {
        /* asyncio would call None and report the TypeError; do the same. */
        PyErr_SetString(PyExc_TypeError, "'NoneType' object is not callable");
        if (report_callback_error(handle_state(self), self) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (gh_handle_run(handle_state(self), self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
handle_repr(PyObject *self)
{
    gh_handle_data *h = gh_hd(self);
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
    gh_handle_data *h = gh_hd(self);
    return Py_NewRef(h->callback ? h->callback : Py_None);
}

static PyObject *
get_args(PyObject *self, void *Py_UNUSED(closure))
{
    gh_handle_data *h = gh_hd(self);
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
    return PyBool_FromLong(gh_hd(self)->cancelled);
}

static PyObject *
get_source_traceback(PyObject *self, void *Py_UNUSED(closure))
{
    gh_handle_data *h = gh_hd(self);
    return Py_NewRef(h->source_traceback ? h->source_traceback : Py_None);
}

static PyObject *
get_repr(PyObject *self, void *Py_UNUSED(closure))
{
    gh_handle_data *h = gh_hd(self);
    return Py_NewRef(h->repr ? h->repr : Py_None);
}

static int
handle_traverse(PyObject *self, visitproc visit, void *arg)
{
    gh_handle_data *h = gh_hd(self);
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(h->callback);
    Py_VISIT(h->args);
    Py_VISIT(h->context);
    Py_VISIT(h->loop);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->repr);
    Py_VISIT(h->when_obj);
    Py_VISIT(h->lock);
    return 0;
}

static int
handle_clear(PyObject *self)
{
    gh_handle_data *h = gh_hd(self);
    Py_CLEAR(h->callback);
    Py_CLEAR(h->args);
    Py_CLEAR(h->context);
    Py_CLEAR(h->loop);
    Py_CLEAR(h->source_traceback);
    Py_CLEAR(h->repr);
    Py_CLEAR(h->when_obj);
    Py_CLEAR(h->lock);
    return 0;
}

static void
handle_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    gh_state *st = gh_state_in_dealloc(tp); /* NULL late in shutdown */
    PyObject_GC_UnTrack(self);
    /* the weak reference list is the base class's __weakref__ slot */
    PyObject_ClearWeakRefs(self);
    handle_clear(self);
    if (st != NULL) {
        st->live_handles--;
        if (tp == st->TimerHandleType) {
            st->live_timers--;
        }
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
get_context_attr(PyObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(gh_hd(self)->context);
}

static PyObject *
get_loop_attr(PyObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(gh_hd(self)->loop);
}

static PyMethodDef handle_methods[] = {
    {"cancel", handle_cancel, METH_NOARGS, "Cancel the call."},
    {"cancelled", handle_cancelled, METH_NOARGS, "Return True if the call was cancelled."},
    {"get_context", handle_get_context, METH_NOARGS,
     "Return the contextvars.Context the callback runs in."},
    {"_run", handle_run_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* Read-only views of the data; they shadow asyncio's (unused) slots. */
// clang-format off
#define HANDLE_GETSETS                                                  \
    {"_callback", get_callback, NULL, NULL, NULL},                      \
    {"_args", get_args, NULL, NULL, NULL},                              \
    {"_cancelled", get_cancelled, NULL, NULL, NULL},                    \
    {"_source_traceback", get_source_traceback, NULL, NULL, NULL},      \
    {"_repr", get_repr, NULL, NULL, NULL},                              \
    {"_context", get_context_attr, NULL, NULL, NULL},                   \
    {"_loop", get_loop_attr, NULL, NULL, NULL}
// clang-format on

static PyGetSetDef handle_getset[] = {
    HANDLE_GETSETS,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_doc, "Object returned by callback registration methods (an asyncio.Handle)."},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {0, NULL},
};

/* --- ThreadSafeHandle -------------------------------------------------- */

/* What call_soon_threadsafe() returns on a Python whose asyncio has
 * events._ThreadSafeHandle (3.14+): cancel() and cancelled() take the
 * handle's RLock, which the loop holds while the callback runs, so another
 * thread that asks blocks until the callback is done, and a cancel() that
 * wins the lock keeps the callback from running. */

static PyObject *
safe_cancel(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gh_hd(self)->lock == NULL) { /* cleared by the GC: nothing runs it any more */
        return handle_cancel(self, NULL);
    }
    PyObject *lock = Py_NewRef(gh_hd(self)->lock);
    if (lock_call(lock, "acquire") < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    int rc = gh_handle_cancel(self);
    PyObject *exc = rc < 0 ? gh_err_get_raised() : NULL;
    int released = lock_call(lock, "release");
    Py_DECREF(lock);
    if (exc != NULL) {
        gh_err_set_raised(exc);
        return NULL;
    }
    if (released < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
safe_cancelled(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    if (gh_hd(self)->lock == NULL) {
        return handle_cancelled(self, NULL);
    }
    PyObject *lock = Py_NewRef(gh_hd(self)->lock);
    if (lock_call(lock, "acquire") < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    int cancelled = gh_hd(self)->cancelled;
    int released = lock_call(lock, "release");
    Py_DECREF(lock);
    return released < 0 ? NULL : PyBool_FromLong(cancelled);
}

static PyObject *
get_lock(PyObject *self, void *Py_UNUSED(closure))
{
    PyObject *lock = gh_hd(self)->lock;
    return Py_NewRef(lock ? lock : Py_None);
}

static PyMethodDef safe_methods[] = {
    {"cancel", safe_cancel, METH_NOARGS, "Cancel the call (waits while it runs)."},
    {"cancelled", safe_cancelled, METH_NOARGS,
     "Return True if the call was cancelled (waits while it runs)."},
    {"get_context", handle_get_context, METH_NOARGS,
     "Return the contextvars.Context the callback runs in."},
    {"_run", handle_run_method, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef safe_getset[] = {
    HANDLE_GETSETS,
    {"_lock", get_lock, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot safe_slots[] = {
    {Py_tp_doc, "Object returned by call_soon_threadsafe() (an asyncio "
                "_ThreadSafeHandle): cancel() and cancelled() wait while the callback runs."},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_methods, safe_methods},
    {Py_tp_getset, safe_getset},
    {0, NULL},
};

/* --- TimerHandle ------------------------------------------------------- */

static PyObject *
timer_when_object(gh_handle_data *t)
{
    return t->when_obj ? Py_NewRef(t->when_obj) : PyFloat_FromDouble(t->when);
}

static PyObject *
timer_when(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return timer_when_object(gh_hd(self));
}

static PyObject *
get_when(PyObject *self, void *Py_UNUSED(closure))
{
    return timer_when_object(gh_hd(self));
}

static PyObject *
get_scheduled(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(gh_hd(self)->scheduled);
}

static Py_hash_t
timer_hash(PyObject *self)
{
    PyObject *when = timer_when_object(gh_hd(self));
    if (when == NULL) {
        return -1;
    }
    Py_hash_t hash = PyObject_Hash(when);
    Py_DECREF(when);
    return hash;
}

/* Is either deadline something other than a plain float (an int, a
 * Fraction, a NaN kept as an object...)?  Then the comparisons below are
 * made on the when() objects, as asyncio's are: a float key rounds (2**53 + 1
 * and 2**53 compare equal as floats, not as ints). */
static inline int
timer_exotic(gh_handle_data *a, gh_handle_data *b)
{
    return a->when_obj != NULL || b->when_obj != NULL;
}

/* `a._when OP b._when`, as an object; a new reference or NULL. */
static PyObject *
when_compare(PyObject *a, PyObject *b, int op)
{
    PyObject *wa = timer_when_object(gh_hd(a));
    PyObject *wb = wa ? timer_when_object(gh_hd(b)) : NULL;
    PyObject *res = wb ? PyObject_RichCompare(wa, wb, op) : NULL;
    Py_XDECREF(wa);
    Py_XDECREF(wb);
    return res;
}

/* `x == y` for asyncio's __eq__, which uses `==` (no identity shortcut:
 * a timer whose deadline is NaN is not equal to itself there either). */
static int
eq_operator(PyObject *x, PyObject *y)
{
    PyObject *r = PyObject_RichCompare(x, y, Py_EQ);
    if (r == NULL) {
        return -1;
    }
    int eq = PyObject_IsTrue(r);
    Py_DECREF(r);
    return eq;
}

/* Equality as asyncio defines it: same deadline, callback, args, state. */
static int
timer_equal(PyObject *a, PyObject *b)
{
    gh_handle_data *da = gh_hd(a), *db = gh_hd(b);
    int eq;
    if (timer_exotic(da, db)) {
        PyObject *r = when_compare(a, b, Py_EQ);
        if (r == NULL) {
            return -1;
        }
        eq = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (eq <= 0) {
            return eq;
        }
    }
    else if (da->when != db->when) {
        return 0;
    }
    PyObject *ca = da->callback ? da->callback : Py_None;
    PyObject *cb = db->callback ? db->callback : Py_None;
    eq = eq_operator(ca, cb);
    if (eq <= 0) {
        return eq;
    }
    PyObject *aa = get_args(a, NULL);
    PyObject *ab = aa ? get_args(b, NULL) : NULL;
    if (ab == NULL) {
        Py_XDECREF(aa);
        return -1;
    }
    eq = eq_operator(aa, ab);
    Py_DECREF(aa);
    Py_DECREF(ab);
    if (eq <= 0) {
        return eq;
    }
    return da->cancelled == db->cancelled;
}

/* Between two greenhub timers; anything else (asyncio.TimerHandle
 * included) is left to the reflected operation, which reads _when.
 * `<` and `>` return what the deadlines' comparison returns, as asyncio's
 * do; `<=` and `>=` are "<, or equal". */
static PyObject *
timer_richcompare(PyObject *self, PyObject *other, int op)
{
    gh_state *st = handle_state(self);
    if (!gh_is_timer(st, other)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    int exotic = timer_exotic(gh_hd(self), gh_hd(other));
    double a = gh_hd(self)->when, b = gh_hd(other)->when;
    int res;
    switch (op) {
    case Py_LT:
    case Py_GT:
        if (exotic) {
            return when_compare(self, other, op);
        }
        return PyBool_FromLong(op == Py_LT ? a < b : a > b);
    case Py_LE:
    case Py_GE:
        if (exotic) {
            PyObject *r = when_compare(self, other, op == Py_LE ? Py_LT : Py_GT);
            if (r == NULL) {
                return NULL;
            }
            res = PyObject_IsTrue(r);
            if (res != 0) {
                return res < 0 ? (Py_DECREF(r), NULL) : r;
            }
            Py_DECREF(r);
        }
        else if (op == Py_LE ? a < b : a > b) {
            Py_RETURN_TRUE;
        }
        res = timer_equal(self, other); /* "or equal" */
        return res < 0 ? NULL : PyBool_FromLong(res);
    case Py_EQ:
        res = timer_equal(self, other);
        return res < 0 ? NULL : PyBool_FromLong(res);
    case Py_NE:
        res = timer_equal(self, other);
        return res < 0 ? NULL : PyBool_FromLong(!res);
    }
    Py_RETURN_NOTIMPLEMENTED;
}

static PyMethodDef timer_methods[] = {
    {"cancel", handle_cancel, METH_NOARGS, "Cancel the call."},
    {"cancelled", handle_cancelled, METH_NOARGS, "Return True if the call was cancelled."},
    {"get_context", handle_get_context, METH_NOARGS,
     "Return the contextvars.Context the callback runs in."},
    {"_run", handle_run_method, METH_NOARGS, NULL},
    {"when", timer_when, METH_NOARGS, "Return the scheduled time, on the loop.time() clock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef timer_getset[] = {
    HANDLE_GETSETS,
    {"_when", get_when, NULL, NULL, NULL},
    {"_scheduled", get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot timer_slots[] = {
    {Py_tp_doc, "Object returned by timed callback registration methods "
                "(an asyncio.TimerHandle)."},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_repr, handle_repr},
    {Py_tp_hash, timer_hash},
    {Py_tp_richcompare, timer_richcompare},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {0, NULL},
};

/* --- the types --------------------------------------------------------- */

static int
add_handle_type(PyObject *mod, const char *name, PyType_Slot *slots, PyObject *base,
                PyTypeObject **out)
{
    PyType_Spec spec = {
        .name = name,
        .basicsize = (int)(gh_handle_data_offset + (Py_ssize_t)sizeof(gh_handle_data)),
        /* Not IMMUTABLETYPE: asyncio's base classes are mutable, and an
         * immutable subclass of a mutable class is refused from 3.14. */
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = slots,
    };
    PyObject *tp = PyType_FromModuleAndSpec(mod, &spec, base);
    if (tp == NULL) {
        return -1;
    }
    *out = (PyTypeObject *)tp; /* the state owns this reference */
    return PyModule_AddObjectRef(mod, strrchr(name, '.') + 1, tp);
}

int
gh_handle_types_init(PyObject *mod, gh_state *st)
{
    PyObject *events = PyImport_ImportModule("asyncio.events");
    if (events == NULL) {
        return -1;
    }
    PyObject *base = PyObject_GetAttrString(events, "Handle");
    PyObject *tbase = base ? PyObject_GetAttrString(events, "TimerHandle") : NULL;
    /* The thread-safe handle is asyncio's from 3.14 (NULL where it has none). */
    PyObject *sbase = NULL;
    PyObject *sname = tbase ? PyUnicode_FromString("_ThreadSafeHandle") : NULL;
    if (sname == NULL || gh_get_optional_attr(events, sname, &sbase) < 0) {
        Py_CLEAR(tbase);
    }
    Py_XDECREF(sname);
    Py_DECREF(events);
    int rc = -1;
    if (tbase == NULL) {
        goto done;
    }
    if (sbase != NULL && !PyType_Check(sbase)) {
        PyErr_SetString(PyExc_TypeError, "asyncio's _ThreadSafeHandle must be a class");
        goto done;
    }
    if (!PyType_Check(base) || !PyType_Check(tbase)) {
        PyErr_SetString(PyExc_TypeError, "asyncio.Handle and TimerHandle must be classes");
        goto done;
    }
    /* Our data goes after the larger of the two base layouts, aligned. */
    Py_ssize_t off = ((PyTypeObject *)base)->tp_basicsize;
    if (((PyTypeObject *)tbase)->tp_basicsize > off) {
        off = ((PyTypeObject *)tbase)->tp_basicsize;
    }
    if (sbase != NULL && ((PyTypeObject *)sbase)->tp_basicsize > off) {
        off = ((PyTypeObject *)sbase)->tp_basicsize;
    }
    off = (off + 15) & ~(Py_ssize_t)15;
    if (gh_handle_data_offset != 0 && gh_handle_data_offset != off) {
        PyErr_SetString(PyExc_ImportError, "asyncio's handle layout changed");
        goto done;
    }
    gh_handle_data_offset = off;
    if (add_handle_type(mod, "greenhub._core.Handle", handle_slots, base, &st->HandleType) < 0 ||
        add_handle_type(mod, "greenhub._core.TimerHandle", timer_slots, tbase,
                        &st->TimerHandleType) < 0) {
        goto done;
    }
    if (sbase != NULL) {
        PyObject *threading = PyImport_ImportModule("threading");
        st->RLock = threading ? PyObject_GetAttrString(threading, "RLock") : NULL;
        Py_XDECREF(threading);
        if (st->RLock == NULL ||
            add_handle_type(mod, "greenhub._core._ThreadSafeHandle", safe_slots, sbase,
                            &st->ThreadSafeHandleType) < 0) {
            goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(base);
    Py_XDECREF(tbase);
    Py_XDECREF(sbase);
    return rc;
}
