# Ferry build tooling. Needs only GNU make and Python 3.11 on a fresh machine.
# Everything installs into ./.venv; nothing touches the system Python.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
# Serving needs only the runtime dependencies; testing adds the tool chain (boto3,
# awscli, ruff, mypy, hypothesis, matplotlib, Celery), several hundred MB more.
STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test
# The last botocore whose SQS model speaks the Query protocol (DESIGN.md §4): a boto3
# client loading this model first speaks Query, so the suite can exercise both wire
# protocols with one SDK.
QUERY_BOTOCORE := botocore==1.34.89
QUERY_MODEL := $(VENV)/query-data/sqs/2012-11-05/service-2.json

.PHONY: all venv serve query-model test test-e2e lint typecheck check clean bench etcd haproxy

all: check

venv: $(STAMP)

# Re-installs whenever pyproject.toml changes (dependencies or entry points).
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(VPY) -m pip install -e '.[test]'
	touch $@

query-model: $(QUERY_MODEL)

$(QUERY_MODEL): $(TEST_STAMP)
	rm -rf $(VENV)/query-model
	$(VPY) -m pip install --no-deps --target $(VENV)/query-model $(QUERY_BOTOCORE)
	mkdir -p $(dir $@)
	$(VPY) -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
		$(VENV)/query-model/botocore/data/sqs/2012-11-05/service-2.json.gz $@.tmp
	mv $@.tmp $@

serve: $(STAMP)
	$(VENV)/bin/ferrymq serve --host 127.0.0.1 --port 9324 --data-dir ./ferrymq-data

# The coordination tests (tests/coordination) run real etcd: Debian's etcd-server
# package (3.4 on bookworm). As root we install it; otherwise we say how, and those
# tests skip with that reason. Debian's package also enables a system etcd daemon on
# 127.0.0.1:2379; the tests never use it (each starts its own etcd on free ports), but
# it would hold a well-known port and a data directory for nothing, so it is stopped and
# disabled right after the install. A failed install is retried once after
# `apt-get update` (a fresh machine's package lists may be stale or absent).
ETCD_HINT := etcd is not installed: as root run 'apt-get install -y etcd-server' (Debian/Ubuntu), or put an etcd 3.4+ binary on PATH; the tests that need etcd will be skipped
etcd:
	@if command -v etcd >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing etcd-server (Debian) for tests/coordination"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq etcd-server >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null && apt-get install -y -qq etcd-server >/dev/null; }; } \
		|| { echo "$(ETCD_HINT)"; exit 0; }; \
		if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled etcd >/dev/null 2>&1; then \
			systemctl disable --now etcd >/dev/null 2>&1 || true; fi; \
		if command -v service >/dev/null 2>&1; then service etcd stop >/dev/null 2>&1 || true; fi; \
		etcd --version | head -1; \
	else echo "$(ETCD_HINT)"; fi

# One end-to-end test puts HAProxy in front of a cluster, as a user would (Debian's
# haproxy package). Installed as etcd is; its system service (which Debian starts, with
# a configuration that listens nowhere) is stopped and disabled: the test runs its own.
HAPROXY_HINT := haproxy is not installed: as root run 'apt-get install -y haproxy' (Debian/Ubuntu); the test that needs it will be skipped
haproxy:
	@if command -v haproxy >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing haproxy (Debian) for tests/e2e"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq haproxy >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null && apt-get install -y -qq haproxy >/dev/null; }; } \
		|| { echo "$(HAPROXY_HINT)"; exit 0; }; \
		if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled haproxy >/dev/null 2>&1; then \
			systemctl disable --now haproxy >/dev/null 2>&1 || true; fi; \
		if command -v service >/dev/null 2>&1; then service haproxy stop >/dev/null 2>&1 || true; fi; \
		haproxy -v | head -1; \
	else echo "$(HAPROXY_HINT)"; fi

# What CI runs (.ci/run): lint and type errors fail it like a failing test.
# The suite runs in PYTEST_WORKERS pytest-xdist workers, each test file whole in one
# (module fixtures stay shared). Two, for CI's 2 cores: most of the end-to-end tests'
# time is waiting (elections, lease expiry, long polls), so a second worker nearly
# halves the wall time (17 to 9 minutes here on 2026-12-03) without more CPU in all.
PYTEST_WORKERS ?= 2
test: lint typecheck $(QUERY_MODEL) etcd haproxy
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-e2e: $(TEST_STAMP) $(QUERY_MODEL)
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests/e2e

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy src

check: test

clean:
	rm -rf $(VENV) build ferrymq-data .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +

# Side-by-side benchmark against peers (installed by the bench into .bench/venvs/<peer>,
# never into .venv). Knobs: `ferrymq bench --help`, passed as BENCH_ARGS, e.g.
#   make bench BENCH_ARGS='--peers ferry,moto --workloads send,batch --repeat 1'
# The full default run takes ~20 minutes; bench-quick is a ~2-minute smoke run.
# See docs/benchmarks.md.
.PHONY: bench-quick
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(TEST_STAMP)
	$(VPY) -m pip install -e '.[test,bench]'
	touch $@

bench: $(BENCH_STAMP)
	$(VPY) -m ferrymq bench $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(VPY) -m ferrymq bench --quick --out .bench/results/quick.png $(BENCH_ARGS)
