/*
 * green_sock.h - the blocking calls of greenhub.socket: system calls that
 * wait on the loop in a virtual thread and in poll() elsewhere; see
 * green_sock.c.
 */
#ifndef GH_GREEN_SOCK_H
#define GH_GREEN_SOCK_H

#include <Python.h>

#include "state.h"

/* module.c: adds _green_recv, _green_recv_into, _green_send,
 * _green_sendall, _green_wait and _green_closing to the module, and fills
 * st->gs.timeout_attr. */
int gh_green_sock_init(PyObject *mod, gh_state *st);
void gh_green_sock_clear(gh_state *st);
int gh_green_sock_traverse(gh_state *st, visitproc visit, void *arg);

#endif /* GH_GREEN_SOCK_H */
