/*
 * greenhub.h - greenhub's C API for extension modules (docs/guide-c-api.md).
 *
 * What greenhub.await_() gives Python code, for C code: ask whether the caller
 * runs in a virtual thread, wait until a file descriptor is readable or
 * writable, wait for an awaitable.  In a virtual thread each wait suspends
 * only that virtual thread (the event loop runs the others meanwhile);
 * anywhere else it is the blocking call: poll(2) with the GIL released, or
 * greenhub.await_()'s own behaviour with no loop running.
 *
 * Build: add greenhub.get_include() to the include path.  Nothing to link:
 * the functions are reached through a table that greenhub._core exports as
 * the capsule `greenhub._core._C_API`, which Greenhub_Import() looks up.
 *
 *     #include <Python.h>
 *     #include <greenhub.h>
 *
 *     // once, in the module's exec function (or PyInit_):
 *     if (Greenhub_Import() < 0) return -1;
 *
 *     // later, with the GIL held:
 *     int ready = Greenhub_WaitFd(fd, GREENHUB_READ, 5.0);
 *     if (ready < 0) return NULL;        // exception set (CancelledError, ...)
 *     if (ready == 0) ...                // timed out
 *
 * Conventions, for every function of the table:
 *   - call with the GIL held (an attached thread state), from any thread;
 *     "in a virtual thread" means: in a task of the greenhub loop running in
 *     the calling thread;
 *   - errors: -1 (int results) or NULL (object results) with a Python
 *     exception set; nothing else is ever returned with an exception set;
 *   - a virtual thread that is cancelled while it waits gets
 *     asyncio.CancelledError from the wait (-1/NULL): let it propagate, as
 *     code under `await` does;
 *   - signals: a blocking wait outside a virtual thread is retried after
 *     EINTR once the Python signal handlers ran, and fails (-1) if one raised
 *     (KeyboardInterrupt, ...); in a virtual thread the loop runs them.
 *
 * Versions and ABI.  The table only grows: a greenhub release may append
 * functions, never remove or change one.  `size` says how much of the table
 * the running greenhub filled, `version` which GREENHUB_CAPI_VERSION it is;
 * GREENHUB_CAPI_HAS(api, field) says whether a field appended after version 1
 * is there.  An extension compiled against this header works with every
 * greenhub that exports the capsule (0.1.0 and later); if the table ever has
 * to change incompatibly, it will be exported under another capsule name, and
 * Greenhub_Import() of an old extension fails with ImportError instead of
 * calling the wrong function.  The header uses only the limited C API.
 */
#ifndef GREENHUB_H
#define GREENHUB_H

#include <Python.h>
#include <math.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of the table this header describes. */
#define GREENHUB_CAPI_VERSION 1

/* The capsule's name: PyCapsule_Import() takes it. */
#define GREENHUB_CAPSULE_NAME "greenhub._core._C_API"

/* Directions for Greenhub_WaitFd(); GREENHUB_READ | GREENHUB_WRITE waits for
 * either. */
#define GREENHUB_READ 1
#define GREENHUB_WRITE 2

/* A timeout that never expires. */
#define GREENHUB_FOREVER HUGE_VAL

