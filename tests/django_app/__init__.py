"""A small Django project for tests/test_django.py: one model, sync and async views,
served by greenhub.contrib.django's ASGI application against a real PostgreSQL."""


def settings(dsn, **overrides):
    """Django settings for the database at `dsn` (a postgresql:// URL)."""
    from urllib.parse import urlsplit

    url = urlsplit(dsn)
    conf = {
        "DEBUG": False,
        "SECRET_KEY": "greenhub-tests",
        "ALLOWED_HOSTS": ["*"],
        "ROOT_URLCONF": "django_app.urls",
        "INSTALLED_APPS": ["django_app"],
        "MIDDLEWARE": [
            "django.middleware.common.CommonMiddleware",
            "django_app.middleware.async_only",
        ],
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.path.lstrip("/"),
                "USER": url.username or "",
                "PASSWORD": url.password or "",
                "HOST": url.hostname or "",
                "PORT": str(url.port or ""),
                "CONN_MAX_AGE": 60,
            }
        },
        "DEFAULT_AUTO_FIELD": "django.db.models.AutoField",
        "USE_TZ": True,
        "LOGGING_CONFIG": None,
    }
    conf.update(overrides)
    return conf
