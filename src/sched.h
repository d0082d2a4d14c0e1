/*
 * sched.h - the loop core's methods and the run loop's side of it (sched.c):
 * call_soon() & co., time(), and the timer steps of one iteration.  The
 * core functions every subsystem uses are declared in loop.h.
 */
#ifndef GH_SCHED_H
#define GH_SCHED_H

#include <Python.h>

#include "state.h"

/* Methods of the Loop type. */
PyObject *gh_loop_call_soon(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_call_soon_threadsafe(PyObject *op, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames);
PyObject *gh_loop_call_at_method(PyObject *op, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames);
PyObject *gh_loop_call_later(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames);
PyObject *gh_loop_time(PyObject *op, PyObject *ignored);
PyObject *gh_loop_check_closed_method(PyObject *op, PyObject *ignored);
PyObject *gh_loop_check_thread_method(PyObject *op, PyObject *ignored);
PyObject *gh_loop_check_callback_method(PyObject *op, PyObject *const *args, Py_ssize_t nargs);
PyObject *gh_loop_write_to_self(PyObject *op, PyObject *ignored);
PyObject *gh_loop_timer_handle_cancelled(PyObject *op, PyObject *timer);

/* The run loop's steps (run.c): step 1, drop cancelled timers from the top
 * of the heap (or sweep it); step 2, how long the timers let the poll wait
 * (-1: no limit); step 4, move the due timers to the ready queue.  Each
 * returns -1 with an exception set on error. */
int gh_sched_drop_cancelled(gh_Loop *loop);
int gh_sched_timeout(gh_Loop *loop, double *timeout);
int gh_sched_move_due(gh_Loop *loop);

/* The ready queue and the timers' part of tp_traverse, and emptying both
 * (close, tp_clear); handles are released one at a time, so code run by a
 * release sees consistent queues. */
int gh_sched_traverse(gh_Loop *loop, visitproc visit, void *arg);
void gh_sched_clear(gh_Loop *loop);
/* Frees the (emptied) queues' arrays: dealloc. */
void gh_sched_free(gh_Loop *loop);

#endif /* GH_SCHED_H */
