"""greenhub.monkey's patch API and its registry: what is patched, with the originals.

Every ``patch_*()`` function runs the plan of its group (in the module of the green
implementation it installs: ``_time``, ``_select``, ...) through one ``_Batch``,
which checks every target, applies the replacements, records them and rewrites the
references other loaded modules hold; ``unpatch_all()`` puts everything back.  The
package ``greenhub.monkey`` re-exports the public names.
"""

import _thread
import sys
import types
import warnings
from typing import Any

from .._private import _getframe
from ._common import _MISSING
from ._queue import _plan_queue
from ._select import _plan_select
from ._selectors import _plan_selectors
from ._socket import _plan_socket, _plan_ssl
from ._subprocess import _plan_subprocess
from ._threading import _plan_thread
from ._time import _plan_time

_PACKAGE = __name__.rpartition(".")[0]  # greenhub.monkey


class MonkeyPatchWarning(RuntimeWarning):
    """Something loaded before patching keeps using an unpatched original."""


# --------------------------------------------------------------------------
# The registry: what is patched, with the originals to put back


class _Item:
    """One replaced attribute: ``holder.name`` was ``original``."""

    __slots__ = ("holder", "name", "original", "replacement", "label")

    def __init__(self, holder, name, original, replacement, label):
        self.holder = holder
        self.name = name
        self.original = original
        self.replacement = replacement
        self.label = label


_registry_lock = _thread.allocate_lock()  # patch/unpatch may be called from several threads
_applied: dict[
    str, list[_Item]
] = {}  # group ("time", "thread", ...) -> [_Item] in the order applied
_references: dict[
    str, list[tuple[dict[str, Any], str, Any, Any]]
] = {}  # group -> [(module dict, key, original, replacement)] rewritten by the scan
_originals: dict[str, Any] = {}  # label ("time.sleep") -> original, for get_original()

# Modules whose globals the reference scan leaves alone: greenhub keeps the
# originals it builds on; the C modules define them; the import system must
# keep real locks; other monkey-patchers keep their own saved originals.
_SCAN_SKIP = ("greenhub", "_thread", "builtins", "sys", "importlib", "gevent", "eventlet")


def _skip_module(name):
    for prefix in _SCAN_SKIP:
        if name == prefix or name.startswith(prefix + "."):
            return True
    return False


def _qualname(holder, name):
    if isinstance(holder, types.ModuleType):
        return f"{holder.__name__}.{name}"
    return f"{holder.__module__}.{holder.__qualname__}.{name}"


class _Batch:
    """The replacements of one patch call.  Checks every target first (a
    target someone else replaced makes the call fail before anything
    changes), applies them, then rewrites references in loaded modules."""

    def __init__(self):
        self.plans = []  # (group, holder, name, replacement, modules)

    def add(self, group, holder, name, replacement, modules):
        """Plan ``holder.name = replacement``; `modules` are the ``__module__``
        values the current object may have (else it is someone else's)."""
        self.plans.append((group, holder, name, replacement, modules))

    def apply(self):
        planned = []
        for group, holder, name, replacement, modules in self.plans:
            current = holder.__dict__.get(name, _MISSING)
            if current is _MISSING:
                continue  # not on this Python version / platform
            owner = getattr(current, "__module__", None)
            if owner not in modules:
                raise RuntimeError(
                    f"greenhub.monkey: {_qualname(holder, name)} is already replaced by "
                    f"{current!r} (from {owner!r}), probably by another monkey-patcher; "
                    f"greenhub will not patch over it.  Use one patcher per process."
                )
            planned.append(
                (group, _Item(holder, name, current, replacement, _qualname(holder, name)))
            )
        swaps = {}
        for group, item in planned:
            setattr(item.holder, item.name, item.replacement)
            _applied.setdefault(group, []).append(item)
            _originals.setdefault(item.label, item.original)
            if isinstance(item.holder, types.ModuleType):
                swaps[id(item.original)] = (item.original, item.replacement, group)
        _rewrite_references(swaps)


def _module_namespaces():
    """The globals of every loaded module whose names patching may rewrite."""
    for modname, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and not _skip_module(modname):
            yield module.__dict__


