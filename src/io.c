/*
 * io.c - _add_reader(), _add_writer(), _remove_reader(), _remove_writer():
 * the fd-watching primitives under asyncio's selector-loop API (its public
 * add_reader() etc. check for transports and call these).
 *
 * As in asyncio's selector loop: each fd has at most one reader and one
 * writer Handle, made when the callback is added (with a copy of the
 * current context, or from 3.15 the `context` given: see io_context_arg);
 * while the fd is ready, its Handle is queued once per
 * loop iteration (level-triggered).  A cancelled Handle found ready is
 * removed instead.  The reactor (libev) only reports readiness; the handles
 * run with the other ready callbacks, in order.
 */
#include "io.h"

#include <errno.h>
#include <fcntl.h>

#include "compat.h"
#include "handle.h"
#include "loop.h"

/* asyncio's fd normalisation (selectors._fileobj_to_fd and
 * _ensure_fd_no_transport): an int, or an object whose fileno() gives
 * something int() takes (a str or a float too, as there).  *fd is the
 * number; one beyond a C int is LONG_MAX (the selector's register() fails
 * with OverflowError, its lookups find nothing), a negative one is at most
 * -1, and *num (a new reference) is the int itself, for messages. */
static int
fileobj_to_fd(PyObject *fileobj, long *fd, PyObject **num)
{
    if (PyLong_Check(fileobj)) {
        *num = Py_NewRef(fileobj);
    }
    else {
        PyObject *res = PyObject_CallMethod(fileobj, "fileno", NULL);
        *num = res == NULL ? NULL : PyNumber_Long(res);
        Py_XDECREF(res);
        if (*num == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError) &&
                !PyErr_ExceptionMatches(PyExc_TypeError) &&
                !PyErr_ExceptionMatches(PyExc_ValueError)) {
                return -1;
            }
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "Invalid file object: %R", fileobj);
            return -1;
        }
    }
    int overflow;
    *fd = PyLong_AsLongAndOverflow(*num, &overflow);
    if (*fd == -1 && PyErr_Occurred()) {
        Py_CLEAR(*num);
        return -1;
    }
    if (overflow > 0 || *fd > INT_MAX) {
        *fd = LONG_MAX;
    }
    else if (overflow < 0 || *fd < 0) {
        *fd = -1;
    }
    return 0;
}

/* ValueError for a negative fd (`num` is the number asked for). */
static int
check_fd(PyObject *num, long fd)
{
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %S", num);
        return -1;
    }
    return 0;
}

static gh_io_slot *
slot_for(gh_Loop *self, int fd, int create)
{
    if (fd < self->io.n_slots) {
        return &self->io.slots[fd];
    }
    if (!create) {
        return NULL;
    }
    /* The table grows to the fd's number: only for an open fd, which the
     * kernel keeps below its limit (nr_open <= 2**30), so a bad number
     * costs no memory and the doubling stays within an int. */
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    size_t n = self->io.n_slots ? (size_t)self->io.n_slots : 64;
    while (n <= (size_t)fd) {
        n *= 2;
    }
    gh_io_slot *slots = PyMem_Realloc(self->io.slots, n * sizeof(*slots));
    if (slots == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = (size_t)self->io.n_slots; i < n; i++) {
        slots[i].reader = slots[i].writer = slots[i].armed_for = slots[i].fileobj = NULL;
    }
    self->io.slots = slots;
    self->io.n_slots = (int)n;
    return &slots[fd];
}

static int
interest(const gh_io_slot *slot)
{
    return (slot->reader ? GH_IO_READ : 0) | (slot->writer ? GH_IO_WRITE : 0);
}

/* Ends an armed-for-a-socket state (sock.c): the watcher gets the slot's
 * real interest again (none: stopped). */
static void
disarm(gh_Loop *self, int fd, gh_io_slot *slot)
{
    if (slot->armed_for != NULL) {
        Py_CLEAR(slot->armed_for);
        (void)gh_reactor_io_watch(self->reactor, fd, interest(slot));
    }
}

/* The fd failed a registration as a selector key does when its epoll_ctl()
 * fails: the key is gone - both handles dropped, not cancelled - and the
 * watcher stopped.  -1 only if a decref's Python code raised (never: kept
 * for symmetry with the callers' error paths). */
