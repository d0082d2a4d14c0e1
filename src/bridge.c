/*
 * bridge.c - greenhub.await_(): synchronous code waits on an awaitable.
 *
 * Inside a task step (on the task's worker greenlet, or on any greenlet
 * switched to from it), await_ iterates the awaitable itself.  Each value
 * the awaitable yields - a future to wait on, or None for a bare yield - is
 * handed to the Task as the step's own yield: await_ parks the step (records
 * the current greenlet) and switches to the greenlet that drove the step.
 * When the Task resumes the step with send(value) or throw(exc), the switch
 * comes back here and await_ passes the value or exception on into the
 * awaitable.  So the Task waits on exactly what the awaitable yields, as it
 * would for `await`, and cancellation arrives as CancelledError raised by
 * the await_() call.
 *
 * The greenlet's stack keeps strong references to the GreenCoro and the
 * iterator while parked, so neither can be freed under it.  A parked step is
 * unwound by GreenCoro.close() (GeneratorExit raised at await_) - the loop
 * does this for every parked step when it closes.
 */
#include "compat.h"
#include "defer.h"
#include "green.h"
#include "loop.h"
#include "switches.h"
#include "vthread.h"

/* A generator made by a @types.coroutine function: `await` takes it as it
 * takes a coroutine.  1 if so, 0 if not, -1 with an exception. */
static int
is_iterable_coroutine(PyObject *obj)
{
    if (!PyGen_CheckExact(obj)) {
        return 0;
    }
    PyObject *code = PyObject_GetAttrString(obj, "gi_code");
    if (code == NULL) {
        return -1;
    }
    int flags = ((PyCodeObject *)code)->co_flags;
    Py_DECREF(code);
    return (flags & CO_ITERABLE_COROUTINE) != 0;
}

/* The TypeError `await` raises when __await__() returned `it`, which it
 * refuses: a coroutine (or a @types.coroutine generator), or no iterator.
 * 3.15 reworded both messages.  Unlike refuse_as_await_does(), this cannot
 * let the interpreter raise its own error: that would call __await__() a
 * second time.  This is the one place that follows the wording by version. */
static void
bad_await_result(PyObject *awaitable, PyObject *it, int coroutine)
{
#if PY_VERSION_HEX >= 0x030F0000
    if (coroutine) {
        PyErr_Format(PyExc_TypeError, "%T.__await__() must return an iterator, not coroutine",
                     awaitable);
    }
    else {
        PyErr_Format(PyExc_TypeError, "%T.__await__() must return an iterator, not %T", awaitable,
                     it);
    }
#else
    (void)awaitable;
    if (coroutine) {
        PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
    }
    else {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(it)->tp_name);
    }
#endif
}

/* The note added to await_()'s TypeError when it was given a coroutine
 * function rather than what calling it returns (the commonest slip).
 * Errors while looking are dropped: the TypeError is what counts. */
static void
hint_coroutine_function(PyObject *exc, PyObject *obj)
{
    PyObject *inspect = PyImport_ImportModule("inspect");
    PyObject *is = inspect ? PyObject_CallMethod(inspect, "iscoroutinefunction", "O", obj) : NULL;
    Py_XDECREF(inspect);
    if (is == Py_True) {
        PyObject *res = PyObject_CallMethod(exc, "add_note", "s",
                                            "hint: that is a coroutine function; pass the "
                                            "coroutine that calling it returns: "
                                            "greenhub.await_(fn(...))");
        Py_XDECREF(res);
    }
    Py_XDECREF(is);
    PyErr_Clear();
}

/* 1 when `await obj` refuses obj without calling anything of it (no
 * __await__, not a coroutine): await_() then raises at once, the same
 * TypeError wherever it is called.  0 if not, -1 with an exception. */
static int
not_awaitable(PyObject *obj)
{
    if (PyCoro_CheckExact(obj)) {
        return 0;
    }
    PyAsyncMethods *am = Py_TYPE(obj)->tp_as_async;
    if (am != NULL && am->am_await != NULL) {
        return 0;
    }
    int iterable = is_iterable_coroutine(obj);
    return iterable < 0 ? -1 : !iterable;
}

