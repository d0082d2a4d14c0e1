"""A gunicorn worker class that serves ASGI applications on greenhub's loop.

    gunicorn -k greenhub.contrib.gunicorn.Worker app:asgi_app

gunicorn manages the processes (pre-fork, restarts, ``--max-requests``, graceful
reloads on HUP); inside each worker process uvicorn serves the ASGI application, on a
greenhub loop: every request is a virtual thread.  A WSGI application (Flask, ...) is
served by wrapping it in ``greenhub.contrib.wsgi.WSGIMiddleware`` in the module gunicorn
loads.  See docs/guide-deploy.md.

The worker is uvicorn's gunicorn worker with its ``loop`` setting replaced by
``greenhub:new_event_loop``: from the ``uvicorn-worker`` package when it is installed,
else from ``uvicorn.workers`` (deprecated there in favour of that package, so its
DeprecationWarning is silenced here: the choice was made for the user).  Importing this
module needs gunicorn and uvicorn; importing greenhub does not import it.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["Worker"]

_LOOP = "greenhub:new_event_loop"

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="uvicorn.workers")
        warnings.filterwarnings("ignore", "The `uvicorn.workers` module is deprecated")
        from uvicorn.workers import UvicornWorker as _UvicornWorker  # type: ignore[import-not-found,unused-ignore]


class Worker(_UvicornWorker):  # type: ignore[misc,unused-ignore]
    """uvicorn's gunicorn worker on greenhub's event loop (HTTP parser: uvicorn's
    ``auto``, httptools when installed)."""

    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "loop": _LOOP}
