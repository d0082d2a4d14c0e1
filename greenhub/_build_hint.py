"""Why ``greenhub._core`` did not import, in words a user can act on.

Without this, a greenhub whose C extension is not built for the running interpreter fails
with "cannot import name '_core' from partially initialized module 'greenhub' (most likely
due to a circular import)", which names neither the cause nor the fix.  The usual ways to
get there:

- Python runs from a source checkout (its directory comes first on ``sys.path``) after
  ``pip install .``: the checkout's ``greenhub/`` hides the installed one, and the
  checkout holds no build, or only builds for other Python versions;
- a checkout built in place with ``make build`` for one interpreter, run by another;
- the extension is there but cannot be loaded (libev missing for a source build).

This module must not import ``_core`` or anything that does.
"""

import importlib.machinery
import os
import platform
import sys

_DIST = "greenhub-loop"  # the distribution's name on PyPI; the import name is greenhub


def core_import_error(exc: ImportError) -> ImportError:
    """An ImportError for ``import greenhub`` that says why ``_core`` failed and what to do.

    ``exc`` is the ImportError the import of ``greenhub._core`` raised."""
    here = os.path.dirname(os.path.abspath(__file__))
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    built = [os.path.join(here, "_core" + s) for s in suffixes]
    present = [p for p in built if os.path.exists(p)]
    version = "%s %d.%d" % (platform.python_implementation(), *sys.version_info[:2])
    if present:
        lines = [
            f"greenhub's C extension {present[0]} is there but does not load on this "
            f"Python ({version}, {sys.executable}): {exc}"
        ]
        if "libev" in str(exc):
            lines.append(
                "It was built against the system's libev, which this machine lacks: install "
                "it (apt-get install libev4), or install greenhub's wheel (make wheel), which "
                "carries its own libev."
            )
        else:
            lines.append(f"Rebuild it for this interpreter: {_rebuild_hint(here)}")
        return ImportError("\n".join(lines), name="greenhub._core", path=present[0])

    lines = [
        f"greenhub's C extension is not built for this Python ({version}, {sys.executable}): "
        f"there is no {os.path.basename(built[0])} in {here}."
    ]
    others = sorted(
        name[len("_core") :]
        for name in os.listdir(here)
        if name.startswith("_core.") and name.endswith(".so")
    )
    if others:
        lines.append("That directory has builds for other interpreters only: " + ", ".join(others))
    elsewhere = _built_greenhub_elsewhere(here, suffixes)
    checkout = _checkout_root(here)
    if elsewhere and checkout:
        lines.append(
            f"A built greenhub is at {elsewhere} (installed, or on PYTHONPATH), but the "
            f"source checkout {checkout} comes before it on sys.path - Python runs from the "
            "checkout's directory - and hides it.  Run Python from another directory to use "
            f"the built one, or build the checkout in place: {_rebuild_hint(here)}"
        )
    elif elsewhere:
        lines.append(
            f"A built greenhub is at {elsewhere}, later on sys.path: this copy at {here} "
            "hides it.  Remove this copy or take its directory off sys.path."
        )
    elif checkout:
        lines.append(f"This is a source checkout: build it in place: {_rebuild_hint(here)}")
    else:
        lines.append(
            f"This installation is incomplete or for another Python: reinstall {_DIST} "
            f"with this interpreter ({sys.executable} -m pip install --force-reinstall ...)."
        )
    return ImportError("\n".join(lines), name="greenhub._core", path=here)


def _checkout_root(here: str) -> str | None:
    """The source checkout this greenhub/ belongs to, or None for an installed copy."""
    root = os.path.dirname(here)
    if os.path.exists(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "src")):
        return root
    return None


def _rebuild_hint(here: str) -> str:
    root = _checkout_root(here)
    if root is None:
        return f"{sys.executable} -m pip install --force-reinstall {_DIST}"
    return f"make build PY={sys.executable}  (in {root})"


def _built_greenhub_elsewhere(here: str, suffixes: list[str]) -> str | None:
    """Another greenhub package on sys.path with the extension built for this Python."""
    mine = os.path.realpath(here)
    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "greenhub")
        if os.path.realpath(candidate) == mine:
            continue
        if any(os.path.exists(os.path.join(candidate, "_core" + s)) for s in suffixes):
            return candidate
    return None