def _rewrite_references(swaps):
    """Point module-level names that hold a patched original (``from time
    import sleep`` done before patching) at the replacement."""
    if not swaps:
        return
    for namespace in _module_namespaces():
        for key, value in list(namespace.items()):
            swap = swaps.get(id(value))
            if swap is None or swap[0] is not value:
                continue
            original, replacement, group = swap
            if namespace.get(key) is not value:
                continue
            namespace[key] = replacement
            _references.setdefault(group, []).append((namespace, key, original, replacement))


def _unpatch_group(group):
    for namespace, key, original, replacement in reversed(_references.pop(group, [])):
        if namespace.get(key) is replacement:
            namespace[key] = original
    items = _applied.pop(group, [])
    for item in reversed(items):
        setattr(item.holder, item.name, item.original)
    # Modules imported while patched picked up replacements by name.
    back = {
        id(item.replacement): item for item in items if isinstance(item.holder, types.ModuleType)
    }
    if not back:
        return
    for namespace in _module_namespaces():
        for key, value in list(namespace.items()):
            found = back.get(id(value))
            if found is not None and found.replacement is value:
                namespace[key] = found.original


def _patch(group, plan):
    """Run ``plan(batch)`` unless `group` is already patched (then a no-op)."""
    with _registry_lock:
        if group in _applied:
            return
        batch = _Batch()
        plan(batch)
        batch.apply()
        _applied.setdefault(group, [])


# --------------------------------------------------------------------------
# The patch functions, one per group


def patch_time() -> None:
    """Patch `time.sleep`: in a virtual thread it suspends only that task."""
    _patch("time", _plan_time)


def patch_select() -> None:
    """Patch `select.select`, `select.poll` and `select.epoll`: their waits
    suspend only the calling virtual thread."""
    _patch("select", _plan_select)


def patch_selectors() -> None:
    """Patch the ``select()`` method of `selectors`' selector classes
    (`DefaultSelector` among them), in place: selectors made before
    patching, and classes other modules hold (subprocess, socketserver),
    wait cooperatively in virtual threads too."""
    _patch("selectors", _plan_selectors)


def patch_subprocess() -> None:
    """Patch `subprocess.Popen`'s waits in place: ``wait()``,
    ``communicate()`` and so ``run()``, ``call()``, ``check_output()`` and
    the ``with Popen(...)`` exit suspend only the calling virtual thread."""
    _patch("subprocess", _plan_subprocess)
    # communicate() waits on its pipes through selectors.
    patch_selectors()


def patch_thread() -> None:
    """Patch `threading`'s ``Lock``, ``RLock``, ``Condition``, ``Event``,
    ``Semaphore``, ``BoundedSemaphore`` (the `greenhub.sync` classes),
    ``local`` (one namespace per virtual thread inside virtual threads) and
    ``Thread.join`` (waits cooperatively in a virtual thread).  `_thread`
    itself is left alone: the import system makes its module locks there."""
    _patch("thread", _plan_thread)


def patch_queue() -> None:
    """Patch `queue.Queue`, `queue.LifoQueue` and `queue.PriorityQueue` with
    `greenhub.sync`'s (same interface, same `queue.Empty`/`queue.Full`)."""
    _patch("queue", _plan_queue)


def patch_socket() -> None:
    """Patch `socket.socket` with `greenhub.socket.socket` (so `socketpair`,
    `create_connection`, `create_server`, `fromfd` and ``accept()`` make
    green sockets too) and the blocking name lookups (``getaddrinfo`` & co.,
    which run in the loop's executor from a virtual thread)."""
    _patch("socket", _plan_socket)
    _warn_subclasses(
        "socket", "socket.socket", handled=("ssl.SSLSocket",) if is_patched("ssl") else ()
    )


def _warn_subclasses(group, label, handled=()):
    """Report classes derived from a replaced class before it was replaced:
    their instances keep the original's blocking behaviour."""
    original = _originals.get(label)
    if original is None or not is_patched(label):
        return
    found, todo = [], list(original.__subclasses__())
    while todo:
        cls = todo.pop()
        name = f"{cls.__module__}.{cls.__qualname__}"
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("greenhub") or name in handled:
            continue
        found.append(name)
    if found:
        warnings.warn(
            f"greenhub.monkey: classes derived from the original {label} before patching "
            f"keep its blocking calls, which hold up the whole loop in virtual threads: "
            f"{', '.join(sorted(found))}.  Patch before importing the modules that define "
            f"them.",
            MonkeyPatchWarning,
            stacklevel=_caller_stacklevel(),
        )


