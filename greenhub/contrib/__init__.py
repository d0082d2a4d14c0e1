"""Integrations of greenhub with third-party libraries.

Each submodule imports its library only when it is imported itself:

- ``greenhub.contrib.psycopg``: psycopg 3's sync connections wait cooperatively in
  virtual threads (``install()``).
- ``greenhub.contrib.sqlalchemy``: SQLAlchemy's sync ``Engine``/``Session`` from
  virtual threads, over async drivers (``run()``) or cooperative psycopg (``QueuePool``).
- ``greenhub.contrib.django``: Django's sync views and sync ORM in virtual threads under
  an ASGI server, with a connection per virtual thread (``get_asgi_application()``).
- ``greenhub.contrib.wsgi``: any WSGI application (Flask, Bottle, Pyramid) as an ASGI
  application whose requests each run in their own virtual thread (``WSGIMiddleware``).
- ``greenhub.contrib.gunicorn``: a gunicorn worker class, uvicorn's on greenhub's loop
  (``gunicorn -k greenhub.contrib.gunicorn.Worker``).
"""
