# greenhub - developer commands.  `make help` lists them.
PY ?= python3
PIP = $(PY) -m pip
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help deps build debug asan demo docs test test-unit test-compat test-pg test-upstream fuzz bench soak lint format clean
.PHONY: deps-build wheel test-installed typecheck

help:
	@echo "make demo        install what is missing, build, run the showcase"
	@echo "make test        install what is missing, build, run every test"
	@echo "make build       build the C extension in place (PY=python3.x to pick)"
	@echo "make debug       debug build: -O0 -g, assertions on"
	@echo "make asan        AddressSanitizer + UBSan build, pytest suite under them: no report allowed"
	@echo "                 (ASAN_TESTS=tests/test_x.py for one file; the next make build rebuilds)"
	@echo "make test-unit   pytest suite only;  make test-compat  CPython's suites only"
	@echo "                 (COMPAT_GROUPS=default|io|all, default all;"
	@echo "                 COMPAT_BASELINE=full also runs every module on the stock loop)"
	@echo "make test-pg     the database tests against a throwaway PostgreSQL (.ci/pg run CMD: any)"
	@echo "make test-upstream  anyio's, aiohttp's and others' own test suites, stock loop vs greenhub"
	@echo "                 (UPSTREAM_ARGS=--quick for the subset CI runs)"
	@echo "make fuzz        differential fuzzer, greenhub vs the stock loop: random seeds for"
	@echo "                 FUZZ_SECONDS (default 900), or FUZZ_SEEDS=A:B; FUZZ_OPS per program"
	@echo "                 (default 200); stops at the first divergence and shrinks it"
	@echo "make bench       benchmarks: greenhub vs asyncio vs uvloop (and vthread peers), echo, HTTP,"
	@echo "                 Django; JSON, charts and report.md in BENCH_OUT (benchmarks/results/latest)"
	@echo "make soak        20-minute soak: 10,000 churning connections, waves of 10,000 virtual"
	@echo "                 threads; server RSS and counters (SOAK_ARGS=--quick: about 1 minute)"
	@echo "make lint        ruff + clang-format checks, the Python import graph and src/'s include"
	@echo "                 graph against docs/design.md's layers;  make format  applies the formatters"
	@echo "make docs        the docs site (mkdocs, warnings are errors) into site/"
	@echo "make typecheck   mypy --strict: the package, examples/typed_usage.py; stubtest of _core"
	@echo "make wheel       dist/: the sdist and a wheel built from it that carries its own libev"
	@echo "make test-installed  that wheel in a fresh virtualenv: the pytest suite against it"

# What a fresh Debian machine lacks: a C compiler and libev-dev for the build, then the
# Python packages pyproject.toml lists (.ci/deps: the build's requirements; `deps` adds
# the [test] extra, the test matrix).  `make demo` needs only deps-build.
deps-build:
	@if ! command -v cc >/dev/null || { [ ! -f /usr/include/ev.h ] && [ -z "$$LIBEV_PREFIX" ]; }; then \
	    echo "installing gcc and libev-dev"; \
	    (apt-get update -qq && apt-get install -y -qq gcc libev-dev) >/dev/null; \
	fi
	@$(PY) .ci/deps build

deps: deps-build
	@$(PY) .ci/deps test

# A debug or sanitizer build leaves a marker per interpreter (build/debug<EXT_SUFFIX>,
# build/asan<EXT_SUFFIX>), so that the next `make build` for that interpreter rebuilds
# instead of keeping those objects (and `make asan` rebuilds a release or debug build).
EXT_SUFFIX = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)
DEBUG_MARK = build/debug$(EXT_SUFFIX)
ASAN_MARK = build/asan$(EXT_SUFFIX)

build: deps-build
	$(PY) setup.py -q build_ext --inplace $$([ -f "$(DEBUG_MARK)" ] || [ -f "$(ASAN_MARK)" ] && echo --force)
	rm -f "$(DEBUG_MARK)" "$(ASAN_MARK)"

debug: deps-build
	GREENHUB_DEBUG=1 $(PY) setup.py -q build_ext --inplace --force
	rm -f "$(ASAN_MARK)"
	mkdir -p build && touch "$(DEBUG_MARK)"

# The pytest suite (ASAN_TESTS) on an extension built with AddressSanitizer and
# UndefinedBehaviorSanitizer (GREENHUB_SANITIZE=1), in the uninstrumented CPython with
# the sanitizer runtimes preloaded (.ci/asan/run: options, leak check, reports); any
# report from any process of the run fails the target (docs/development.md).  The
# in-place extension stays the sanitizer build, which cannot be imported without the
# runtimes preloaded, until the next `make build`.
ASAN_TESTS ?= tests

asan: deps
	GREENHUB_SANITIZE=1 $(PY) setup.py -q build_ext --inplace $$([ -f "$(ASAN_MARK)" ] || echo --force)
	rm -f "$(DEBUG_MARK)"
	mkdir -p build && touch "$(ASAN_MARK)"
	py=$$($(PY) -c "import sys; print(sys.executable)") && PY="$$py" .ci/asan/run "$$py" -m pytest -q $(ASAN_TESTS)

