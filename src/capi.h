/*
 * capi.h - the C API for extensions (greenhub/include/greenhub.h); see
 * capi.c.
 */
#ifndef GH_CAPI_H
#define GH_CAPI_H

#include <Python.h>

/* module.c: adds the capsule greenhub._core._C_API to the module.  0, or -1
 * with an exception. */
int gh_capi_init(PyObject *mod);

#endif /* GH_CAPI_H */
