# Two entry points, each sets up the virtual environment on first use:
#   make study   - run the built-in quick-start study (digits, resnet-tiny, 8 trials)
#   make test    - run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: study test test-fast bench bench-cuda bench-quick bench-growth bench-fidelity bench-load test-tools venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/snn-study run

test: $(STAMP) test-tools
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# Tools some tests use, from Debian's packages where they are missing and we may install
# them (CI runs as root): PostgreSQL under MLflow in the cluster test, docker-compose (v1) to
# validate docker/compose.yaml, sshd and rsync for `ray up`/`ray submit` over SSH, Chromium
# (headless) for what MLflow's UI shows in a browser. Elsewhere those tests skip and say why.
test-tools:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 && \
	 [ -x /usr/sbin/sshd ] && command -v rsync >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql docker-compose \
	   openssh-server rsync chromium \
	   >/dev/null) ; } || echo "note: PostgreSQL, docker-compose, sshd, rsync or chromium missing; their tests will be skipped"

# Benchmarks against spikingjelly (benchmark-only; --no-deps: its requirements would pull
# torchaudio and replace the pinned torch). Writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 loguru
	$(PY) -m benchmarks

# The LIF, network, shortcut and energy sections on a CUDA GPU. Writes benchmarks/RESULTS-cuda.md.
bench-cuda: $(STAMP)
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 loguru
	$(PY) -m benchmarks --device cuda

bench-quick: $(STAMP)
	$(PY) -m pip install -q --no-deps spikingjelly==2.0.0 loguru
	$(PY) -m benchmarks --quick --out benchmarks/RESULTS-quick.md

# How the study's own cost grows to 1,000 trials (searcher, MLflow, analysis and report; no
# training). Writes benchmarks/RESULTS-growth.md.
bench-growth: $(STAMP)
	$(PY) -m benchmarks.growth

# Timesteps as a fidelity against a study at the target T (section 9 alone: real studies on
# digits and digits-dvs, about 20 minutes on 2 cores). Writes benchmarks/RESULTS-fidelity.md.
bench-fidelity: $(STAMP)
	$(PY) -m benchmarks --only fidelity --out benchmarks/RESULTS-fidelity.md

# Up to 32 trials at once (as many as free memory holds, about 0.5 GiB each) on a three-node Ray cluster, one MLflow server and one PostgreSQL (as the
# load tests, without faults): the server's write rate and slowest write. Writes
# benchmarks/RESULTS-load.md. Needs PostgreSQL (`make test-tools`) and about 28 GB of memory for all 32.
bench-load: $(STAMP) test-tools
	$(PY) -m benchmarks.load

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) studies mlflow.db mlruns .pytest_cache
