/*
 * green.c - greenlet's C API behind green.h.  The only file that includes
 * <greenlet.h>.
 */
#include "green.h"

#include <greenlet.h>

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
gh_green_new_under_main(PyObject *run)
{
    /* Parent: the thread's main greenlet, found by walking up from the
     * current one.  A worker created while another task's worker runs must
     * not hold that worker alive (a parent link is a strong reference). */
    PyGreenlet *g = PyGreenlet_GetCurrent();
    while (g != NULL) {
        PyGreenlet *parent = PyGreenlet_GetParent(g);
        if (parent == NULL) {
            break;
        }
        Py_DECREF(g);
        g = parent;
    }
    if (g == NULL) {
        return NULL;
    }
    PyObject *res = (PyObject *)PyGreenlet_New(run, g);
    Py_DECREF(g);
    return res;
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
