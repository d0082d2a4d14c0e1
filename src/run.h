/*
 * run.h - the run loop (run.c): run_forever()'s body and one iteration.
 */
#ifndef GH_RUN_H
#define GH_RUN_H

#include <Python.h>

#include "state.h"

/* Methods of the Loop type: _run(), _run_once(), stop(). */
PyObject *gh_loop_run(PyObject *op, PyObject *ignored);
PyObject *gh_loop_run_once(PyObject *op, PyObject *ignored);
PyObject *gh_loop_stop(PyObject *op, PyObject *ignored);

/* The reactor's blocking hooks (`arg` is the loop): release the GIL before
 * a poll that may block, take it back after. */
void gh_run_release_gil(void *arg);
void gh_run_acquire_gil(void *arg);

#endif /* GH_RUN_H */
