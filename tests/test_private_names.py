"""The private-name contract (greenhub/_private.py) against the running Python.

Every entry of ``_private.NAMES`` must be true here: the name exists exactly on the
versions the entry gives, it is of the recorded kind, and what greenhub calls or
overrides still takes the parameters greenhub was written against.  Then three scans
keep the table complete - the private names greenhub's Python code uses, the stock
methods and attributes its classes replace, the names its C code looks up - and one
keeps greenhub's modules from reaching a private stdlib name other than through
_private.py.  A failure names the missing name and what greenhub needs it for; see
docs/development.md, "The private-name contract".
"""

import ast
import functools
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import greenhub
from greenhub import _private
from greenhub._private import (
    ATTRIBUTE,
    CLASS,
    FUNCTION,
    METHOD,
    NAMES,
    OVERRIDDEN_ATTRIBUTE,
    OVERRIDDEN_METHOD,
    VALUE,
)

PACKAGE = Path(greenhub.__file__).resolve().parent
SOURCE_TREE = Path(__file__).resolve().parent.parent
RUNNING = sys.version_info[:2]
HERE = "%d.%d" % RUNNING

MODULE_KINDS = (CLASS, FUNCTION, VALUE)
CLASS_KINDS = (METHOD, ATTRIBUTE, OVERRIDDEN_METHOD, OVERRIDDEN_ATTRIBUTE)
CALLABLE_KINDS = (FUNCTION, METHOD, OVERRIDDEN_METHOD)


def _version(text):
    major, minor = text.split(".")
    return int(major), int(minor)


def _in_versions(versions, version=RUNNING):
    """ "3.11+" or "3.11-3.13" (inclusive)."""
    if versions.endswith("+"):
        return version >= _version(versions[:-1])
    first, last = versions.split("-")
    return _version(first) <= version <= _version(last)


