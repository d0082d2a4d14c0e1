/*
 * switches.c - where a virtual thread may switch: greenhub.no_switch() and
 * the switch log.
 *
 * no_switch.  A virtual thread switches only where it suspends: in
 * gh_suspend() (bridge.c), through which greenhub.await_() and every
 * cooperative blocking call (green sockets included) suspend, and at a
 * native `await` that yields.  `with greenhub.no_switch():`
 * marks a section where neither may happen.  The mark is a depth counter on
 * the task's GreenCoro - state of that virtual thread, not of the OS thread,
 * so another task's block does not affect this one - and the innermost
 * block's description for the error message.  gh_suspend() tests the
 * counter (one int compare) and raises SwitchError instead of suspending.
 * gh_await() also tests it at entry, so every await_() call in the block
 * fails, even one that would have completed without waiting: a forbidden
 * switch point fails every time, not only when a lock happens to be taken.
 * A native `await` inside the block is caught when it actually yields: the
 * worker throws SwitchError back in at that await (task_step.c).
 *
 * Outside a virtual thread (no loop, a loop callback, another thread)
 * nothing can switch, and a block is only a marker: entering it records
 * nothing.  There, await_() with no loop running runs its awaitable to
 * completion on the thread's own loop, which is not a switch of the caller.
 *
 * The switch log.  With set_switch_log(True), each suspension of sync code
 * (gh_suspend()) calls a Python hook (greenhub/_switches.py) that logs the
 * caller's stack.  Off, it costs one flag test on the path that is about to
 * switch greenlets anyway.
 */
#include "switches.h"

#include "loop.h"

/* The task step running in this thread (borrowed), or NULL if the caller
 * is not in a virtual thread; -1 on error. */
static int
current_step(gh_state *st, gh_GreenCoro **out)
{
    *out = NULL;
    PyObject *loop_obj = PyObject_CallNoArgs(st->get_running_loop);
    if (loop_obj == NULL) {
        return -1;
    }
    gh_Loop *loop = gh_as_loop(st, loop_obj);
    if (loop != NULL) {
        *out = loop->vt.current_step;
    }
    Py_DECREF(loop_obj); /* a running loop is kept alive by its caller */
    return 0;
}

PyObject *
gh_switch_error(gh_state *st, gh_GreenCoro *w, const char *what)
{
    PyObject *block = w->no_switch_block ? w->no_switch_block : Py_None;
    return PyObject_CallFunction(st->SwitchError, "N",
                                 PyUnicode_FromFormat("%s would switch virtual threads inside "
                                                      "a greenhub.no_switch() block (%S)",
                                                      what, block));
}

PyObject *
gh_switch_refused(gh_state *st, gh_GreenCoro *w, const char *what)
{
    PyObject *exc = gh_switch_error(st, w, what);
    if (exc != NULL) {
        PyErr_SetObject(st->SwitchError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

void
gh_switch_log(gh_state *st, PyObject *yielded)
{
    if (st->hook_log_switch == NULL) {
        return;
    }
    PyObject *res = PyObject_CallOneArg(st->hook_log_switch, yielded);
    if (res == NULL) {
        PyErr_WriteUnraisable(st->hook_log_switch);
    }
    Py_XDECREF(res);
}

/* _no_switch_enter(block) -> token: marks the current task, if any; `block`
 * describes the block for error messages.  The token is None outside a
 * virtual thread, else (GreenCoro, outer block's description). */
PyObject *
gh_no_switch_enter(PyObject *module, PyObject *block)
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    gh_GreenCoro *w;
    if (current_step(st, &w) < 0) {
        return NULL;
    }
    if (w == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *outer = w->no_switch_block ? w->no_switch_block : Py_None;
    PyObject *token = PyTuple_Pack(2, (PyObject *)w, outer);
    if (token == NULL) {
        return NULL;
    }
    Py_XSETREF(w->no_switch_block, Py_NewRef(block));
    w->no_switch++;
    return token;
}

/* _no_switch_exit(token): undoes the _no_switch_enter() that made it. */
PyObject *
gh_no_switch_exit(PyObject *module, PyObject *token)
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    if (token == Py_None) {
        Py_RETURN_NONE;
    }
    if (!PyTuple_Check(token) || PyTuple_GET_SIZE(token) != 2 ||
        !Py_IS_TYPE(PyTuple_GET_ITEM(token, 0), st->GreenCoroType)) {
        PyErr_SetString(PyExc_TypeError, "_no_switch_exit() needs a token from _no_switch_enter()");
        return NULL;
    }
    gh_GreenCoro *w = (gh_GreenCoro *)PyTuple_GET_ITEM(token, 0);
    PyObject *outer = PyTuple_GET_ITEM(token, 1);
    if (w->no_switch <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "greenhub.no_switch() block exited twice");
        return NULL;
    }
    w->no_switch--;
    Py_XSETREF(w->no_switch_block, outer == Py_None ? NULL : Py_NewRef(outer));
    Py_RETURN_NONE;
}

/* check_switch(): raises SwitchError if the caller is a virtual thread
 * inside a no_switch() block; for blocking calls with a fast path that does
 * not reach await_(). */
PyObject *
gh_check_switch(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    gh_GreenCoro *w;
    if (current_step(st, &w) < 0) {
        return NULL;
    }
    if (w != NULL && w->no_switch > 0) {
        return gh_switch_refused(st, w, "a blocking call");
    }
    Py_RETURN_NONE;
}

PyObject *
gh_set_switch_log(PyObject *module, PyObject *on)
{
    gh_state *st = (gh_state *)PyModule_GetState(module);
    int truth = PyObject_IsTrue(on);
    if (truth < 0) {
        return NULL;
    }
    st->log_switches = (char)truth;
    Py_RETURN_NONE;
}