static int
drop_slot(gh_Loop *self, int fd)
{
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL) {
        return 0;
    }
    PyObject *reader = slot->reader, *writer = slot->writer, *armed = slot->armed_for;
    PyObject *fileobj = slot->fileobj;
    slot->reader = slot->writer = slot->armed_for = slot->fileobj = NULL;
    (void)gh_reactor_io_watch(self->reactor, fd, 0);
    /* Decrefs last: they can run Python code that moves the slots. */
    Py_XDECREF(reader);
    Py_XDECREF(writer);
    Py_XDECREF(armed);
    Py_XDECREF(fileobj);
    return 0;
}

/* The fd whose watchers were added with `fileobj` itself, or -1. */
static long
fd_of_fileobj(gh_Loop *self, PyObject *fileobj)
{
    for (int fd = 0; fd < self->io.n_slots; fd++) {
        if (self->io.slots[fd].fileobj == fileobj) {
            return fd;
        }
    }
    return -1;
}

/* Python 3.15's asyncio gave _add_reader() and _add_writer() a keyword-only
 * `context`: the Context the Handle runs in.  A socket transport passes its
 * own (None when it has none), so that its protocol's callbacks all run in
 * the connection's context.  Before 3.15 the stock methods take no keyword,
 * and neither do these.  *context is borrowed from kwvalues, NULL if not
 * given; -1 with TypeError for any other keyword. */
static int
io_context_arg(gh_state *st, const char *name, PyObject *kwnames, PyObject *const *kwvalues,
               PyObject **context)
{
    *context = NULL;
    Py_ssize_t n = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
#if PY_VERSION_HEX >= 0x030F0000
        if (key == st->str_context || PyUnicode_Compare(key, st->str_context) == 0) {
            *context = kwvalues[i];
            continue;
        }
        if (PyErr_Occurred()) {
            return -1;
        }
#else
        (void)st;
        (void)kwvalues;
#endif
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", name, key);
        return -1;
    }
    return 0;
}

