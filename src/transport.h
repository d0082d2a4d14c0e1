/*
 * transport.h - the C hot paths of greenhub's socket transport (reads, and
 * writes coalesced per loop iteration); see transport.c.
 */
#ifndef GH_TRANSPORT_H
#define GH_TRANSPORT_H

#include <Python.h>

#include "state.h"

struct gh_Loop_s;

/* A transport's queue of data written in this loop iteration and not yet
 * sent.  The transport owns its queue (the `_gh_wq` attribute); while the
 * queue is non-empty the loop's flush list owns a reference to it, and it
 * owns one to its transport, so neither goes away before the data is sent. */
typedef struct gh_WriteQueue {
    PyObject_HEAD struct gh_Loop_s *loop; /* owned */
    PyObject *transport;                  /* owned while queued, else NULL */
    struct gh_WriteQueue *prev, *next;    /* the loop's flush list */
    PyObject **items;                     /* owned bytes objects; PyMem array */
    Py_ssize_t n, cap;
    Py_ssize_t size; /* bytes in items */
    char queued;     /* on the loop's flush list */
} gh_WriteQueue;

extern PyType_Spec gh_write_queue_spec;
extern PyType_Spec gh_transport_base_spec;

/* module.c: the interned names and imports transport.c uses. */
int gh_transport_state_init(gh_state *st);
void gh_transport_state_clear(gh_state *st);

/* Sends the data of every queued transport (end of a loop iteration).
 * Returns -1 with an exception set if sending raised one that must
 * propagate (KeyboardInterrupt, SystemExit, MemoryError). */
int gh_loop_flush_writes(struct gh_Loop_s *loop);

/* Drops the flush list without sending (loop close, GC). */
void gh_loop_clear_writes(struct gh_Loop_s *loop);

#endif /* GH_TRANSPORT_H */
