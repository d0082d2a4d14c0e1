/*
 * task_create.h - the Task a greenhub loop makes around a GreenCoro, and what
 * its get_coro() reports.  See task_create.c.
 */
#ifndef GH_TASK_CREATE_H
#define GH_TASK_CREATE_H

#include <Python.h>

#include "state.h"

/* Module init, traverse and clear of st->tk. */
int gh_tasks_init(gh_state *st);
int gh_tasks_traverse(gh_state *st, visitproc visit, void *arg);
void gh_tasks_clear(gh_state *st);

/* asyncio.tasks.Task(coro, loop=loop, name=name, context=context
 * [, eager_start=eager]) as BaseEventLoop.create_task() makes it when no task
 * factory is set, with greenhub's Task in place of asyncio's (get_coro()
 * reports the user's coroutine).  `eager` may be NULL (not passed).  All
 * arguments borrowed; returns a new reference or NULL with an exception. */
PyObject *gh_task_new(gh_state *st, PyObject *loop, PyObject *coro, PyObject *name,
                      PyObject *context, PyObject *eager);

/* `task` was made by a task factory around the GreenCoro `green` (both
 * borrowed): if it is an asyncio.Task whose class keeps asyncio's get_coro(),
 * make task.get_coro() report the user's coroutine.  0, or -1 with an
 * exception set. */
int gh_task_expose_coro(gh_state *st, PyObject *task, PyObject *green);

/* What the loop's `_task_factory` attribute (what BaseEventLoop.create_task()
 * calls) gives for the factory set_task_factory() stored (borrowed in and
 * out; never NULL). */
PyObject *gh_task_factory_to_call(gh_state *st, PyObject *factory);

/* What to store for a value assigned to `_task_factory` (borrowed in and out):
 * the inverse of gh_task_factory_to_call(). */
PyObject *gh_task_factory_to_store(gh_state *st, PyObject *value);

/* _core._install_task_type(task_type, eager_task_factory): called once by
 * greenhub/_task.py. */
PyObject *gh_install_task_type(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* Loop.create_task(coro, *, name=None, context=None). */
PyObject *gh_loop_create_task(PyObject *op, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames);

#endif /* GH_TASK_CREATE_H */