typedef struct {
    /* sizeof the table in the greenhub that filled it (>= the version-1
     * table): fields past it do not exist there. */
    size_t size;
    /* The GREENHUB_CAPI_VERSION of the greenhub that filled it. */
    unsigned int version;

    /* --- version 1 --- */

    /* 1 if the caller runs in a virtual thread (a task of the greenhub loop
     * running in this thread, where the waits below suspend only that task),
     * 0 if not, -1 with an exception. */
    int (*in_vthread)(void);

    /* Waits until the file descriptor fd is ready for `events`
     * (GREENHUB_READ, GREENHUB_WRITE or both) or `timeout` seconds pass
     * (0: only looks, never suspends; GREENHUB_FOREVER: no limit).  Returns
     * the ready directions (in a virtual thread the one that fired first;
     * outside, an error or hang-up on fd counts as every direction asked
     * for), 0 when the timeout passed, -1 with an exception:
     *   ValueError   fd < 0, events not 1..3, timeout negative or NaN;
     *   OSError      EBADF for an fd that is not open (or was closed
     *                through greenhub.socket while waited on), or what
     *                poll(2) / the loop's watcher reports;
     *   RuntimeError another virtual thread or loop callback already waits
     *                on fd in that direction;
     *   asyncio.CancelledError   the virtual thread was cancelled;
     *   greenhub.SwitchError     inside greenhub.no_switch().
     * In a virtual thread only it waits, on the loop; elsewhere the thread
     * blocks in poll(2) with the GIL released. */
    int (*wait_fd)(int fd, int events, double timeout);

    /* Waits for `awaitable` (borrowed) and returns its result (a new
     * reference), or NULL with its exception: greenhub.await_(awaitable).
     * In a virtual thread only it waits; with no event loop running the
     * awaitable runs to completion on this thread's greenhub loop; in a loop
     * callback or under another event loop, RuntimeError. */
    PyObject *(*await_)(PyObject *awaitable);

    /* New functions are appended here, with the version that added them. */
} Greenhub_CAPI;

/* Whether the running greenhub's table `api` has `field`. */
#define GREENHUB_CAPI_HAS(api, field)                                                              \
    ((api)->size >= offsetof(Greenhub_CAPI, field) + sizeof((api)->field))

/* The running greenhub's table (imports greenhub), or NULL with an exception:
 * ImportError when greenhub or its C API is missing. */
static inline const Greenhub_CAPI *
Greenhub_ImportCAPI(void)
{
    const Greenhub_CAPI *api = (const Greenhub_CAPI *)PyCapsule_Import(GREENHUB_CAPSULE_NAME, 0);
    if (api == NULL) {
        return NULL;
    }
    if (api->version < 1 || !GREENHUB_CAPI_HAS(api, await_)) {
        PyErr_SetString(PyExc_ImportError, "greenhub's C API table is not one greenhub.h knows");
        return NULL;
    }
    return api;
}

#ifndef GREENHUB_NO_HELPERS
/*
 * Helpers for the common case: Greenhub_Import() stores the table in a
 * static pointer of the including file (of each file that includes this
 * header), which the Greenhub_* functions below use.  An extension that keeps
 * the table elsewhere (its module state) defines GREENHUB_NO_HELPERS, calls
 * Greenhub_ImportCAPI() and the table's functions itself.  The pointer is
 * the same in every interpreter and for every instance of the module (the
 * table is immutable and process-wide; each call finds the calling
 * interpreter's greenhub), so one static pointer is safe.
 */
static const Greenhub_CAPI *Greenhub_API = NULL;

/* 0, or -1 with an exception (ImportError). */
static inline int
Greenhub_Import(void)
{
    if (Greenhub_API == NULL) {
        Greenhub_API = Greenhub_ImportCAPI();
    }
    return Greenhub_API == NULL ? -1 : 0;
}

static inline int
Greenhub__NotImported(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "greenhub's C API is not imported: call Greenhub_Import() first");
    return -1;
}

static inline int
Greenhub_InVirtualThread(void)
{
    return Greenhub_API == NULL ? Greenhub__NotImported() : Greenhub_API->in_vthread();
}

static inline int
Greenhub_WaitFd(int fd, int events, double timeout)
{
    return Greenhub_API == NULL ? Greenhub__NotImported()
                                : Greenhub_API->wait_fd(fd, events, timeout);
}

static inline PyObject *
Greenhub_Await(PyObject *awaitable)
{
    if (Greenhub_API == NULL) {
        Greenhub__NotImported();
        return NULL;
    }
    return Greenhub_API->await_(awaitable);
}
#endif /* GREENHUB_NO_HELPERS */

#ifdef __cplusplus
}
#endif

#endif /* GREENHUB_H */
