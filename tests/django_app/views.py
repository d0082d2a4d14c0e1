import asyncio
import io

from django.db import connection, transaction
from django.http import FileResponse, JsonResponse, StreamingHttpResponse

import greenhub

from .models import Item

# Set by test_django before a request to /atomic/...: the view sets it once its row is
# inserted (uncommitted), so the test knows when to look from another virtual thread.
INSERTED = None


def _pg_sleep(seconds):
    with connection.cursor() as cur:
        cur.execute("select pg_sleep(%s)", [float(seconds)])


def _meet(request):
    """With ``?barrier=NAME&parties=N&patience=S`` (tests/pg_fixtures.py's PgBarrier),
    wait at that barrier on the server first: the request returns only once N sessions
    are in it at the same time."""
    name = request.GET.get("barrier")
    if name:
        with connection.cursor() as cur:
            cur.execute(
                "select gh_barrier(%s::regclass, %s, %s)",
                [name, int(request.GET["parties"]), float(request.GET["patience"])],
            )


def sleep(request, seconds):
    """A sync view whose ORM work waits on the server for `seconds`."""
    _pg_sleep(seconds)
    return JsonResponse({"items": Item.objects.filter(n=-1).count()})


def together(request):
    """A sync view whose ORM work waits on the server at a barrier (``_meet``); it says
    how many of greenhub's pooled connections were in use meanwhile."""
    from django.db import DatabaseError

    import greenhub.contrib.django as ghdj

    try:
        _meet(request)
    except DatabaseError as exc:  # the barrier gave up: say why, in the response
        return JsonResponse({"error": str(exc)}, status=500)
    in_use = ghdj.connection_stats()["default"]["in_use"]
    return JsonResponse({"items": Item.objects.filter(n=-1).count(), "in_use": in_use})


def lookup(request):
    """Three indexed selects (the benchmark's second workload)."""
    ks = [int(k) for k in request.GET.get("k", "1,2,3").split(",")]
    names = [Item.objects.filter(n=k).values_list("name", flat=True).first() for k in ks]
    return JsonResponse({"names": names})


def backend_pid(request):
    """The server process of this virtual thread's connection, read after a short
    wait on the server (and at a barrier, if the request names one: ``_meet``)."""
    _meet(request)
    with connection.cursor() as cur:
        cur.execute("select pg_sleep(0.1), pg_backend_pid()")
        pid = cur.fetchone()[1]
    return JsonResponse({"pid": pid, "wrapper": id(connection.connection)})


def items(request):
    return JsonResponse({"names": sorted(Item.objects.values_list("name", flat=True))})


class _Rollback(Exception):
    pass


def atomic_then_fail(request, name, seconds):
    """Insert a row inside atomic(), wait on the server, then roll back."""
    try:
        with transaction.atomic():
            Item.objects.create(name=name)
            seen = Item.objects.filter(name=name).count()
            if INSERTED is not None:
                INSERTED.set()
            _pg_sleep(seconds)
            raise _Rollback
    except _Rollback:
        pass
    return JsonResponse({"seen_inside": seen, "after": Item.objects.filter(name=name).count()})


def commit(request, name):
    with transaction.atomic():
        Item.objects.create(name=name)
    return JsonResponse({"ok": True})


def count(request, name):
    return JsonResponse({"count": Item.objects.filter(name=name).count()})


def fail(request):
    raise RuntimeError("boom")


async def async_view(request):
    await asyncio.sleep(0.01)
    n = await Item.objects.filter(n=-1).acount()
    return JsonResponse(
        {
            "count": n,
            "in_vthread": greenhub.in_vthread(),
            "middleware": getattr(request, "async_middleware_ran", False),
        }
    )


async def async_view_sync_orm(request):
    """Sync ORM called straight from an async view: refused by Django's async-unsafe
    check on other loops, allowed in a virtual thread, where its waits are cooperative."""
    _pg_sleep(0.01)
    return JsonResponse({"count": Item.objects.filter(n=-1).count()})


def stream(request):
    """A sync streaming response whose iterator queries while it is being sent."""

    def parts():
        for i in range(3):
            _pg_sleep(0.01)
            yield f"part{i}:{Item.objects.filter(n=-1).count()};"

    return StreamingHttpResponse(parts(), content_type="text/plain")


def astream(request):
    async def parts():
        for i in range(3):
            await asyncio.sleep(0)
            yield f"apart{i};".encode()

    return StreamingHttpResponse(parts(), content_type="text/plain")


def file(request):
    return FileResponse(io.BytesIO(b"x" * 200_000), filename="x.bin")


def echo(request):
    return JsonResponse({"method": request.method, "a": request.POST.get("a"), "len": len(request.body)})


def stats(request):
    """The connection pools, read without taking a connection for this request:
    Django's psycopg pool (``OPTIONS["pool"]``) if there is one, and greenhub's
    per-virtual-thread pool (tests/test_pg_disconnects.py)."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    import greenhub.contrib.django as ghdj
    from greenhub.contrib.django import _db

    pool = DatabaseWrapper._connection_pools.get("default")
    ours = ghdj.connection_stats().get("default", {"idle": 0, "in_use": 0})
    slots = _db._pool("default").slots
    ours["waiting"] = len(slots._waiters) if slots is not None else 0
    return JsonResponse(
        {
            "pool": pool.get_stats() if pool is not None else None,
            "pool_nconns": pool._nconns if pool is not None else None,
            "greenhub": ours,
        }
    )
