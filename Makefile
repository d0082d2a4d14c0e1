# greenhub - developer commands.  `make help` lists them.
PY ?= python3
PIP = $(PY) -m pip
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help deps build debug demo test test-unit test-compat test-pg test-upstream bench soak lint format clean

help:
	@echo "make demo        install what is missing, build, run the showcase"
	@echo "make test        install what is missing, build, run every test"
	@echo "make build       build the C extension in place (PY=python3.x to pick)"
	@echo "make debug       debug build: -O0 -g, assertions on"
	@echo "make test-unit   pytest suite only;  make test-compat  CPython's suites only"
	@echo "                 (COMPAT_GROUPS=default|io|all, default all;"
	@echo "                 COMPAT_BASELINE=full also runs every module on the stock loop)"
	@echo "make test-pg     the database tests against a throwaway PostgreSQL (.ci/pg run CMD: any)"
	@echo "make test-upstream  anyio's, aiohttp's and others' own test suites, stock loop vs greenhub"
	@echo "                 (UPSTREAM_ARGS=--quick for the subset CI runs)"
	@echo "make bench       benchmarks: greenhub vs asyncio vs uvloop (and vthread peers), echo, HTTP"
	@echo "make soak        20-minute soak: 10,000 churning connections, waves of 10,000 virtual"
	@echo "                 threads; server RSS and counters (SOAK_ARGS=--quick: about 1 minute)"
	@echo "make lint        ruff + clang-format checks;  make format  applies them"

# System and Python packages a fresh Debian machine lacks.
deps:
	@if [ ! -f /usr/include/ev.h ] && [ -z "$$LIBEV_PREFIX" ]; then \
	    echo "installing libev-dev"; \
	    (apt-get update -qq && apt-get install -y -qq libev-dev) >/dev/null; \
	fi
	@$(PY) -c "import setuptools, greenlet, pytest, pytest_timeout, trustme, aiohttp, httpx, websockets, requests" \
	    2>/dev/null || $(PIP) install -q --disable-pip-version-check --root-user-action=ignore \
	        setuptools wheel "greenlet>=3.0" pytest pytest-timeout trustme aiohttp httpx websockets requests
	@$(PY) -c "import psycopg, psycopg_pool, asyncpg, sqlalchemy; assert sqlalchemy.__version__ >= '2'" \
	    2>/dev/null || $(PIP) install -q --disable-pip-version-check --root-user-action=ignore \
	        "psycopg[binary]>=3.2" psycopg-pool asyncpg "sqlalchemy>=2"
	@$(PY) -c "import django, uvicorn; assert django.VERSION[:2] >= (5, 2)" \
	    2>/dev/null || $(PIP) install -q --disable-pip-version-check --root-user-action=ignore \
	        "django>=5.2,<6" uvicorn
	@$(PY) -c "import anyio, pytest_asyncio, redis" \
	    2>/dev/null || $(PIP) install -q --disable-pip-version-check --root-user-action=ignore \
	        anyio "pytest-asyncio>=1.4" redis

# A debug build leaves a marker per interpreter (build/debug<EXT_SUFFIX>), so that the
# next `make build` for that interpreter rebuilds instead of keeping the debug objects.
EXT_SUFFIX = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
DEBUG_MARK = build/debug$(EXT_SUFFIX)

build: deps
	$(PY) setup.py -q build_ext --inplace $$([ -f "$(DEBUG_MARK)" ] && echo --force)
	rm -f "$(DEBUG_MARK)"

debug: deps
	GREENHUB_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	mkdir -p build && touch "$(DEBUG_MARK)"

demo: build
	$(PY) examples/demo.py

test-unit: build
	$(PY) -m pytest -q tests

# CPython's suites: the scheduling ones (default) and the I/O ones (io).  Every module
# runs whole on greenhub; the stock loop runs only what greenhub did not pass
# (COMPAT_BASELINE=full: every module on both loops, the whole comparison table).
COMPAT_GROUPS ?= all
COMPAT_BASELINE ?= on-demand
test-compat: build
	$(PY) compat/run_cpython.py --baseline $(COMPAT_BASELINE) $(addprefix --group ,$(COMPAT_GROUPS))

test: test-unit test-compat

# The PostgreSQL tests (tests/test_pg_*.py) against a throwaway cluster that .ci/pg
# starts and removes; `.ci/pg run make test` runs everything with one.
test-pg: build
	PY=$(PY) .ci/pg run $(PY) -m pytest -q tests/test_pg_*.py tests/test_django.py

# Upstream projects' own suites (from their sdists, cached in ~/.cache/greenhub/upstream):
# stock loop vs greenhub, test by test.  The whole suites take about an hour on the
# 2-core machine (asgiref, starlette, httpx, aiofiles, janus and aiosqlite about 4 minutes
# of it); CI runs UPSTREAM_ARGS=--quick (anyio, aiohttp) on one Python (compat/README.md).
UPSTREAM_ARGS ?=
test-upstream: build
	$(PY) compat/run_upstream.py --install-deps $(UPSTREAM_ARGS)

# The peers the benchmarks compare with; each benchmark skips a missing one.
BENCH_PEERS = uvloop sqlalchemy greenback asgiref gevent httptools

bench: build
	@$(PY) -c "import uvloop, sqlalchemy, greenback, asgiref, gevent, httptools" 2>/dev/null || \
	    $(PIP) install -q --disable-pip-version-check --root-user-action=ignore $(BENCH_PEERS)
	$(PY) benchmarks/bench_scheduling.py
	$(PY) benchmarks/bench_vthread.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_echo.py
	$(PY) benchmarks/bench_green.py
	@command -v wrk >/dev/null || { echo "installing wrk (bench_http.py's load generator)"; \
	    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || true; }
	$(PY) benchmarks/bench_http.py
	$(PY) benchmarks/bench_django.py

# The soak test (benchmarks/bench_soak.py; benchmarks/README.md): 10 minutes per
# scenario, so it is in neither `make test` nor CI.  matplotlib only draws the PNGs:
# without it the run still writes its JSON.
SOAK_ARGS ?=
soak: build
	@$(PY) -c "import matplotlib" 2>/dev/null || \
	    $(PIP) install -q --disable-pip-version-check --root-user-action=ignore matplotlib || \
	    echo "matplotlib could not be installed: JSON only, no PNG"
	$(PY) benchmarks/bench_soak.py $(SOAK_ARGS)

lint:
	ruff check greenhub tests compat benchmarks examples
	ruff format --check greenhub examples
	clang-format --dry-run --Werror src/*.c src/*.h benchmarks/*.c

format:
	ruff check --fix greenhub tests compat benchmarks examples
	ruff format greenhub examples
	clang-format -i src/*.c src/*.h benchmarks/*.c

clean:
	rm -rf build greenhub/*.so greenhub/__pycache__ tests/__pycache__
