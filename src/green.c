/*
 * green.c - greenlet's C API behind green.h.  The only file that includes
 * <greenlet.h>.
 */
#include "green.h"

#include <greenlet.h>

#include "compat.h"

int
gh_green_import(void)
{
    PyGreenlet_Import();
    if (_PyGreenlet_API == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError, "greenhub needs greenlet's C API "
                                               "(pip install 'greenlet>=3.0')");
        }
        return -1;
    }
    return 0;
}

PyObject *
gh_green_current(void)
{
    return (PyObject *)PyGreenlet_GetCurrent();
}

PyObject *
gh_green_new(PyObject *run, PyObject *parent)
{
    return (PyObject *)PyGreenlet_New(run, (PyGreenlet *)parent);
}

PyObject *
gh_green_switch(PyObject *g)
{
    return PyGreenlet_Switch((PyGreenlet *)g, NULL, NULL);
}

int
gh_green_check(PyObject *op)
{
    return PyGreenlet_Check(op);
}

int
gh_green_active(PyObject *g)
{
    return PyGreenlet_ACTIVE((PyGreenlet *)g);
}

int
gh_green_started(PyObject *g)
{
    return PyGreenlet_STARTED((PyGreenlet *)g);
}

int
gh_green_set_context(PyObject *g, PyObject *attr_name, PyObject *context)
{
    return PyObject_SetAttr(g, attr_name, context);
}

PyObject *
gh_green_get_context(PyObject *g, PyObject *attr_name)
{
    return PyObject_GetAttr(g, attr_name);
}

PyObject *
gh_green_main(void)
{
    /* Found by walking up from the current greenlet. */
    PyGreenlet *g = PyGreenlet_GetCurrent();
    while (g != NULL) {
        PyGreenlet *parent = PyGreenlet_GetParent(g);
        if (parent == NULL) {
            break;
        }
        Py_DECREF(g);
        g = parent;
    }
    return (PyObject *)g;
}

PyObject *
gh_green_new_under_main(PyTypeObject *type, PyObject *run)
{
    /* Parent: the thread's main greenlet.  A worker created while another
     * task's worker runs must not hold that worker alive (a parent link is
     * a strong reference). */
    PyObject *main = gh_green_main();
    if (main == NULL) {
        return NULL;
    }
    PyObject *res;
    if (type == NULL) {
        res = (PyObject *)PyGreenlet_New(run, (PyGreenlet *)main);
    }
    else {
        /* greenlet(run, parent): a subclass is made by calling it. */
        res = PyObject_CallFunctionObjArgs((PyObject *)type, run, main, NULL);
    }
    Py_DECREF(main);
    return res;
}

/* --- a subclass with one C field ------------------------------------------- */

/* greenlet's instance size: our subclass's field lives right after it. */
static Py_ssize_t extra_offset;

PyTypeObject *
gh_green_subclass(PyObject *module, PyType_Spec *spec)
{
    PyTypeObject *base = &PyGreenlet_Type;
    extra_offset = base->tp_basicsize;
    spec->basicsize = (int)(base->tp_basicsize + sizeof(void *));
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, (PyObject *)base);
}

void **
gh_green_extra(PyObject *g)
{
    return (void **)((char *)g + extra_offset);
}

void
gh_green_subclass_dealloc(PyObject *self)
{
    /* As CPython's subtype_dealloc does for a heap subclass of a static
     * type: the base's dealloc, then the instance's reference to its type
     * (greenlet takes a new one if it resurrects the greenlet). */
    PyTypeObject *tp = Py_TYPE(self);
    PyGreenlet_Type.tp_dealloc(self);
    Py_DECREF(tp);
}

int
gh_green_subclass_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self)); /* a heap type's instances own a reference to it */
    return PyGreenlet_Type.tp_traverse(self, visit, arg);
}

/* The main greenlet g's parent links end at (a new reference): that of g's
 * thread, since a started greenlet's parents all run in its thread. */
static PyObject *
root_of(PyObject *g)
{
    PyGreenlet *p = (PyGreenlet *)Py_NewRef(g); /* owned: walks up the parents */
    for (;;) {
        PyGreenlet *parent = PyGreenlet_GetParent(p);
        if (parent == NULL) {
            return (PyObject *)p;
        }
        Py_SETREF(p, parent);
    }
}