/* Raises the TypeError `await awaitable` raises, for an object in which
 * await_iterator() found nothing `await` would drive.  The interpreter's
 * wording changes between versions ("object int can't be used in 'await'
 * expression" up to 3.13, "'int' object can't be awaited" from 3.14), so the
 * interpreter makes it: `await awaitable` in st->await_probe's coroutine
 * fails in its first step, before anything runs.  Its traceback entry (the
 * probe's frame) is dropped: the error is await_()'s.  Should the
 * interpreter take the object after all, greenhub's own TypeError says so. */
static PyObject *
refuse_as_await_does(gh_state *st, PyObject *awaitable)
{
    PyObject *coro = PyObject_CallOneArg(st->await_probe, awaitable);
    if (coro == NULL) {
        return NULL;
    }
    PyObject *res = NULL;
    if (PyIter_Send(coro, Py_None, &res) == PYGEN_ERROR) {
        PyObject *exc = gh_err_get_raised();
        PyException_SetTraceback(exc, Py_None);
        hint_coroutine_function(exc, awaitable);
        gh_err_set_raised(exc);
        Py_DECREF(coro);
        return NULL;
    }
    Py_XDECREF(res);
    PyObject *closed = PyObject_CallMethodNoArgs(coro, st->str_close);
    Py_DECREF(coro);
    if (closed == NULL) {
        return NULL;
    }
    Py_DECREF(closed);
    PyErr_Format(PyExc_TypeError, "greenhub.await_() cannot wait on a %.100s object",
                 Py_TYPE(awaitable)->tp_name);
    return NULL;
}

/* The iterator `await awaitable` would drive, or NULL + TypeError. */
static PyObject *
await_iterator(gh_state *st, PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable)) {
        return Py_NewRef(awaitable);
    }
    PyAsyncMethods *am = Py_TYPE(awaitable)->tp_as_async;
    if (am != NULL && am->am_await != NULL) {
        PyObject *it = am->am_await(awaitable);
        if (it == NULL) {
            return NULL;
        }
        int coroutine = PyCoro_CheckExact(it) ? 1 : is_iterable_coroutine(it);
        if (coroutine < 0) {
            Py_DECREF(it);
            return NULL;
        }
        if (coroutine || !PyIter_Check(it)) {
            bad_await_result(awaitable, it, coroutine);
            Py_DECREF(it);
            return NULL;
        }
        return it;
    }
    int iterable = is_iterable_coroutine(awaitable);
    if (iterable != 0) {
        return iterable < 0 ? NULL : Py_NewRef(awaitable);
    }
    return refuse_as_await_does(st, awaitable);
}

int
gh_bridge_init(gh_state *st)
{
    /* refuse_as_await_does()'s probe: a coroutine function of the
     * interpreter's, so that `await` itself refuses what it refuses. */
    static const char src[] = "async def await_probe(awaitable):\n"
                              "    await awaitable\n";
    PyObject *code = Py_CompileString(src, "<greenhub.await_>", Py_file_input);
    if (code == NULL) {
        return -1;
    }
    PyObject *ns = PyDict_New();
    PyObject *res = ns == NULL ? NULL : PyEval_EvalCode(code, ns, ns);
    Py_DECREF(code);
    Py_XDECREF(res);
    if (res != NULL) {
        st->await_probe = PyMapping_GetItemString(ns, "await_probe"); /* owned */
    }
    Py_XDECREF(ns);
    return st->await_probe == NULL ? -1 : 0;
}

/* Closes a coroutine we were given but will not run, so it does not warn
 * "never awaited" on top of the error we raise. */
static void
discard_awaitable(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable)) {
        PyObject *exc = gh_err_get_raised();
        PyObject *res = PyObject_CallMethod(awaitable, "close", NULL);
        Py_XDECREF(res);
        if (res == NULL) {
            PyErr_Clear(); /* the original error is the one to report */
        }
        gh_err_set_raised(exc);
    }
}