def _resolve(dotted):
    """The module, class or function at `dotted`, or None where it does not exist."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj
    return None


def _third_party(entry):
    return entry.owner.split(".")[0] not in sys.stdlib_module_names


@functools.cache
def _source(obj):
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):  # C, or no source installed
        return ""


def _assigned(owner, name):
    """Does the owner's code set ``<something>.name = ...`` (an instance attribute)?
    For a class: the source of any class in its MRO; for a function: its own."""
    pattern = re.compile(r"\.%s\s*(:[^=\n]*)?=(?!=)" % re.escape(name))
    objs = owner.__mro__ if isinstance(owner, type) else (owner,)
    return any(pattern.search(_source(obj)) for obj in objs)


def _has(owner, entry):
    if inspect.ismodule(owner):
        return hasattr(owner, entry.name)
    if entry.kind in (ATTRIBUTE, OVERRIDDEN_ATTRIBUTE):
        return hasattr(owner, entry.name) or _assigned(owner, entry.name)
    return hasattr(owner, entry.name)


def _params(obj, is_method):
    """The parameter list without self and defaults: "fd, callback, *args"."""
    params = list(inspect.signature(obj).parameters.values())
    if is_method and params and params[0].name == "self":
        params = params[1:]
    plain = [p.replace(default=p.empty, annotation=p.empty) for p in params]
    return str(inspect.Signature(plain))[1:-1]


def _expected_params(params):
    if isinstance(params, str):
        return params
    since = [v for v in params if _version(v) <= RUNNING]
    return params[max(since, key=_version)]


def _describe(entry):
    return (
        f"{entry.owner}.{entry.name} ({entry.kind}), used in greenhub ({entry.used_in}) "
        f"for: {entry.need}"
    )


# -- the table ----------------------------------------------------------------------


def test_table_is_well_formed():
    seen = set()
    for entry in NAMES:
        assert (entry.owner, entry.name) not in seen, f"{entry.owner}.{entry.name} twice"
        seen.add((entry.owner, entry.name))
        assert entry.kind in MODULE_KINDS + CLASS_KINDS, entry
        assert re.fullmatch(r"3\.\d+(\+|-3\.\d+)", entry.versions), entry
        assert entry.need and entry.used_in, entry
        if isinstance(entry.params, dict):
            assert entry.params and all(re.fullmatch(r"3\.\d+", v) for v in entry.params)
        if entry.params is not None:
            assert entry.kind in CALLABLE_KINDS + (CLASS,), entry


@pytest.mark.parametrize("entry", NAMES, ids=lambda e: f"{e.owner}.{e.name}")
def test_private_name(entry):
    if _third_party(entry):
        pytest.importorskip(entry.owner.split(".")[0])
    owner = _resolve(entry.owner)
    expected = _in_versions(entry.versions)
    present = owner is not None and _has(owner, entry)
    if expected and not present:
        pytest.fail(
            f"Python {HERE} has no {entry.owner}.{entry.name}"
            + ("" if owner is not None else f" ({entry.owner} itself is gone)")
            + f".  greenhub needs {_describe(entry)}.  Adapt greenhub, then record the "
            f"versions that have it in greenhub/_private.py (now {entry.versions!r})."
        )
    if present and not expected:
        pytest.fail(
            f"greenhub/_private.py says {entry.owner}.{entry.name} exists on "
            f"{entry.versions}, but Python {HERE} has it: correct its versions.  "
            f"({_describe(entry)})"
        )
    if not present:
        return
    if inspect.ismodule(owner) != (entry.kind in MODULE_KINDS):
        pytest.fail(
            f"{entry.owner} is {'a module' if inspect.ismodule(owner) else 'not a module'}, "
            f"which does not fit the kind {entry.kind!r} of {entry.name}"
        )
    value = getattr(owner, entry.name, None)
    if entry.kind == CLASS and not isinstance(value, type):
        pytest.fail(
            f"Python {HERE}: {entry.owner}.{entry.name} is no class: {value!r}.  "
            f"greenhub needs {_describe(entry)}"
        )
    if entry.kind in CALLABLE_KINDS and not callable(value):
        pytest.fail(
            f"Python {HERE}: {entry.owner}.{entry.name} is not callable: {value!r}.  "
            f"greenhub needs {_describe(entry)}"
        )
    if entry.params is not None:
        expected_params = _expected_params(entry.params)
        try:
            actual = _params(value, is_method=entry.kind in (METHOD, OVERRIDDEN_METHOD))
        except (TypeError, ValueError) as exc:
            pytest.fail(
                f"no signature for {entry.owner}.{entry.name} on Python {HERE} "
                f"({exc}): set its params to None in greenhub/_private.py"
            )
        if actual != expected_params:
            pytest.fail(
                f"On Python {HERE} the parameters of {entry.owner}.{entry.name} are "
                f"({actual}); greenhub was written for ({expected_params}).  "
                f"greenhub needs {_describe(entry)}.  Adapt the code in {entry.used_in}, "
                f"then record the new parameters, from {HERE} on, in greenhub/_private.py."
            )


def test_version_conditions():
    """What _private.py resolves by version agrees with the table and with Python."""
    import asyncio.base_events
    import asyncio.format_helpers
    import asyncio.selector_events

    setup = next(e for e in NAMES if e.name == "_run_forever_setup")
    assert _private.HAVE_RUN_FOREVER_SETUP == _in_versions(setup.versions)
    assert _private.HAVE_RUN_FOREVER_SETUP == hasattr(
        asyncio.base_events.BaseEventLoop, "_run_forever_setup"
    )
    # Socket transports take a context where the stock loop's transport factories do.
    stock_loop = asyncio.selector_events.BaseSelectorEventLoop
    for factory in (stock_loop._make_socket_transport, stock_loop._make_ssl_transport):
        assert _private.TRANSPORT_CONTEXT == ("context" in inspect.signature(factory).parameters)

    def callback(a, b):
        pass

    stock = asyncio.format_helpers._format_callback_source
    for debug in (False, True):
        if "debug" in inspect.signature(stock).parameters:
            expected = stock(callback, (1, 2), debug=debug)
        else:
            expected = stock(callback, (1, 2))
        assert _private.format_callback_source(callback, (1, 2), debug) == expected


# -- completeness ---------------------------------------------------------------------

PRIVATE = re.compile(r"_[A-Za-z][A-Za-z0-9_]*")

# Private-looking strings and attributes in greenhub's code that name nothing of the
# standard library's or another library's, and that the scan cannot tell are greenhub's
# own (attributes of greenhub classes that derive from a foreign class, strings).
NOT_FOREIGN = {
    "_greenhub_worker": "a name in greenhub._vthread's worker base code",
    "_thread": "a module name (greenhub.monkey's patch labels)",
    "_socket": "a module name (compared with __module__)",
    "_tasks": "greenhub._colours._Home's own attribute (an Executor subclass)",
    "_work": "greenhub._colours._Home's own attribute (an Executor subclass)",
    "_stock": "greenhub.contrib.django ASGIHandler's own attribute",
    "_benchmarks": "greenhub/_benchmarks, the benchmark scripts setup.py puts in the wheel",
}


def _private_name(name):
    return bool(PRIVATE.fullmatch(name)) and not name.startswith("__")


def _in_benchmarks(path):
    # greenhub/_benchmarks/ (in an installed wheel: the benchmark scripts that
    # `python -m greenhub bench` runs) is not greenhub's code: scripts, not modules.
    return "_benchmarks" in path.relative_to(PACKAGE).parts


def _python_files():
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "_private.py" and not _in_benchmarks(p)
    )


def _greenhub_modules():
    """Every greenhub module (contrib ones where their library is installed)."""
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _in_benchmarks(path):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        try:
            modules.append(importlib.import_module(".".join(parts)))
        except ImportError:
            continue
    return modules


def _own_names(trees):
    """Names greenhub defines itself: functions, classes, module-level names, slots,
    attributes set on self in classes whose bases are all greenhub's, and everything the
    C module and its types define.  (`_gh_*` is greenhub's prefix by convention.)"""
    own = set()
    classes = {n.name for tree in trees for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    for tree in trees:
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            own.update(t.id for t in targets if isinstance(t, ast.Name))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                own.update(
                    c.value
                    for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
            if isinstance(node, ast.ClassDef) and all(
                (isinstance(b, ast.Name) and b.id in classes | {"object", "Generic", "Protocol"})
                or isinstance(b, ast.Subscript)
                for b in node.bases
            ):
                own.update(
                    n.attr
                    for n in ast.walk(node)
                    if isinstance(n, ast.Attribute)
                    and isinstance(n.ctx, ast.Store)
                    and isinstance(n.value, ast.Name)
                    and n.value.id == "self"
                )
    for obj in vars(greenhub._core).values():
        if isinstance(obj, type) and obj.__module__ == "greenhub._core":
            own.update(vars(obj))
    own.update(vars(greenhub._core))
    return own


def test_every_foreign_private_name_greenhub_uses_is_in_the_table():
    """A private attribute or name string in greenhub's Python code is greenhub's own,
    or it is in the table."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in _python_files()}
    own = _own_names(trees.values()) | {p.name.split(".")[0] for p in PACKAGE.rglob("*")}
    listed = {e.name for e in NAMES}
    missing = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            else:
                continue
            if (
                _private_name(name)
                and not name.startswith("_gh")
                and name not in own
                and name not in listed
                and name not in NOT_FOREIGN
            ):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                missing.setdefault(name, where)
    assert not missing, (
        "private names used by greenhub that are neither greenhub's own nor in the "
        "table of greenhub/_private.py (add an entry: owner, kind, versions, need): "
        + ", ".join(f"{n} ({w})" for n, w in sorted(missing.items()))
    )


# What abc and typing set on every class they make.
CLASS_MACHINERY = {"_abc_impl", "_is_protocol", "_is_runtime_protocol"}


def _is_greenhub(cls):
    return cls.__module__.split(".")[0] == "greenhub"


def test_every_stock_name_greenhub_overrides_is_in_the_table():
    """A private method or attribute that a greenhub class defines (in Python or in C)
    and that one of its foreign base classes also has is an override: listed."""
    overrides = {}
    for entry in NAMES:
        if entry.kind in (OVERRIDDEN_METHOD, OVERRIDDEN_ATTRIBUTE):
            owner = _resolve(entry.owner)
            if owner is not None:
                overrides.setdefault(entry.name, []).append(owner)
    classes = {
        obj
        for module in _greenhub_modules()
        for obj in vars(module).values()
        if isinstance(obj, type) and _is_greenhub(obj)
    }
    missing = []
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        foreign = [b for b in cls.__mro__ if not _is_greenhub(b) and b is not object]
        mine = {
            name
            for b in cls.__mro__
            if _is_greenhub(b)
            for name in vars(b)
            if _private_name(name) and not name.startswith("_gh") and name not in CLASS_MACHINERY
        }
        for name in sorted(mine):
            bases = [b for b in foreign if name in vars(b) or _assigned(b, name)]
            if not bases:
                continue
            if not any(owner in cls.__mro__ for owner in overrides.get(name, ())):
                missing.append(f"{cls.__module__}.{cls.__qualname__}.{name} (over {bases[0]})")
    assert not missing, (
        "greenhub classes replace these stock names, which the table of "
        "greenhub/_private.py does not list as overridden: " + ", ".join(missing)
    )


C_LOOKUP = re.compile(
    r"(?:PyObject_(?:GetAttrString|SetAttrString|HasAttrString|CallMethod)|import_attr|intern"
    r"|PyUnicode_InternFromString)\("
    r"[^;]*?\"(_[A-Za-z][A-Za-z0-9_]*)\"",
    re.S,
)


def test_every_private_name_the_c_code_looks_up_is_in_the_table():
    sources = sorted((SOURCE_TREE / "src").glob("*.c"))
    if not sources:
        pytest.skip("no src/*.c here: the suite runs against an installed greenhub")
    listed = {}
    for entry in NAMES:
        listed.setdefault(entry.name, []).append(entry.used_in)
    missing = []
    for path in sources:
        for name in C_LOOKUP.findall(path.read_text()):
            if name.startswith("_gh"):
                continue
            if not any(path.name in used_in for used_in in listed.get(name, ())):
                missing.append(f"{name} (src/{path.name})")
    assert not missing, (
        "private names the C extension looks up by name, which the table of "
        "greenhub/_private.py does not list with that file: " + ", ".join(missing)
    )


# -- only through _private ------------------------------------------------------------

# Documented in the library reference despite the underscore.
DOCUMENTED_MODULES = {"_thread"}


def _stdlib(module_name):
    return module_name.split(".")[0] in sys.stdlib_module_names


def _type_checking_nodes(tree):
    """Nodes under ``if TYPE_CHECKING:``: typeshed's private aliases, never run."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for stmt in node.body:
                skip.update(map(id, ast.walk(stmt)))
    return skip


def _module_aliases(tree):
    """Local name -> module, for every import of a standard-library module."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if not _stdlib(a.name):
                    continue
                if a.asname:  # import a.b as c: c is a.b
                    aliases[a.asname] = importlib.import_module(a.name)
                else:  # import a.b: a is a
                    top = a.name.split(".")[0]
                    aliases[top] = importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _stdlib(node.module):
            parent = importlib.import_module(node.module)
            for a in node.names:
                value = getattr(parent, a.name, None)
                if inspect.ismodule(value):
                    aliases[a.asname or a.name] = value
    return aliases


def _module_of(expr, aliases):
    """The module an expression like ``asyncio.events`` names, or None."""
    if isinstance(expr, ast.Name):
        return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
        parent = _module_of(expr.value, aliases)
        value = getattr(parent, expr.attr, None) if parent is not None else None
        return value if inspect.ismodule(value) else None
    return None


def _bypasses(path):
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    aliases = _module_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if _stdlib(a.name) and _private_name(top) and top not in DOCUMENTED_MODULES:
                    found.append(f"{where}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _stdlib(node.module):
            for a in node.names:
                if _private_name(a.name):
                    found.append(f"{where}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Attribute) and _private_name(node.attr):
            module = _module_of(node.value, aliases)
            if module is not None:
                found.append(f"{where}: {module.__name__}.{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private_name(node.args[1].value)
        ):
            module = _module_of(node.args[0], aliases)
            if module is not None:
                found.append(f"{where}: {node.func.id}({module.__name__}, {node.args[1].value!r})")
    return found


def test_private_stdlib_names_only_through_private_module():
    found = [b for path in _python_files() for b in _bypasses(path)]
    assert not found, (
        "greenhub reaches these private standard-library names directly; import them "
        "from greenhub._private (with an entry in its table) instead: " + "; ".join(found)
    )
