"""SQLAlchemy on greenhub: the sync ORM in virtual threads, and the asyncio extension.

Run it against a throwaway PostgreSQL (docs/recipe-sqlalchemy.md):

    .ci/pg run python3 examples/recipe_sqlalchemy.py
"""

import asyncio
import os
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import greenhub
import greenhub.contrib.psycopg
import greenhub.contrib.sqlalchemy

DSN = os.environ["GREENHUB_TEST_PG_DSN"]  # postgresql://...


def url(driver):
    return DSN.replace("postgresql://", f"postgresql+{driver}://", 1)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "recipe_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def handler(engine, n):
    """Plain sync ORM code, as in any sync application."""
    with Session(engine) as session:
        session.add(Item(name=f"item {n}"))
        session.commit()
        session.execute(sa.text("select pg_sleep(0.3)"))  # a slow query
        return session.scalar(sa.select(sa.func.count()).select_from(Item))


async def timed(label, tasks):
    t0 = time.perf_counter()
    counts = await asyncio.gather(*tasks)
    print(f"{label}: {len(counts)} sessions in {time.perf_counter() - t0:.2f}s")


async def main():
    # 1. Sync Session over an async driver (asyncpg or psycopg_async): spawn() runs the
    #    handler where SQLAlchemy's async adaptors work.
    engine = sa.create_engine(url("asyncpg"), pool_size=20)
    await greenhub.contrib.sqlalchemy.spawn(Base.metadata.create_all, engine)
    await timed(
        "sync ORM over asyncpg",
        [greenhub.contrib.sqlalchemy.spawn(handler, engine, n) for n in range(20)],
    )
    await greenhub.contrib.sqlalchemy.spawn(engine.dispose)

    # 2. Sync Session over psycopg's sync driver, cooperative: plain greenhub.spawn.
    greenhub.contrib.psycopg.install()
    engine = sa.create_engine(
        url("psycopg"), poolclass=greenhub.contrib.sqlalchemy.QueuePool, pool_size=20
    )
    await timed("sync ORM over psycopg", [greenhub.spawn(handler, engine, n) for n in range(20)])
    engine.dispose()

    # 3. SQLAlchemy's asyncio extension runs on greenhub unchanged.
    aengine = create_async_engine(url("asyncpg"), pool_size=20)

    async def async_handler(n):
        async with AsyncSession(aengine) as session:
            await session.execute(sa.text("select pg_sleep(0.3)"))
            return n

    await timed("AsyncSession over asyncpg", [async_handler(n) for n in range(20)])
    async with aengine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await aengine.dispose()


if __name__ == "__main__":
    greenhub.run(main())
