/*
 * capi.c - the C API for extensions: the table greenhub._core exports as the
 * capsule greenhub._core._C_API, described by greenhub/include/greenhub.h
 * (the public header, shipped in the wheel) and docs/guide-c-api.md.
 *
 * Each function is the C twin of a Python entry point and shares its code:
 * in_vthread() is _core.in_vthread() (gh_in_vthread), wait_fd() is
 * _core._wait_fd() (gh_fd_wait in a virtual thread, gh_fd_poll elsewhere),
 * await_() is greenhub.await_() (gh_await).  Only the argument checks are
 * this file's own, since C arguments cannot have the wrong type.
 *
 * Where the state comes from.  The table is one immutable, process-wide C
 * struct holding no Python object, so a pointer to it stays valid in every
 * interpreter, for as long as the process runs: an extension may keep it in
 * a C static, as most do.  The capsule points at the table and owns nothing,
 * so it keeps no module alive (a capsule holding the module would make a
 * cycle the GC cannot see: module -> dict -> capsule -> module).  The
 * functions therefore find the module state at each call: the module
 * `greenhub._core` in the calling interpreter's sys.modules - the instance
 * the greenhub package there uses, and the one whose Loop type the running
 * loop is checked against.  With subinterpreters (each with its own module
 * instance, multi-phase init) the same extension pointer thus works in each;
 * a second instance of the module in one interpreter (someone deleted it
 * from sys.modules and imported it again) is not the one used, as for the
 * Python API.  The call holds a reference to the module while it runs, so
 * code run during a wait cannot free the state under it; a state already
 * cleared (interpreter shutdown) gets RuntimeError.  The lookup is one
 * dictionary lookup per call, small beside any wait.
 */
#include <limits.h>
#include <math.h>

#define GREENHUB_NO_HELPERS /* the table only: this file is the implementation */
#include "../greenhub/include/greenhub.h"

#include "capi.h"
#include "clock.h"
#include "fd_wait.h"
#include "loop.h"
#include "vthread.h"

/* greenhub._core of the calling interpreter: a new reference (the caller
 * keeps it until its state is no longer used), or NULL with an exception.
 * Read from sys.modules directly: PyImport_GetModule() would also check that
 * the module is not being imported (an attribute lookup on its spec), which
 * costs more than the lookup itself, and greenhub._core's state is complete
 * before anything can call this.  PySys_GetObject() rather than
 * PyImport_GetModuleDict(), which aborts once sys.modules is gone (a
 * finalizer running at interpreter shutdown may still call in). */
static PyObject *
current_module(void)
{
    PyObject *name = PyUnicode_FromString("greenhub._core");
    if (name == NULL) {
        return NULL;
    }
    PyObject *modules = PySys_GetObject("modules"); /* borrowed, NULL without error */
    PyObject *mod = modules != NULL && PyDict_Check(modules)
                        ? PyDict_GetItemWithError(modules, name) /* borrowed */
                        : NULL;
    if (mod != NULL) {
        Py_INCREF(mod);
    }
    else if (!PyErr_Occurred()) {
        mod = PyImport_GetModule(name); /* sys.modules is not a dict, or gone: ask import */
        if (mod == NULL && !PyErr_Occurred()) {
            mod = PyImport_Import(name); /* not imported in this interpreter yet */
        }
    }
    Py_DECREF(name);
    if (mod == NULL) {
        return NULL;
    }
    gh_state *st = PyModule_Check(mod) && PyModule_GetDef(mod) == &gh_moduledef
                       ? (gh_state *)PyModule_GetState(mod)
                       : NULL;
    if (st == NULL || st->get_running_loop == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_RuntimeError,
                        "greenhub's C API: greenhub._core is not loaded in this interpreter "
                        "(or is being finalized)");
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}

static int
capi_in_vthread(void)
{
    PyObject *mod = current_module();
    if (mod == NULL) {
        return -1;
    }
    int r = gh_in_vthread((gh_state *)PyModule_GetState(mod));
    Py_DECREF(mod);
    return r;
}

static int
capi_wait_fd(int fd, int events, double timeout)
{
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "Greenhub_WaitFd(): fd must be >= 0, not %d", fd);
        return -1;
    }
    if (events < 1 || events > (GREENHUB_READ | GREENHUB_WRITE)) {
        PyErr_Format(PyExc_ValueError,
                     "Greenhub_WaitFd(): events must be GREENHUB_READ, GREENHUB_WRITE or both, "
                     "not %d",
                     events);
        return -1;
    }
    if (isnan(timeout) || timeout < 0) {
        /* PyErr_Format has no %f: the number goes through a float object. */
        PyObject *t = PyFloat_FromDouble(timeout);
        if (t != NULL) {
            PyErr_Format(PyExc_ValueError,
                         "Greenhub_WaitFd(): timeout must be >= 0 seconds (or GREENHUB_FOREVER), "
                         "not %R",
                         t);
            Py_DECREF(t);
        }
        return -1;
    }
    if (isinf(timeout)) {
        timeout = -1.0; /* gh_fd_wait / gh_fd_poll: no limit */
    }
    PyObject *mod = current_module();
    if (mod == NULL) {
        return -1;
    }
    gh_state *st = (gh_state *)PyModule_GetState(mod);
    gh_Loop *loop;
    gh_GreenCoro *w = gh_vthread_step(st, &loop);
    int ready;
    if (w == NULL && PyErr_Occurred()) {
        ready = -1;
    }
    else if (w != NULL && timeout != 0) {
        /* The step is the loop's current one (borrowed): hold it across
         * the suspension, as gh_fd_wait() asks of its caller. */
        Py_INCREF(w);
        ready =
            gh_fd_wait(loop, w, fd, NULL, events, timeout < 0 ? -1.0 : gh_monotonic() + timeout);
        Py_DECREF(w);
    }
    else {
        ready = gh_fd_poll(fd, events, timeout);
    }
    Py_DECREF(mod);
    return ready;
}

static PyObject *
capi_await(PyObject *awaitable)
{
    if (awaitable == NULL) {
        PyErr_SetString(PyExc_SystemError, "Greenhub_Await(): awaitable is NULL");
        return NULL;
    }
    PyObject *mod = current_module();
    if (mod == NULL) {
        return NULL;
    }
    PyObject *res = gh_await((gh_state *)PyModule_GetState(mod), awaitable);
    Py_DECREF(mod);
    return res;
}

static const Greenhub_CAPI capi_table = {
    .size = sizeof(Greenhub_CAPI),
    .version = GREENHUB_CAPI_VERSION,
    .in_vthread = capi_in_vthread,
    .wait_fd = capi_wait_fd,
    .await_ = capi_await,
};

int
gh_capi_init(PyObject *mod)
{
    /* The capsule's pointer is the static table (never written through:
     * the cast only fits PyCapsule_New's signature); no destructor, no
     * context, no reference to the module (see the top of the file). */
    PyObject *capsule = PyCapsule_New((void *)&capi_table, GREENHUB_CAPSULE_NAME, NULL);
    if (capsule == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(mod, "_C_API", capsule);
    Py_DECREF(capsule);
    return rc;
}