/* Sends value / throws exc into it; returns the send status. */
static PySendResult
advance(gh_state *st, PyObject *it, PyObject *value, PyObject *exc, PyObject **res)
{
    if (exc == NULL) {
        return PyIter_Send(it, value, res);
    }
    PyObject *meth;
    if (gh_get_optional_attr(it, st->str_throw, &meth) < 0) {
        *res = NULL;
        return PYGEN_ERROR;
    }
    if (meth == NULL) {
        /* No throw(): the exception surfaces at the await_ call. */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        *res = NULL;
        return PYGEN_ERROR;
    }
    *res = PyObject_CallOneArg(meth, exc);
    Py_DECREF(meth);
    if (*res != NULL) {
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *stop = gh_err_get_raised();
        *res = PyObject_GetAttrString(stop, "value");
        Py_DECREF(stop);
        return *res ? PYGEN_RETURN : PYGEN_ERROR;
    }
    return PYGEN_ERROR;
}

/*
 * The one place where a task step running synchronous code suspends: every
 * wait of a virtual thread (await_() here, the green socket waits of
 * green_sock.c) goes through it, so checks that apply to every suspension
 * belong here.
 */
int
gh_suspend(gh_GreenCoro *w, PyObject *yielded, PyObject **value, PyObject **exc)
{
    *value = *exc = NULL;
    /* The debugging tools (switches.c): a virtual thread inside
     * greenhub.no_switch() must not suspend; the switch log. */
    gh_state *st = ((gh_Loop *)w->loop)->st;
    if (w->no_switch) {
        Py_DECREF(yielded);
        gh_switch_refused(st, w, "a blocking call");
        return -1;
    }
    if (st->log_switches) {
        gh_switch_log(st, yielded);
    }
    if (w->defer_cancel > 0) {
        /* Inside greenhub.defer_cancellation() (defer.c): the Task waits on
         * a stand-in, so that cancelling the task leaves this wait alone. */
        return gh_suspend_deferring(st, w, yielded, value, exc);
    }
    return gh_switch_out(w, yielded, value, exc);
}

/* The step of a closed greenhub loop running on this thread: a virtual
 * thread that loop.close() is unwinding, or NULL. */
static gh_GreenCoro *
closing_step(gh_state *st)
{
    unsigned long here = PyThread_get_thread_ident();
    for (gh_Loop *lp = st->loops; lp != NULL; lp = lp->next_loop) {
        gh_GreenCoro *w = lp->vt.current_step;
        if (w != NULL && lp->closed && w->thread_id == here) {
            return w;
        }
    }
    return NULL;
}

/* Why await_() cannot wait where it was called, on a running greenhub loop:
 * `task` is asyncio's current task there if greenhub does not run its steps
 * (None in a plain callback, or outside the step of a task greenhub runs);
 * `nested` says a virtual thread's step runs underneath it. */
static void
refuse_here(PyObject *task, int nested)
{
    if (task == Py_None) {
        PyErr_SetString(PyExc_RuntimeError,
                        "greenhub.await_() called outside a task: this code runs in an event "
                        "loop callback, where nothing can wait; run it in a task instead "
                        "(loop.create_task(), greenhub.spawn()) or use `await`");
    }
    else if (nested) {
        PyErr_Format(PyExc_RuntimeError,
                     "greenhub.await_() cannot wait in the eager first step of %R: that step "
                     "runs inside the step of the task that created it, which a wait here "
                     "would suspend as well; create the task with loop.create_task() "
                     "(eager_task_factory included), or without eager_start",
                     task);
    }
    else {
        PyErr_Format(PyExc_RuntimeError,
                     "greenhub.await_() cannot wait in %R: its steps run on the event loop's "
                     "greenlet, as the task was not made by loop.create_task() (it was built "
                     "with asyncio.Task() directly, or by a task factory that does); create "
                     "it with loop.create_task(), asyncio.create_task() or greenhub.spawn()",
                     task);
    }
}

