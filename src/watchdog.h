/*
 * watchdog.h - reports a callback or task step that holds the loop too long.
 * See watchdog.c.
 */
#ifndef GH_WATCHDOG_H
#define GH_WATCHDOG_H

#include <Python.h>

#include "loop.h"

/* _run() starts: records the running thread and starts the watchdog thread
 * if one is configured.  -1 with an exception set if it cannot start. */
int gh_watchdog_run_begin(gh_Loop *loop);

/* _run() ends (also on error; keeps a pending exception): stops and joins
 * the watchdog thread, releasing the GIL while it waits. */
void gh_watchdog_run_end(gh_Loop *loop);

/* The threshold the GREENHUB_WATCHDOG environment variable sets for a new loop
 * (0: off).  -1 with ValueError if it is not a number of seconds. */
int gh_watchdog_env_threshold(double *threshold);

/* Loop.set_watchdog() and Loop.get_watchdog(). */
PyObject *gh_loop_set_watchdog(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
PyObject *gh_loop_get_watchdog(PyObject *op, PyObject *ignored);

/* _core._check_watchdog_threshold(obj): raises what set_watchdog() would. */
PyObject *gh_check_watchdog_threshold(PyObject *module, PyObject *obj);

/* _core._watchdog_atexit(): the interpreter is exiting; stops every
 * watchdog thread and starts no new one, so none takes the GIL while the
 * interpreter is finalized. */
PyObject *gh_watchdog_atexit(PyObject *module, PyObject *ignored);

#endif /* GH_WATCHDOG_H */