demo: build
	$(PY) examples/demo.py

test-unit: deps build
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
test-pg: deps build
	PY=$(PY) .ci/pg run $(PY) -m pytest -q tests/test_pg_*.py tests/test_django.py

# Upstream projects' own suites (from their sdists, cached in ~/.cache/greenhub/upstream):
# stock loop vs greenhub, test by test.  The whole suites take about an hour on the
# 2-core machine (asgiref, starlette, httpx, aiofiles, janus and aiosqlite about 4 minutes
# of it); CI runs UPSTREAM_ARGS=--quick (anyio, aiohttp) on one Python (compat/README.md).
UPSTREAM_ARGS ?=
test-upstream: deps build
	$(PY) compat/run_upstream.py --install-deps $(UPSTREAM_ARGS)

# The differential fuzzer's long profile (tests/fuzz_loop.py; the quick one is
# tests/test_fuzz_differential.py): programs of random loop operations on greenhub and on
# the stock loop, transcripts compared.  Random seeds (the first is printed) until
# FUZZ_SECONDS are up, or the seeds FUZZ_SEEDS=A:B; FUZZ_ARGS adds options
# (--keep-going, --timer-edges, --cross-thread-wakeups, --debug: see --help).
FUZZ_SECONDS ?= 900
FUZZ_OPS ?= 200
FUZZ_SEEDS ?=
FUZZ_ARGS ?=
fuzz: build
	$(PY) tests/fuzz_loop.py --ops $(FUZZ_OPS) \
	    $(if $(FUZZ_SEEDS),--seeds $(FUZZ_SEEDS),--seconds $(FUZZ_SECONDS)) $(FUZZ_ARGS)

# The peers the benchmarks compare with are the [bench] extra; each benchmark skips a
# missing one.
# Each benchmark's JSON goes to BENCH_OUT; report.py draws the charts and report.md there.
BENCH_OUT ?= benchmarks/results/latest
bench: build
	@$(PY) .ci/deps bench
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_scheduling.py --json $(BENCH_OUT)/scheduling.json
	$(PY) benchmarks/bench_vthread.py --json $(BENCH_OUT)/bridge.json
	$(PY) benchmarks/bench_memory.py --json $(BENCH_OUT)/memory.json
	$(PY) benchmarks/bench_echo.py --json $(BENCH_OUT)/echo.json
	$(PY) benchmarks/bench_green.py --json $(BENCH_OUT)/green.json
	@command -v wrk >/dev/null || { echo "installing wrk (bench_http.py's load generator)"; \
	    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || true; }
	$(PY) benchmarks/bench_http.py --json $(BENCH_OUT)/http.json
	$(PY) benchmarks/bench_django.py --json $(BENCH_OUT)/django.json
	$(PY) benchmarks/bench_wsgi.py --json $(BENCH_OUT)/wsgi.json
	$(PY) benchmarks/report.py $(BENCH_OUT)

# dist/: the sdist and a wheel built from it whose _core carries its own libev
# (auditwheel repair), tagged with the manylinux level its symbols allow (.ci/wheel).
wheel: deps-build
	.ci/wheel $(PY) dist

# The pytest suite against that wheel, installed in a fresh virtualenv outside the
# checkout (.ci/installed-tests; CI runs it).  PYTEST_ARGS: e.g. tests/test_tasks.py.
PYTEST_ARGS ?=
test-installed: deps-build
	.ci/installed-tests $(PY) $(PYTEST_ARGS)

# Types (PEP 561: greenhub ships py.typed and greenhub/_core.pyi).  mypy --strict over
# the whole package and over examples/typed_usage.py (a program using the public API,
# which tests/test_typed_usage.py runs), with pyproject.toml's [tool.mypy] settings; then
# stubtest: greenhub/_core.pyi against the C extension built for $(PY) (no allowlist).
# mypy and greenlet's stubs are the [typecheck] extra.
# The docs site (mkdocs.yml; strict: any warning fails) into site/.  The generated
# reference (docs/reference.md) reads the package's docstrings and stubs.
docs:
	@$(PY) .ci/deps docs
	$(PY) -m mkdocs build --strict

typecheck: deps build
	@$(PY) .ci/deps typecheck
	$(PY) -m mypy -p greenhub
	$(PY) -m mypy examples/typed_usage.py
	$(PY) -m mypy.stubtest greenhub._core

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
	ruff check greenhub tests compat benchmarks examples .ci/check_imports.py
	ruff format --check greenhub examples .ci/check_imports.py
	$(PY) .ci/check_imports.py
	clang-format --dry-run --Werror src/*.c src/*.h benchmarks/*.c greenhub/include/*.h tests/capi_ext/*.c
	$(PY) .ci/include-graph

format:
	ruff check --fix greenhub tests compat benchmarks examples .ci/check_imports.py
	ruff format greenhub examples .ci/check_imports.py
	clang-format -i src/*.c src/*.h benchmarks/*.c greenhub/include/*.h tests/capi_ext/*.c

clean:
	rm -rf build dist greenhub/*.so greenhub/__pycache__ tests/__pycache__ *.egg-info