PyObject *
gh_await(gh_state *st, PyObject *awaitable)
{
    /* What `await` refuses outright is refused first, with the same message
     * in a task, with no loop, in a worker thread or a callback. */
    int refused = not_awaitable(awaitable);
    if (refused != 0) {
        return refused < 0 ? NULL : refuse_as_await_does(st, awaitable);
    }
    PyObject *loop_obj = PyObject_CallNoArgs(st->get_running_loop);
    if (loop_obj == NULL) {
        return NULL;
    }
    if (loop_obj == Py_None) {
        Py_DECREF(loop_obj);
        gh_GreenCoro *unwinding = closing_step(st);
        if (unwinding != NULL) {
            /* loop.close() is unwinding this virtual thread (GeneratorExit
             * at its await_()), and its finally blocks wait again: with no
             * loop running that would start one of its own and could wait
             * forever, so close() would never return.  Refuse, as `await`
             * in a coroutine being closed is refused. */
            PyErr_SetString(PyExc_RuntimeError,
                            "greenhub.await_() cannot wait here: the event loop of this "
                            "virtual thread is closed (loop.close() is unwinding it)");
            discard_awaitable(awaitable);
            return NULL;
        }
        /* A plain synchronous program: run it to completion on this
         * thread's greenhub loop (greenhub/_thread_loop.py, which installs
         * the hook when greenhub is imported). */
        if (st->hook_run_sync == NULL) {
            PyObject *pkg = PyImport_ImportModule("greenhub");
            Py_XDECREF(pkg);
            if (pkg == NULL) {
                discard_awaitable(awaitable);
                return NULL;
            }
        }
        if (st->hook_run_sync == NULL) {
            PyErr_SetString(PyExc_RuntimeError,
                            "greenhub.await_() with no event loop running needs the greenhub "
                            "package: import greenhub first");
            discard_awaitable(awaitable);
            return NULL;
        }
        return PyObject_CallOneArg(st->hook_run_sync, awaitable);
    }
    gh_Loop *loop = gh_as_loop(st, loop_obj);
    if (loop == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "greenhub.await_() needs a greenhub event loop, but this thread runs "
                     "%.200s; use `await` in async code, or run the program on greenhub "
                     "(greenhub.run(), greenhub.install() or "
                     "loop_factory=greenhub.new_event_loop)",
                     Py_TYPE(loop_obj)->tp_name);
        Py_DECREF(loop_obj);
        discard_awaitable(awaitable);
        return NULL;
    }
    gh_GreenCoro *w = gh_step_here(loop);
    int stepping;
    PyObject *task = gh_step_current_task(st, loop, w, &stepping);
    Py_DECREF(loop_obj); /* the step, or the thread state, keeps the loop alive */
    if (task == NULL) {
        discard_awaitable(awaitable);
        return NULL;
    }
    if (w == NULL || stepping <= 0) {
        refuse_here(stepping < 0 ? Py_None : task, w != NULL);
        Py_DECREF(task);
        discard_awaitable(awaitable);
        return NULL;
    }
    Py_DECREF(task);
    if (w->no_switch) {
        /* Inside greenhub.no_switch() (switches.c): every await_() call is
         * refused, also one that would not have to wait. */
        gh_switch_refused(st, w, "greenhub.await_()");
        discard_awaitable(awaitable); /* keeps the SwitchError */
        return NULL;
    }

    PyObject *it = await_iterator(st, awaitable);
    if (it == NULL) {
        return NULL;
    }
    Py_INCREF(w);
    /* For greenhub.dump_tasks(): what this task waits on while parked. */
    PyObject *outer_awaiting = w->awaiting;
    w->awaiting = awaitable;
    PyObject *value = Py_NewRef(Py_None), *exc = NULL, *res = NULL;
    for (;;) {
        PySendResult status = advance(st, it, value, exc, &res);
        Py_CLEAR(value);
        Py_CLEAR(exc);
        if (status != PYGEN_NEXT) {
            break; /* RETURN: res is the result; ERROR: exception set */
        }
        /* The awaitable yielded `res`: it becomes the step's yield. */
        PyObject *yielded = res;
        res = NULL;
        if (gh_suspend(w, yielded, &value, &exc) < 0) {
            break;
        }
    }
    w->awaiting = outer_awaiting;
    Py_DECREF(it);
    Py_DECREF(w);
    return res;
}
