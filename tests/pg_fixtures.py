"""PostgreSQL for the database tests (a pytest plugin, loaded by conftest.py).

The server is a real one: ``.ci/pg start`` (or ``make test-pg``, ``.ci/pg run CMD``)
starts a throwaway cluster on loopback and exports its superuser DSN as
``GREENHUB_TEST_PG_DSN``.  Each test module gets a database of its own (``pg_dsn``),
created empty before its first test and dropped after its last, so modules neither see
nor wait on each other's tables, locks or LISTEN channels.

Without the variable the database tests skip on a developer's machine (with the command
that runs them), but fail where a server is required: in CI (``CI`` set, as CI does) or
with ``GREENHUB_REQUIRE_PG=1`` (``.ci/run`` sets it).  A CI run that quietly skipped
them would pass while testing nothing.
"""

import os
import re
from urllib.parse import urlsplit, urlunsplit

import pytest

DSN_VAR = "GREENHUB_TEST_PG_DSN"


def _required():
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("GREENHUB_REQUIRE_PG", "") not in ("", "0")


@pytest.fixture(scope="session")
def pg_admin_dsn():
    """DSN of the test cluster's superuser on its maintenance database."""
    dsn = os.environ.get(DSN_VAR)
    if dsn:
        return dsn
    msg = f"{DSN_VAR} is not set: run `make test-pg` (or `.ci/pg run make test`)"
    if _required():
        pytest.fail(msg + " - a PostgreSQL server is required here", pytrace=False)
    pytest.skip(msg)


def dsn_with_database(dsn, dbname):
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(scope="module")
def pg_dsn(request, pg_admin_dsn):
    """DSN (postgresql://...) of a new, empty database for this test module."""
    import psycopg

    mod = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    dbname = f"gh_{mod}_{os.getpid()}"[:63]
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield dsn_with_database(pg_admin_dsn, dbname)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def sqlalchemy_url(dsn, driver):
    """The SQLAlchemy URL of a postgresql:// DSN for a driver (psycopg, asyncpg)."""
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)