/* Is g's thread the current one (1), another live one (2), or gone (0)? */
static int
thread_of(PyObject *g)
{
    PyObject *root = root_of(g);
    PyObject *main = gh_green_main();
    int res = 1;
    if (main == NULL || root != main) {
        /* greenlet's `dead` is true for the main greenlet of an ended thread. */
        PyObject *dead = PyObject_GetAttrString(root, "dead");
        res = dead == Py_False ? 2 : 0;
        Py_XDECREF(dead);
        PyErr_Clear();
    }
    Py_XDECREF(main);
    Py_DECREF(root);
    return res;
}

/* Started, not finished, not a main greenlet: its stack is saved away. */
static int
suspended(PyObject *self)
{
    PyGreenlet *g = (PyGreenlet *)self;
    return PyGreenlet_STARTED(g) && PyGreenlet_ACTIVE(g) && !PyGreenlet_MAIN(g);
}

void
gh_green_subclass_finalize(PyObject *self)
{
    /* Only the cyclic GC calls this (the dealloc does not), for a greenlet
     * it found unreachable: on CPython 3.15, where greenlet lets the GC
     * collect suspended greenlets, that includes those.  Kill it as its
     * dealloc would, now, while everything it refers to is intact. */
    if (!suspended(self) || thread_of(self) != 1) {
        return;
    }
    PyObject *saved = gh_err_get_raised();
    PyObject *res = PyGreenlet_Throw((PyGreenlet *)self, PyExc_GreenletExit, NULL, NULL);
    if (res == NULL) {
        PyErr_WriteUnraisable(self);
    }
    Py_XDECREF(res);
    if (saved != NULL) {
        gh_err_set_raised(saved);
    }
}

int
gh_green_subclass_clear(PyObject *self)
{
    if (suspended(self) && thread_of(self) != 0) {
        /* Still suspended after its finalizer: another thread's, or it would
         * not die.  greenlet's tp_clear would forget its thread, after which
         * its dealloc no longer throws GreenletExit in but discards the stack
         * unwound.  Left whole, its dealloc kills it (in its own thread) once
         * the cycle that holds it is gone, as on 3.11-3.14, where the GC
         * never looks at a suspended greenlet of a live thread. */
        return 0;
    }
    return PyGreenlet_Type.tp_clear(self);
}

int
gh_green_subclass_is_gc(PyObject *self)
{
    return PyGreenlet_Type.tp_is_gc ? PyGreenlet_Type.tp_is_gc(self) : 1;
}

PyObject *
gh_green_base_switch(PyObject *g, PyObject *args, PyObject *kwargs)
{
    return PyGreenlet_Switch((PyGreenlet *)g, args, kwargs);
}

PyObject *
gh_green_base_method(PyObject *g, const char *name, PyObject *args)
{
    PyObject *meth = PyObject_GetAttrString((PyObject *)&PyGreenlet_Type, name);
    if (meth == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *full = PyTuple_New(n + 1);
    if (full == NULL) {
        Py_DECREF(meth);
        return NULL;
    }
    PyTuple_SET_ITEM(full, 0, Py_NewRef(g));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(full, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    }
    PyObject *res = PyObject_Call(meth, full, NULL);
    Py_DECREF(full);
    Py_DECREF(meth);
    return res;
}

PyObject *
gh_green_switch_args(PyObject *g, PyObject *args)
{
    return PyGreenlet_Switch((PyGreenlet *)g, args, NULL);
}

PyObject *
gh_green_throw(PyObject *g, PyObject *exc)
{
    return PyGreenlet_Throw((PyGreenlet *)g, (PyObject *)Py_TYPE(exc), exc, NULL);
}

PyObject *
gh_green_error_type(void)
{
    return PyExc_GreenletError;
}

int
gh_green_observable(PyObject *g, Py_ssize_t own)
{
    PyGreenlet *pg = (PyGreenlet *)g;
    if (Py_REFCNT(g) > own || pg->weakreflist != NULL) {
        return 1;
    }
    return pg->dict != NULL && PyDict_GET_SIZE(pg->dict) > 0;
}

void
gh_green_clear_attributes(PyObject *g)
{
    PyGreenlet *pg = (PyGreenlet *)g;
    if (pg->dict != NULL) {
        PyDict_Clear(pg->dict);
    }
}

PyObject *
gh_green_exit_type(void)
{
    return PyExc_GreenletExit;
}
