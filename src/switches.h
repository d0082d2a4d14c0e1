/*
 * switches.h - where a virtual thread may switch: greenhub.no_switch() and
 * the switch log.  See switches.c.
 */
#ifndef GH_SWITCHES_H
#define GH_SWITCHES_H

#include <Python.h>

#include "state.h"
#include "vthread.h"

/* A new SwitchError for an attempt to suspend task `w` (inside a
 * no_switch() block) by `what` ("greenhub.await_()", "`await`"), or NULL
 * with another exception set. */
PyObject *gh_switch_error(gh_state *st, gh_GreenCoro *w, const char *what);

/* Raises that SwitchError; always returns NULL. */
PyObject *gh_switch_refused(gh_state *st, gh_GreenCoro *w, const char *what);

/* The switch log (st->log_switches): sync code is about to suspend (in
 * gh_suspend()), waiting on `yielded`.  Errors in the log are reported as
 * unraisable; the switch goes ahead. */
void gh_switch_log(gh_state *st, PyObject *yielded);

/* The module functions (module.c lists them). */
PyObject *gh_no_switch_enter(PyObject *module, PyObject *block);
PyObject *gh_no_switch_exit(PyObject *module, PyObject *token);
PyObject *gh_check_switch(PyObject *module, PyObject *ignored);
PyObject *gh_set_switch_log(PyObject *module, PyObject *on);

#endif /* GH_SWITCHES_H */
