"""Integrations of greenhub with third-party libraries.

Each submodule imports its library only when it is imported itself:

- ``greenhub.contrib.psycopg``: psycopg 3's sync connections wait cooperatively in
  virtual threads (``install()``).
- ``greenhub.contrib.sqlalchemy``: SQLAlchemy's sync ``Engine``/``Session`` from
  virtual threads, over async drivers (``run()``) or cooperative psycopg (``QueuePool``).
- ``greenhub.contrib.django``: Django's sync views and sync ORM in virtual threads under
  an ASGI server, with a connection per virtual thread (``get_asgi_application()``).
"""