/* _add_reader / _add_writer; `which` is GH_IO_READ or GH_IO_WRITE. */
static PyObject *
add_io(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames, int which,
       const char *name)
{
    gh_Loop *self = (gh_Loop *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    if (io_context_arg(self->st, name, kwnames, args + nargs, &context) < 0) {
        return NULL;
    }
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() missing required arguments: 'fd' and 'callback'", name);
        return NULL;
    }
    long fd;
    PyObject *num;
    if (fileobj_to_fd(args[0], &fd, &num) < 0) {
        return NULL;
    }
    if (self->closed) {
        Py_DECREF(num);
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    if (fd < 0) {
        /* A closed socket whose watcher was added with the socket itself: the
         * selector loop finds its key by the object, and changes it (a new
         * event fails on the closed fd, as below; a new callback does not). */
        long found = fd_of_fileobj(self, args[0]);
        fd = found < 0 ? fd : found;
    }
    int bad = check_fd(num, fd);
    Py_DECREF(num);
    if (bad < 0) {
        return NULL;
    }
    if (fd > INT_MAX) {
        /* What the selector's epoll.register() raises for it. */
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return NULL;
    }
    /* The handle first: making it allocates, and a garbage collection there
     * can run a __del__ that adds watchers and moves the slot array. */
    PyObject *h =
        gh_handle_new(self->st, self->st->HandleType, op, args[1], args + 2, nargs - 2, context);
    if (h == NULL) {
        return NULL;
    }
    gh_io_slot *slot = slot_for(self, (int)fd, 1);
    if (slot == NULL) {
        Py_DECREF(h);
        return NULL;
    }
    int was_idle = slot->reader == NULL && slot->writer == NULL;
    int old_interest = interest(slot);
    /* The selector loop registers a new fd, or changes the events of a
     * registered one, with a system call that fails if the fd was closed
     * meanwhile; replacing a callback costs it nothing and cannot fail.  A
     * new watcher is checked by the reactor; the other two cases here (a
     * watcher left armed by sock_recv() counts as new to the user). */
    int check = slot->armed_for != NULL || (!was_idle && (old_interest | which) != old_interest);
    if (check && gh_reactor_fd_usable(self->reactor, (int)fd) < 0) {
        int err = errno;
        Py_DECREF(h);
        if (drop_slot(self, (int)fd) < 0) {
            return NULL;
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_CLEAR(slot->armed_for); /* the watcher is set from scratch below */
    PyObject **place = which == GH_IO_READ ? &slot->reader : &slot->writer;
    PyObject *old = *place;
    *place = h;
    if (gh_reactor_io_watch(self->reactor, (int)fd, interest(slot)) < 0) {
        *place = old;
        Py_DECREF(h);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *old_fileobj = NULL;
    if (was_idle) {
        old_fileobj = slot->fileobj;
        slot->fileobj = Py_NewRef(args[0]);
    }
    /* Another thread added it while the loop sleeps in its poll (not
     * thread-safe in asyncio, but the selector's epoll_ctl() takes effect at
     * once): libev applies the change at its next poll, so end this one. */
    gh_loop_wake_if_sleeping(self);
    /* Decrefs and cancels last: they can run Python code that moves `slot`. */
    Py_XDECREF(old_fileobj);
    if (old != NULL) {
        int rc = gh_handle_cancel(old);
        Py_DECREF(old);
        if (rc < 0) {
            return NULL;
        }
    }
    return Py_NewRef(h); /* asyncio's _add_reader() returns the handle */
}

/* Stops watching `which` on fd; returns 1 if a live handle was removed. */
static int
remove_io(gh_Loop *self, int fd, int which)
{
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL) {
        return 0;
    }
    disarm(self, fd, slot);
    PyObject **place = which == GH_IO_READ ? &slot->reader : &slot->writer;
    PyObject *old = *place;
    if (old == NULL) {
        return 0;
    }
    PyObject *other = which == GH_IO_READ ? slot->writer : slot->reader;
    if (other != NULL && gh_reactor_fd_usable(self->reactor, fd) < 0) {
        /* The selector changes the events of a key that keeps the other
         * callback, with a system call that fails on a closed fd and drops
         * the key (removing a whole key ignores that failure). */
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *exc = gh_err_get_raised();
        int rc = drop_slot(self, fd);
        gh_err_set_raised(exc);
        (void)rc;
        return -1;
    }
    *place = NULL;
    /* Stopping a watcher does not fail (errno only matters when starting). */
    (void)gh_reactor_io_watch(self->reactor, fd, interest(slot));
    PyObject *fileobj = NULL;
    if (slot->reader == NULL && slot->writer == NULL) {
        fileobj = slot->fileobj;
        slot->fileobj = NULL;
    }
    int rc = gh_handle_cancel(old);
    Py_DECREF(old);
    Py_XDECREF(fileobj);
    return rc < 0 ? -1 : 1;
}

static PyObject *
remove_io_method(PyObject *op, PyObject *fileobj, int which)
{
    gh_Loop *self = (gh_Loop *)op;
    long fd;
    PyObject *num;
    if (fileobj_to_fd(fileobj, &fd, &num) < 0) {
        return NULL;
    }
    if (self->closed) {
        Py_DECREF(num);
        Py_RETURN_FALSE;
    }
    if (fd < 0) {
        /* A closed socket: the selector loop looks the object up instead. */
        long found = fd_of_fileobj(self, fileobj);
        fd = found < 0 ? fd : found;
    }
    int bad = check_fd(num, fd);
    Py_DECREF(num);
    if (bad < 0) {
        return NULL;
    }
    if (fd > INT_MAX) {
        Py_RETURN_FALSE; /* never registered: the selector finds no key */
    }
    int rc = remove_io(self, (int)fd, which);
    return rc < 0 ? NULL : PyBool_FromLong(rc);
}

PyObject *
gh_loop_add_reader(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return add_io(op, args, nargsf, kwnames, GH_IO_READ, "_add_reader");
}

PyObject *
gh_loop_add_writer(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    return add_io(op, args, nargsf, kwnames, GH_IO_WRITE, "_add_writer");
}

PyObject *
gh_loop_remove_reader(PyObject *op, PyObject *fileobj)
{
    return remove_io_method(op, fileobj, GH_IO_READ);
}

PyObject *
gh_loop_remove_writer(PyObject *op, PyObject *fileobj)
{
    return remove_io_method(op, fileobj, GH_IO_WRITE);
}

/* Called by the reactor inside the poll, with the GIL held: queue the
 * handles; run nothing.  A failure leaves MemoryError set for run_once(). */
void
gh_io_ready(void *arg, int fd, int readable, int writable)
{
    gh_Loop *self = arg;
    if (PyErr_Occurred()) {
        return;
    }
    if (self->io.trace != NULL) {
        /* No Python code runs here: a list append of an int. */
        PyObject *n = PyLong_FromLong(fd);
        int rc = n == NULL ? -1 : PyList_Append(self->io.trace, n);
        Py_XDECREF(n);
        if (rc < 0) {
            return; /* MemoryError, left for run_once() */
        }
    }
    for (int which = GH_IO_READ; which <= GH_IO_WRITE; which <<= 1) {
        /* Looked up each time: cancelling can run Python code (a debug
         * repr) that adds watchers and moves the slot array. */
        gh_io_slot *slot = slot_for(self, fd, 0);
        if (slot == NULL) {
            return;
        }
        PyObject *h = which == GH_IO_READ ? slot->reader : slot->writer;
        if (h == NULL && slot->armed_for != NULL && readable) {
            /* Data came while no sock_recv() waits: stop watching (level-
             * triggered, it would fire every iteration); the next
             * sock_recv() reads at once. */
            disarm(self, fd, slot);
            continue;
        }
        if (h == NULL || !(which == GH_IO_READ ? readable : writable)) {
            continue;
        }
        if (gh_hd(h)->cancelled) {
            if (remove_io(self, fd, which) < 0) {
                return;
            }
        }
        else if (gh_loop_push_ready(self, Py_NewRef(h)) < 0) {
            return;
        }
    }
}

PyObject *
gh_loop_get_io_trace(PyObject *op, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    return Py_NewRef(self->io.trace ? self->io.trace : Py_None);
}

int
gh_loop_set_io_trace(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    gh_Loop *self = (gh_Loop *)op;
    if (value != NULL && value != Py_None && !PyList_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "_io_trace must be a list or None");
        return -1;
    }
    Py_XSETREF(self->io.trace, (value && value != Py_None) ? Py_NewRef(value) : NULL);
    return 0;
}

PyObject *
gh_loop_io_watchers(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    gh_Loop *self = (gh_Loop *)op;
    PyObject *d = PyDict_New();
    for (int fd = 0; d != NULL && fd < self->io.n_slots; fd++) {
        int events = interest(&self->io.slots[fd]);
        if (events == 0) {
            continue;
        }
        PyObject *k = PyLong_FromLong(fd), *v = PyLong_FromLong(events);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_CLEAR(d);
        }
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

int
gh_io_traverse(gh_io *io, visitproc visit, void *arg)
{
    Py_VISIT(io->trace);
    for (int fd = 0; fd < io->n_slots; fd++) {
        Py_VISIT(io->slots[fd].reader);
        Py_VISIT(io->slots[fd].writer);
        Py_VISIT(io->slots[fd].fileobj);
    }
    return 0;
}

void
gh_io_close(gh_Loop *self)
{
    for (int fd = 0; fd < self->io.n_slots; fd++) {
        gh_io_slot *slot = &self->io.slots[fd];
        if (slot->reader == NULL && slot->writer == NULL && slot->armed_for == NULL &&
            slot->fileobj == NULL) {
            continue;
        }
        PyObject *reader = slot->reader, *writer = slot->writer, *armed = slot->armed_for;
        PyObject *fileobj = slot->fileobj;
        slot->reader = slot->writer = slot->armed_for = slot->fileobj = NULL;
        (void)gh_reactor_io_watch(self->reactor, fd, 0);
        Py_XDECREF(reader);
        Py_XDECREF(writer);
        Py_XDECREF(armed);
        Py_XDECREF(fileobj);
    }
    PyMem_Free(self->io.slots);
    self->io.slots = NULL;
    self->io.n_slots = 0;
}

void
gh_io_clear(gh_Loop *self)
{
    gh_io_close(self);
    Py_CLEAR(self->io.trace);
}

/* --- waits of sock.c ------------------------------------------------------- */

int
gh_io_armed_for(gh_Loop *self, int fd, PyObject *sock)
{
    gh_io_slot *slot = slot_for(self, fd, 0);
    /* No socket (a bare fd's wait, fd_wait.c): never armed for it.  (A dead
     * weak reference must not match it either: its fd may be a new one.) */
    if (sock == NULL || slot == NULL || slot->armed_for == NULL) {
        return 0;
    }
    PyObject *obj = gh_weakref_get(slot->armed_for);
    Py_XDECREF(obj);
    return obj == sock;
}

int
gh_io_wait_read(gh_Loop *self, int fd, PyObject *sock, PyObject *handle)
{
    gh_io_slot *slot = slot_for(self, fd, 1);
    if (slot == NULL) {
        return -1;
    }
    PyObject *old = slot->reader;
    slot->reader = Py_NewRef(handle);
    if (gh_io_armed_for(self, fd, sock)) {
        /* Armed for reading, for this very socket: nothing to change. */
        Py_CLEAR(slot->armed_for);
    }
    else {
        Py_CLEAR(slot->armed_for);
        if (gh_reactor_io_watch(self->reactor, fd, interest(slot)) < 0) {
            PyErr_SetFromErrno(PyExc_OSError); /* before a dealloc can change errno */
            slot->reader = old;
            Py_DECREF(handle);
            return -1;
        }
    }
    if (old != NULL) {
        int rc = gh_handle_cancel(old);
        Py_DECREF(old);
        return rc;
    }
    return 0;
}

int
gh_io_wait_done(gh_Loop *self, int fd, PyObject *sock, PyObject *handle)
{
    if (self->closed) {
        return 0;
    }
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL) {
        return 0;
    }
    if (sock == NULL || slot->reader != handle || slot->writer != NULL) {
        return remove_io(self, fd, GH_IO_READ) < 0 ? -1 : 0;
    }
    PyObject *ref = PyWeakref_NewRef(sock, NULL);
    if (ref == NULL) {
        PyErr_Clear(); /* no weak references: just stop watching */
        return remove_io(self, fd, GH_IO_READ) < 0 ? -1 : 0;
    }
    /* Making the weak reference allocates: a garbage collection there can
     * run Python code that moves the slots or changes this one. */
    slot = slot_for(self, fd, 0);
    if (self->closed || slot == NULL || slot->reader != handle || slot->writer != NULL) {
        Py_DECREF(ref);
        return self->closed ? 0 : (remove_io(self, fd, GH_IO_READ) < 0 ? -1 : 0);
    }
    PyObject *fileobj = slot->fileobj;
    slot->reader = slot->fileobj = NULL;
    slot->armed_for = ref; /* the watcher stays as it is: armed for reading */
    int rc = gh_handle_cancel(handle);
    Py_DECREF(handle);
    Py_XDECREF(fileobj);
    return rc;
}

/* --- waits of fd_wait.c and green_sock.c ----------------------------------- */

PyObject *
gh_io_waiter(gh_Loop *self, int fd, int which)
{
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL) {
        return NULL;
    }
    return which == GH_IO_READ ? slot->reader : slot->writer;
}

int
gh_io_wait_write(gh_Loop *self, int fd, PyObject *handle)
{
    gh_io_slot *slot = slot_for(self, fd, 1);
    if (slot == NULL) {
        return -1;
    }
    PyObject *old = slot->writer;
    slot->writer = Py_NewRef(handle);
    Py_CLEAR(slot->armed_for); /* armed only while nothing else watches */
    if (gh_reactor_io_watch(self->reactor, fd, interest(slot)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError); /* before the restoring call changes errno */
        slot->writer = old;
        Py_DECREF(handle);
        (void)gh_reactor_io_watch(self->reactor, fd, interest(slot));
        return -1;
    }
    if (old != NULL) {
        int rc = gh_handle_cancel(old);
        Py_DECREF(old);
        return rc;
    }
    return 0;
}

int
gh_io_wait_write_done(gh_Loop *self, int fd, PyObject *handle)
{
    if (self->closed) {
        return 0;
    }
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL || slot->writer != handle) {
        return 0;
    }
    return remove_io(self, fd, GH_IO_WRITE) < 0 ? -1 : 0;
}

int
gh_io_forget(gh_Loop *self, int fd, PyObject *sock)
{
    gh_io_slot *slot = slot_for(self, fd, 0);
    if (slot == NULL) {
        return 0;
    }
    if (gh_io_armed_for(self, fd, sock)) {
        disarm(self, fd, slot);
    }
    int rc = 0;
    for (int which = GH_IO_READ; which <= GH_IO_WRITE; which <<= 1) {
        slot = slot_for(self, fd, 0); /* cancelling may run Python code */
        PyObject *h = which == GH_IO_READ ? slot->reader : slot->writer;
        if (h != NULL && gh_hd(h)->callback == self->fdw.ready && remove_io(self, fd, which) < 0) {
            rc = -1;
        }
    }
    return rc;
}