def _in_package(name):
    return isinstance(name, str) and (name == _PACKAGE or name.startswith(_PACKAGE + "."))


def _caller_stacklevel():
    """warnings.warn's stacklevel for the first frame outside greenhub.monkey."""
    frame: types.FrameType | None = _getframe(1)
    level = 1
    while frame is not None and _in_package(frame.f_globals.get("__name__")):
        frame, level = frame.f_back, level + 1
    return level


def patch_ssl() -> None:
    """Make every `ssl.SSLContext` (made before or after patching) wrap
    sockets into `greenhub.ssl.SSLSocket`: TLS handshakes, reads and writes
    suspend only the calling virtual thread."""
    _patch("ssl", _plan_ssl)


# --------------------------------------------------------------------------
# all, undo, inspection


_GROUPS = ("time", "ssl", "socket", "select", "selectors", "thread", "queue", "subprocess")


def patch_all(
    *,
    time: bool = True,
    socket: bool = True,
    ssl: bool = True,
    select: bool = True,
    selectors: bool = True,
    thread: bool = True,
    queue: bool = True,
    subprocess: bool = True,
) -> None:
    """Apply every patch (or the ones left True).  Idempotent; patching a
    group a second time does nothing."""
    flags = {
        "time": (time, patch_time),
        "socket": (socket, patch_socket),
        "ssl": (ssl, patch_ssl),
        "select": (select, patch_select),
        "selectors": (selectors, patch_selectors),
        "thread": (thread, patch_thread),
        "queue": (queue, patch_queue),
        "subprocess": (subprocess, patch_subprocess),
    }
    for group in _GROUPS:
        wanted, patcher = flags[group]
        if wanted:
            patcher()


def unpatch_all() -> None:
    """Undo every patch: each replaced attribute, and each module-level
    reference rewritten, is the original object again.  Objects made while
    patched (a greenhub Lock from `threading.Lock()`) stay what they are."""
    with _registry_lock:
        for group in reversed(list(_applied)):
            _unpatch_group(group)


def is_patched(name: str) -> bool:
    """True if `name` is patched: a group (``"time"``, ``"socket"``,
    ``"ssl"``, ``"select"``, ``"selectors"``, ``"thread"``, ``"queue"``,
    ``"subprocess"``) or a dotted attribute (``"time.sleep"``,
    ``"threading.Lock"``, ``"selectors.EpollSelector.select"``)."""
    if not isinstance(name, str):
        raise TypeError(f"is_patched() needs a group or dotted name, got {name!r}")
    if name in _GROUPS:
        return name in _applied
    return any(item.label == name for items in _applied.values() for item in items)


def patched() -> dict[str, list[str]]:
    """What is patched now: ``{group: [dotted names]}``, including other
    modules' references that the patch rewrote (``"mymodule.sleep"``)."""
    with _registry_lock:
        result = {}
        for group, items in _applied.items():
            names = [item.label for item in items]
            for namespace, key, _, _ in _references.get(group, ()):
                names.append(f"{namespace.get('__name__', '?')}.{key}")
            result[group] = names
        return result


def get_original(name: str) -> Any:
    """The original object behind a dotted name such as ``"time.sleep"``,
    whether patched now or not."""
    if not isinstance(name, str) or "." not in name:
        raise TypeError(f"get_original() needs a dotted name such as 'time.sleep', got {name!r}")
    if name in _originals and is_patched(name):
        return _originals[name]
    module_name, _, attr = name.rpartition(".")
    obj = _resolve_dotted(module_name)
    return getattr(obj, attr)


def _resolve_dotted(name):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj = module
            for part in parts[i:]:
                obj = getattr(obj, part)
            return obj
    raise LookupError(f"greenhub.monkey.get_original: no loaded module in {name!r}")
