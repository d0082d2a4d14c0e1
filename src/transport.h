/*
 * transport.h - the C hot paths of greenhub's socket transport (reads, and
 * writes coalesced per loop iteration); see transport.c.
 */
#ifndef GH_TRANSPORT_H
#define GH_TRANSPORT_H

#include <Python.h>

#include "state.h"

/* A socket transport's C state (its `_gh_state` attribute, owned by the
 * transport): the attributes of asyncio's transport that the hot paths read,
 * kept here instead of the instance __dict__ (the mixin's descriptors
 * redirect the Python code's reads and writes), and the queue of data
 * written in this loop iteration and not yet sent.  While the queue is
 * non-empty the loop's flush list owns a reference to the state, and the
 * state one to its transport, so neither goes away before the data is sent. */
typedef struct gh_TransportState {
    PyObject_HEAD struct gh_Loop_s *loop; /* owned */
    /* asyncio's attributes of the same names; each owned, NULL while unset. */
    PyObject *conn_lost, *eof, *empty_waiter, *buffer, *sock, *protocol, *read_ready_cb;
    PyObject *high_water;
    /* The most bytes write() may leave queued for the end of the iteration:
     * the smaller of _high_water and GH_WQ_FLUSH_AT - 1; -1 (send every write
     * at once) while _high_water is unset or not an int. */
    Py_ssize_t hold_max;
    PyObject *transport;                   /* owned while queued, else NULL */
    struct gh_TransportState *prev, *next; /* the loop's flush list */
    PyObject **items;                      /* owned bytes objects; PyMem array */
    Py_ssize_t n, cap;
    Py_ssize_t size; /* bytes in items */
    char queued;     /* on the loop's flush list */
} gh_TransportState;

/* transport.c's part of the loop (gh_Loop.writes): the write queues to send
 * at the end of this iteration; the list owns a reference to each. */
typedef struct {
    gh_TransportState *head, *tail;
} gh_write_queues;

/* Whether any transport has data queued (a forked child drops it). */
static inline int
gh_writes_pending(const gh_write_queues *wq)
{
    return wq->head != NULL;
}

int gh_writes_traverse(gh_write_queues *wq, visitproc visit, void *arg);

extern PyType_Spec gh_transport_state_spec;
extern PyType_Spec gh_transport_base_spec;

/* module.c: the interned names and imports transport.c uses. */
int gh_transport_state_init(gh_state *st);

/* True if `sock` is exactly socket.socket or greenhub.socket.socket: the
 * socket objects whose recv/send the C paths may bypass (a subclass, such
 * as ssl.SSLSocket, may override them). */
static inline int
gh_is_plain_socket(gh_state *st, PyObject *sock)
{
    return Py_IS_TYPE(sock, (PyTypeObject *)st->tr.socket_type) ||
           (st->tr.green_socket_type != NULL &&
            Py_IS_TYPE(sock, (PyTypeObject *)st->tr.green_socket_type));
}
void gh_transport_state_clear(gh_state *st);
int gh_transport_state_traverse(gh_state *st, visitproc visit, void *arg);

/* Sends the data of every queued transport (end of a loop iteration).
 * Returns -1 with an exception set if sending raised one that must
 * propagate (KeyboardInterrupt, SystemExit, MemoryError). */
int gh_writes_flush(gh_Loop *loop);

/* Drops the flush list without sending (loop close, GC). */
void gh_writes_clear(gh_Loop *loop);

#endif /* GH_TRANSPORT_H */
