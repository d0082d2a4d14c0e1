"""Build greenhub's C extension against the system's libev.

libev is found by a header-and-library probe: $LIBEV_PREFIX first (for libev
installed under another prefix), then the standard system locations.  When it
is missing the build stops with a message naming the package to install.

Environment:
  LIBEV_PREFIX=/opt/libev   look for include/ev.h and lib/libev.so there first
  GREENHUB_DEBUG=1          -O0 -g, assertions on (make debug)
  GREENHUB_WERROR=1         treat compiler warnings as errors (CI)
  GREENHUB_SANITIZE=1       AddressSanitizer + UndefinedBehaviorSanitizer, -O1 -g,
                            assertions on (make asan; the interpreter must preload
                            the sanitizer runtimes, see docs/development.md)
"""
import glob
import os
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


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
    link_args = []
    if os.environ.get("GREENHUB_SANITIZE") == "1":
        # -O1 keeps the reports' stacks close to the source and the suite fast enough;
        # frame pointers give ASan's fast unwinder whole stacks.  A UB report is fatal
        # even without UBSAN_OPTIONS=halt_on_error=1 (-fno-sanitize-recover).
        # --param asan-stack=0: no redzones around greenhub's stack variables.  greenlet
        # switches by copying stack slices to and from the heap with memcpy; with
        # poisoned redzones in those slices ASan reports the copy, and once a slice is
        # copied back the shadow still describes the frames that were there before, so
        # instrumented code reading its own locals is reported too (both measured:
        # docs/development.md).  Heap, globals and UB checks are unaffected.
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        compile_args += ["-O1", "-g", "-fno-omit-frame-pointer", "-UNDEBUG", "-DGH_DEBUG=1"]
        compile_args += sanitize + ["--param", "asan-stack=0"]
        link_args += sanitize
    elif os.environ.get("GREENHUB_DEBUG") == "1":
        compile_args += ["-O0", "-g3", "-UNDEBUG", "-DGH_DEBUG=1"]
    else:
        compile_args += ["-O2"]
    if os.environ.get("GREENHUB_WERROR") == "1":
        compile_args.append("-Werror")
    sources = sorted(glob.glob("src/*.c"))
    # What `python -m greenhub info` reports as the build flags (_core.BUILD_FLAGS).
    build_flags = " ".join(compile_args + [f"-lev (libev from {libdir})"])
    return Extension(
        "greenhub._core",
        sources=sources,
        depends=sorted(glob.glob("src/*.h")) + ["greenhub/include/greenhub.h"],  # src/capi.c
        include_dirs=([include] if include != "/usr/include" else []) + [greenlet_include()],
        library_dirs=[libdir],
        runtime_library_dirs=[libdir] if libdir.startswith(("/opt", "/home")) else [],
        libraries=["ev"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("GH_BUILD_FLAGS", '"%s"' % build_flags.replace('"', "'"))],
    )


# The benchmark scripts ship in the wheel as greenhub/_benchmarks/, so that
# `python -m greenhub bench` works from an installed package; in the checkout they stay
# in benchmarks/, where the CLI finds them for an in-place build.
BENCHMARK_FILES = ("*.py", "*.c", "README.md")


class BuildPyWithBenchmarks(build_py):
    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "greenhub", "_benchmarks")
        self.mkpath(dest)
        for pattern in BENCHMARK_FILES:
            for path in sorted(glob.glob(os.path.join("benchmarks", pattern))):
                self.copy_file(path, os.path.join(dest, os.path.basename(path)))


setup(ext_modules=[extension()], cmdclass={"build_py": BuildPyWithBenchmarks})
