# Two entry points, each sets up the virtual environment on first use:
#   make study   - run the built-in quick-start study (digits, resnet-tiny, 8 trials)
#   make test    - run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: study test test-fast bench bench-quick postgres venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/snn-study run

test: $(STAMP) postgres
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The cluster test (tests/docker/test_cluster.py) runs a real PostgreSQL server under MLflow:
# install Debian's package where it is missing and we may (CI runs as root); else it skips.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) ; } || \
	echo "note: PostgreSQL not installed; the cluster test will be skipped"

# Benchmarks against spikingjelly (benchmark-only; --no-deps: its requirements would pull
# torchaudio and replace the pinned torch). Writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 loguru
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 loguru
	$(PY) -m benchmarks --quick --out benchmarks/RESULTS-quick.md

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) studies mlflow.db mlruns .pytest_cache
