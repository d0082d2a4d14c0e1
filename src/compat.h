/*
 * compat.h - small shims so the extension builds on CPython 3.11-3.13 with
 * public API only.
 */
#ifndef GH_COMPAT_H
#define GH_COMPAT_H

#include <Python.h>

/* PyErr_GetRaisedException()/PyErr_SetRaisedException() are 3.12+. */
#if PY_VERSION_HEX < 0x030C0000
static inline PyObject *
gh_err_get_raised(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_DECREF(type);
    Py_XDECREF(tb);
    return value;
}

static inline void
gh_err_set_raised(PyObject *exc)
{
    PyObject *type = Py_NewRef((PyObject *)Py_TYPE(exc));
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(type, exc, tb);
}
#else
#define gh_err_get_raised() PyErr_GetRaisedException()
#define gh_err_set_raised(exc) PyErr_SetRaisedException(exc)
#endif

/* PyObject_GetOptionalAttr() is 3.13+: 1 and *result set if the attribute
 * exists, 0 and *result NULL if not, -1 on other errors. */
static inline int
gh_get_optional_attr(PyObject *obj, PyObject *name, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, result);
#else
    *result = PyObject_GetAttr(obj, name);
    if (*result != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
#endif
}

/* The object a weak reference points to, as a new reference, or NULL
 * (without an exception) if it is gone.  PyWeakref_GetRef() is 3.13+. */
static inline PyObject *
gh_weakref_get(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    return obj == NULL || obj == Py_None ? NULL : Py_NewRef(obj);
#endif
}

#endif /* GH_COMPAT_H */
