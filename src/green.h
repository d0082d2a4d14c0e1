/*
 * green.h - the few greenlet operations greenhub needs.
 *
 * green.c is the only file that includes <greenlet.h> (whose C API lives in
 * a file-static table filled by PyGreenlet_Import()).  Everything else goes
 * through these wrappers.  All of them must be called with the GIL held, on
 * the thread the greenlets belong to.
 */
#ifndef GH_GREEN_H
#define GH_GREEN_H

#include <Python.h>

/* Imports greenlet's C API; -1 with an ImportError set if it is missing. */
int gh_green_import(void);

/* greenlet.getcurrent(): a new reference. */
PyObject *gh_green_current(void);

/* A new, unstarted greenlet that will call run() with no arguments; its
 * parent is `parent` (a greenlet) or the current greenlet if NULL. */
PyObject *gh_green_new(PyObject *run, PyObject *parent);

/* g.switch() with no arguments.  Returns a new reference to what the
 * greenlet that switches back passes (greenhub always passes nothing), or
 * NULL with an exception set if one was thrown into this greenlet. */
PyObject *gh_green_switch(PyObject *g);

/* Is `op` a greenlet? */
int gh_green_check(PyObject *op);

/* Is the greenlet started and not dead? */
int gh_green_active(PyObject *g);

/* Has the greenlet ever started (dead ones too)? */
int gh_green_started(PyObject *g);

/* The thread's main greenlet: a new reference. */
PyObject *gh_green_main(void);

/* A new, unstarted greenlet whose parent is the thread's main greenlet: an
 * instance of `type` (a gh_green_subclass()), or a plain greenlet when type
 * is NULL. */
PyObject *gh_green_new_under_main(PyTypeObject *type, PyObject *run);

/* A heap subclass of greenlet made from `spec` (its basicsize is set here)
 * whose instances carry one pointer-sized C field, gh_green_extra().  The
 * spec's Py_tp_dealloc must be gh_green_subclass_dealloc; its methods may
 * replace greenlet's (the worker greenlets replace switch and throw, see
 * task_step.c). */
PyTypeObject *gh_green_subclass(PyObject *module, PyType_Spec *spec);
void **gh_green_extra(PyObject *g);
void gh_green_subclass_dealloc(PyObject *self);
int gh_green_subclass_traverse(PyObject *self, visitproc visit, void *arg);
int gh_green_subclass_clear(PyObject *self);
void gh_green_subclass_finalize(PyObject *self);
int gh_green_subclass_is_gc(PyObject *self);

/* greenlet's own switch(*args, **kwargs), and any other greenlet method by
 * name called with (g, *args): what a subclass's replacement calls. */
PyObject *gh_green_base_switch(PyObject *g, PyObject *args, PyObject *kwargs);
PyObject *gh_green_base_method(PyObject *g, const char *name, PyObject *args);

/* g.switch(*args) / g.throw(exc): g's pending switch() call returns the
 * arguments or raises exc.  Both are borrowed (greenlet takes its own
 * references for the transfer).  Returns what the greenlet that switches
 * back here passes (NULL with an exception set if it throws). */
PyObject *gh_green_switch_args(PyObject *g, PyObject *args);
PyObject *gh_green_throw(PyObject *g, PyObject *exc);

/* greenlet.error (borrowed). */
PyObject *gh_green_error_type(void);

/* The contextvars.Context a suspended greenlet resumes with (greenlet's
 * gr_context; `attr_name` is the interned "gr_context").  For the current
 * greenlet, get returns the thread's current context object.  */
int gh_green_set_context(PyObject *g, PyObject *attr_name, PyObject *context);
PyObject *gh_green_get_context(PyObject *g, PyObject *attr_name);

/* Can code other than greenhub observe this greenlet?  True when something
 * besides the `own` references greenhub holds refers to it (a child
 * greenlet's parent link, a stored greenlet.getcurrent()), when it has weak
 * references, or when attributes were set on it.  Such a greenlet stays
 * with its task; an unobservable one may serve another task. */
int gh_green_observable(PyObject *g, Py_ssize_t own);

/* Drops attributes user code set on the greenlet (before pooling it). */
void gh_green_clear_attributes(PyObject *g);

/* The GreenletExit exception type (borrowed). */
PyObject *gh_green_exit_type(void);

#endif /* GH_GREEN_H */
