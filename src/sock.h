/*
 * sock.h - C paths under greenhub.Loop's sock_recv(), sock_recv_into() and
 * sock_sendall(); see sock.c.
 */
#ifndef GH_SOCK_H
#define GH_SOCK_H

#include <Python.h>

#include "state.h"

extern PyType_Spec gh_sockdone_spec;

/* sock.c's part of the loop (gh_Loop.sockw): its reader callbacks, bound to
 * the loop; each owned, made on first use. */
typedef struct {
    PyObject *recv_ready;
    PyObject *recv_into_ready;
} gh_sock_waits;

int gh_sock_waits_traverse(gh_sock_waits *sw, visitproc visit, void *arg);
void gh_sock_waits_clear(gh_sock_waits *sw);

/* Loop methods: _gh_sock_recv(sock, n), _gh_sock_recv_into(sock, buf) and
 * _gh_sock_send(sock, data); each returns None when asyncio's own method
 * must handle the call. */
PyObject *gh_loop_sock_recv(PyObject *op, PyObject *const *args, Py_ssize_t nargs);
PyObject *gh_loop_sock_recv_into(PyObject *op, PyObject *const *args, Py_ssize_t nargs);
PyObject *gh_loop_sock_send(PyObject *op, PyObject *const *args, Py_ssize_t nargs);

/* recv() on a non-blocking socket, as socket.socket.recv() does it: the
 * byte count, -2 for EAGAIN (no exception), -1 with OSError set. */
Py_ssize_t gh_sock_try_recv(int fd, char *buf, Py_ssize_t size);

/* module.c: the interned names and imports sock.c uses. */
int gh_sock_state_init(gh_state *st);
void gh_sock_state_clear(gh_state *st);
int gh_sock_state_traverse(gh_state *st, visitproc visit, void *arg);

#endif /* GH_SOCK_H */
