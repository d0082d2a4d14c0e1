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


# A barrier on the server, for "these queries overlap" without timing them:
# gh_barrier(seq, parties, patience) returns only once `parties` sessions have called it
# (counted with a sequence, whose nextval() is not transactional: every session sees each
# arrival at once), so the first `parties` callers were all in it at the same time; later
# callers pass at once.  Sessions that came one after another would leave the first one
# waiting: after `patience` seconds (a hang detector) it raises, saying how many came.
_BARRIER_FUNCTION = """
create or replace function gh_barrier(seq regclass, parties bigint, patience float8)
returns bigint language plpgsql as $$
declare
    arrived bigint := nextval(seq);
    give_up timestamptz := clock_timestamp() + make_interval(secs => patience);
begin
    loop
        arrived := pg_sequence_last_value(seq);
        exit when arrived >= parties;
        if clock_timestamp() > give_up then
            raise exception 'gh_barrier(%): only % of % sessions were ever in it at once '
                '(gave up after % s): their queries did not overlap',
                seq, arrived, parties, patience;
        end if;
        perform pg_sleep(0.002);
    end loop;
    return arrived;
end
$$
"""


class PgBarrier:
    """One use of gh_barrier: ``call`` is the SQL expression (no parameters, so any
    driver takes it), ``sql`` a query of it, ``query`` the same as a URL query string
    (for tests/django_app's views), ``name`` its sequence."""

    def __init__(self, name, parties, patience):
        self.name = name
        self.parties = parties
        self.patience = patience
        self.call = f"gh_barrier('{name}', {parties}, {patience})"
        self.sql = f"select {self.call}"
        self.query = f"barrier={name}&parties={parties}&patience={patience}"


@pytest.fixture
def pg_barrier(pg_dsn):
    """pg_barrier(parties, patience=30) -> PgBarrier, a new barrier in this module's
    database (patience times support.SLOW).  As a gate: the holders of `parties - 1`
    connections wait in it until the test, having seen what it waited for, joins last."""
    import itertools

    import psycopg
    import support

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_BARRIER_FUNCTION)
    counter = itertools.count()

    def make(parties, patience=30):
        name = f"gh_barrier_{os.getpid()}_{next(counter)}"
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"drop sequence if exists {name}")
            conn.execute(f"create sequence {name}")
        return PgBarrier(name, parties, support.hang_timeout(patience))

    return make
