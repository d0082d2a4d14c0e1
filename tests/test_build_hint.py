"""``import greenhub`` without a loadable C extension names the cause and the fix.

Each case copies greenhub's Python files (no extension) somewhere else and imports them in a
child interpreter, the way a user meets the problem: Python run from a checkout after
``pip install .``, a checkout built for another interpreter, an installed copy that lost its
extension, an extension that does not load.  No loop is involved, so there is no stock-loop
side to compare with.
"""

import os
import shutil
import subprocess
import sys
import sysconfig

import greenhub

EXT = sysconfig.get_config_var("EXT_SUFFIX")
BUILT = os.path.dirname(os.path.dirname(os.path.abspath(greenhub.__file__)))


def _copy_package(root):
    """greenhub's Python files under root/greenhub, without any build of _core."""
    shutil.copytree(
        os.path.dirname(greenhub.__file__),
        root / "greenhub",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    return root / "greenhub"


def _import_greenhub(cwd, *flags, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [sys.executable, *flags, "-c", "import greenhub"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "partially initialized" not in proc.stderr, proc.stderr
    assert "\nImportError: " in proc.stderr, proc.stderr
    return proc.stderr[proc.stderr.index("\nImportError: ") + 1 :]


def test_checkout_without_build_hides_the_built_greenhub(tmp_path):
    # `pip install .`, then `python` in the checkout: its greenhub/ comes first on sys.path.
    checkout = tmp_path / "checkout"
    _copy_package(checkout)
    (checkout / "setup.py").write_text("")
    (checkout / "src").mkdir()
    msg = _import_greenhub(checkout, pythonpath=BUILT)
    assert "C extension is not built for this Python" in msg
    assert f"no _core{EXT} in {checkout / 'greenhub'}" in msg
    assert f"A built greenhub is at {os.path.join(BUILT, 'greenhub')}" in msg
    assert f"source checkout {checkout} comes before it on sys.path" in msg
    assert "Run Python from another directory" in msg
    assert f"make build PY={sys.executable}" in msg


def test_checkout_built_for_another_python(tmp_path):
    checkout = tmp_path / "checkout"
    pkg = _copy_package(checkout)
    (checkout / "setup.py").write_text("")
    (checkout / "src").mkdir()
    (pkg / "_core.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")
    # -S: no site-packages, so no other greenhub to point at (the installed-wheel run has one).
    msg = _import_greenhub(checkout, "-S")
    assert "builds for other interpreters only: .cpython-39-x86_64-linux-gnu.so" in msg
    assert f"This is a source checkout: build it in place: make build PY={sys.executable}" in msg


def test_installed_copy_without_extension_says_reinstall(tmp_path):
    _copy_package(tmp_path)
    msg = _import_greenhub(tmp_path, "-S")
    assert "C extension is not built for this Python" in msg
    assert f"reinstall greenhub-loop with this interpreter ({sys.executable} -m pip" in msg


def test_extension_that_does_not_load_is_named_with_the_loader_error(tmp_path):
    pkg = _copy_package(tmp_path)
    (pkg / f"_core{EXT}").write_bytes(b"not an ELF file")
    msg = _import_greenhub(tmp_path, "-S")
    assert f"C extension {pkg / ('_core' + EXT)} is there but does not load" in msg
    assert "invalid ELF header" in msg or "file too short" in msg
    assert "greenhub-loop" in msg  # an installed copy: reinstall, not make build
