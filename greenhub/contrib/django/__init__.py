"""Django on virtual threads: sync views and the sync ORM, cooperative, no thread hop.

    # asgi.py of a Django project
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from greenhub.contrib.django import get_asgi_application
    application = get_asgi_application()

    # then: uvicorn mysite.asgi:application --loop greenhub:new_event_loop
    # (or any ASGI server whose event loop is a greenhub loop)

Every request runs Django's sync request path - middleware, view, ORM, template
rendering, ``response.close()`` - directly in the server's task for that request, which
on a greenhub loop is a virtual thread; each database wait suspends only that request.
See docs/recipe-django.md.

``install()`` (which ``get_asgi_application()`` calls) changes, inside virtual threads
only - everywhere else Django and asgiref behave exactly as without it:

- database connections are per virtual thread, pooled across tasks (``_db``);
- Django's async-unsafe check (``SynchronousOnlyOperation``) lets sync ORM calls
  through, because their waits are cooperative there;
- asgiref's ``async_to_sync`` awaits with ``greenhub.await_()`` instead of raising
  (Django's sync path calls async views, async middleware and async signal receivers
  through it), and a thread-sensitive ``sync_to_async`` calls the function right in
  the awaiting task instead of a thread (Django's async ORM API, ``aget()`` & co.);
- psycopg 3's sync connections wait cooperatively (``greenhub.contrib.psycopg``).
"""

import asyncio
from typing import TYPE_CHECKING, Any

from ... import _core
from . import _db

if TYPE_CHECKING:
    from ._asgi import ASGIHandler

__all__ = [
    "ASGIHandler",
    "close_idle_connections",
    "connection_stats",
    "get_asgi_application",
    "install",
    "installed",
    "uninstall",
]

_in_vthread = _core.in_vthread
_await = _core.await_
_get_running_loop = asyncio.get_running_loop

_saved: Any = None  # what install() replaced, for uninstall()


def _django_get_running_loop():
    # Django's async_unsafe looks this name up in django.utils.asyncio at each call
    # and refuses the call when it returns a loop.  Inside a virtual thread the ORM's
    # waits suspend only the task, which is exactly what the check protects, so there
    # it reports no loop; so it does while _db closes a connection from a task's done
    # callback (a close sends a message and never waits).
    if _in_vthread() or _db.closing():
        raise RuntimeError("no running event loop")
    return _get_running_loop()


def _async_to_sync_call(self, *args, **kwargs):
    if _in_vthread():
        return _await(self.awaitable(*args, **kwargs))
    return _saved["AsyncToSync.__call__"](self, *args, **kwargs)


async def _sync_to_async_call(self, *args, **kwargs):
    # thread_sensitive=True asks for "the thread of the surrounding sync code": in a
    # virtual thread that is the task itself.  An explicit executor, a non-sensitive
    # call (asking for parallelism) or a context to run in keep asgiref's threads.
    if self._thread_sensitive and self.context is None and _in_vthread():
        return self.func(*args, **kwargs)
    return await _saved["SyncToAsync.__call__"](self, *args, **kwargs)


def install(*, max_connections: int | None = None, reuse_connections: bool = True) -> None:
    """Make Django's sync ORM and request path at home in virtual threads.

    Idempotent (a later call only changes ``max_connections`` and
    ``reuse_connections``); affects the whole process, but only code running inside
    virtual threads behaves differently.

    `max_connections`: at most this many connections per database alias lent to
    virtual threads of one OS thread at once (others wait for one); None: no cap.
    `reuse_connections`: with ``CONN_MAX_AGE=0`` (Django's default), keep a virtual
    thread's connection open in the pool for the next one (for up to an hour) instead
    of closing it at the end of each request, as Django's ``pool`` option does; False
    closes it, exactly as Django does.  Other ``CONN_MAX_AGE`` values are Django's.
    """
    global _saved
    from asgiref import sync as asgiref_sync
    from django.db import connections
    from django.utils import asyncio as django_asyncio

    gh_psycopg: Any
    try:
        from .. import psycopg as gh_psycopg
    except ImportError:  # pragma: no cover - psycopg is optional (other backends)
        gh_psycopg = None
    if gh_psycopg is not None:
        try:
            gh_psycopg.install()
        except ImportError:
            pass  # psycopg itself is not installed: another database backend
    _db.install(connections, max_connections, reuse_connections)
    if _saved is not None:
        return
    _saved = {
        "get_running_loop": django_asyncio.get_running_loop,
        "AsyncToSync.__call__": asgiref_sync.AsyncToSync.__call__,
        "SyncToAsync.__call__": asgiref_sync.SyncToAsync.__call__,
    }
    django_asyncio.get_running_loop = _django_get_running_loop
    asgiref_sync.AsyncToSync.__call__ = _async_to_sync_call  # type: ignore[method-assign]
    asgiref_sync.SyncToAsync.__call__ = _sync_to_async_call  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo ``install()`` (closes the idle pooled connections of this thread; leaves
    ``greenhub.contrib.psycopg`` installed)."""
    global _saved
    if _saved is None:
        return
    from asgiref import sync as asgiref_sync
    from django.db import connections
    from django.utils import asyncio as django_asyncio

    _db.uninstall(connections)
    django_asyncio.get_running_loop = _saved["get_running_loop"]
    asgiref_sync.AsyncToSync.__call__ = _saved["AsyncToSync.__call__"]  # type: ignore[method-assign]
    asgiref_sync.SyncToAsync.__call__ = _saved["SyncToAsync.__call__"]  # type: ignore[method-assign]
    _saved = None


def installed() -> bool:
    """True while ``install()`` is in effect."""
    return _saved is not None


def get_asgi_application(
    *, max_connections: int | None = None, reuse_connections: bool = True
) -> "ASGIHandler":
    """Set Django up (as ``django.core.asgi.get_asgi_application`` does), call
    ``install()`` with these arguments and return the ASGI application (an
    ``ASGIHandler``)."""
    import django

    django.setup(set_prefix=False)
    install(max_connections=max_connections, reuse_connections=reuse_connections)
    from ._asgi import ASGIHandler

    return ASGIHandler()


def close_idle_connections() -> None:
    """Close the connections pooled for virtual threads of this OS thread that no task
    holds now."""
    _db.close_idle()


def connection_stats() -> dict[str, dict[str, int]]:
    """``{alias: {"idle": n, "in_use": n}}``: this OS thread's pooled connections and
    those held by its running virtual threads."""
    return _db.stats()


def __getattr__(name: str) -> Any:
    if name == "ASGIHandler":  # imports Django's handler modules, so only on demand
        from ._asgi import ASGIHandler

        return ASGIHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
