"""Build greenhub's C extension against the system's libev.

libev is found by a header-and-library probe: $LIBEV_PREFIX first (for libev
installed under another prefix), then the standard system locations.  When it
is missing the build stops with a message naming the package to install.

Environment:
  LIBEV_PREFIX=/opt/libev   look for include/ev.h and lib/libev.so there first
  GREENHUB_DEBUG=1          -O0 -g, assertions on (make debug)
  GREENHUB_WERROR=1         treat compiler warnings as errors (CI)
"""
import glob
import os
import sys
import sysconfig

from setuptools import Extension, setup


def _lib_dirs(prefix):
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = [os.path.join(prefix, "lib")]
    if multiarch:
        dirs.append(os.path.join(prefix, "lib", multiarch))
    dirs.append(os.path.join(prefix, "lib64"))
    return dirs


def find_libev():
    prefixes = []
    if os.environ.get("LIBEV_PREFIX"):
        prefixes.append(os.environ["LIBEV_PREFIX"])
    prefixes += ["/usr", "/usr/local"]
    for prefix in prefixes:
        include = os.path.join(prefix, "include")
        if not os.path.exists(os.path.join(include, "ev.h")):
            continue
        for libdir in _lib_dirs(prefix):
            if glob.glob(os.path.join(libdir, "libev.so*")) or os.path.exists(
                os.path.join(libdir, "libev.a")
            ):
                return include, libdir
    where = ", ".join(prefixes)
    sys.exit(
        "greenhub: libev was not found (looked for include/ev.h and lib/libev.so under "
        f"{where}).\nInstall it with:  apt-get install libev-dev   (Debian/Ubuntu; "
        "'libev-devel' on Fedora)\nor point LIBEV_PREFIX at the prefix where libev is installed."
    )


def greenlet_include():
    try:
        import greenlet
    except ImportError:
        sys.exit("greenhub: the build needs greenlet's C header: pip install 'greenlet>=3.0'")
    here = os.path.dirname(greenlet.__file__)
    if not os.path.exists(os.path.join(here, "greenlet.h")):
        sys.exit(f"greenhub: greenlet.h not found in {here}; install greenlet>=3.0")
    return here


def extension():
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        # The ready queue relies on the GIL for its locking (src/loop.c).
        sys.exit("greenhub does not support free-threaded CPython builds yet")
    include, libdir = find_libev()
    compile_args = ["-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"]
    if os.environ.get("GREENHUB_DEBUG") == "1":
        compile_args += ["-O0", "-g3", "-UNDEBUG", "-DGH_DEBUG=1"]
    else:
        compile_args += ["-O2"]
    if os.environ.get("GREENHUB_WERROR") == "1":
        compile_args.append("-Werror")
    sources = sorted(glob.glob("src/*.c"))
    return Extension(
        "greenhub._core",
        sources=sources,
        depends=sorted(glob.glob("src/*.h")),
        include_dirs=([include] if include != "/usr/include" else []) + [greenlet_include()],
        library_dirs=[libdir],
        runtime_library_dirs=[libdir] if libdir.startswith(("/opt", "/home")) else [],
        libraries=["ev"],
        extra_compile_args=compile_args,
    )


setup(ext_modules=[extension()])
