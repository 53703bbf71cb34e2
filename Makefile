# cloudlog: `make dev` runs the whole pipeline locally; `make test` runs every check.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install lock dist dev system-deps test unit integration faults lint typecheck format clean localstack-up localstack-down test-localstack infra-test bench

# uv installs the workspace from uv.lock (every machine gets the same versions); pip only
# bootstraps uv itself into the venv, at the version the lock's dev group pins.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
MEMBER_PYPROJECTS := $(wildcard libs/*/pyproject.toml clients/*/pyproject.toml services/*/pyproject.toml cli/pyproject.toml devtools/pyproject.toml)

$(STAMP): pyproject.toml uv.lock $(MEMBER_PYPROJECTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cloudlog needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) sync --quiet --locked --all-packages
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install every distribution (editable) with the dev tools, from uv.lock

# uv.lock pins the whole workspace; each image installs its service's slice of it, exported.
IMAGE_SERVICES := ingest worker

lock: $(STAMP)  ## after changing a dependency: update uv.lock and the images' requirements.lock
	$(UV) lock
	$(foreach s,$(IMAGE_SERVICES),$(UV) export --quiet --package cloudlog-$(s) --no-dev --frozen --no-editable --no-hashes -o services/$(s)/requirements.lock;)

dist: $(STAMP)  ## build every distribution's wheel and sdist into dist/
	$(UV) build --quiet --all-packages --out-dir dist

dev: $(STAMP)  ## emulator + ingest + worker + demo app, printing events read back (Ctrl-C stops all)
	$(VENV)/bin/cloudlog dev

# Tests run in 4 processes: the integration and fault tests mostly wait (on redelivery,
# outages, retries), so they overlap well even on 2 cores.
PYTEST_WORKERS ?= 4

# Debian packages some tests run for real: HAProxy (the load balancer in front of several ingest
# replicas) and docker-compose (checks docker-compose.yml without a Docker engine). Installed
# when missing and apt-get can (root); otherwise the tests that need them say so and skip.
SYSTEM_PACKAGES := haproxy docker-compose

system-deps:  ## install the Debian packages the tests use (haproxy, docker-compose) if missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing (apt-get)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } >/dev/null 2>&1 \
	      || echo "note: could not install$$missing: the tests that need them skip"; \
	  else echo "note:$$missing missing and not installable here: the tests that need them skip"; fi; \
	fi

test: system-deps lint typecheck  ## lint, type-check, then every test
	$(PY) -m pytest -n $(PYTEST_WORKERS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests/integration

faults: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests/faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .cloudlog-dev dist

# --- infra (issue 7): LocalStack, Docker images, CloudFormation --------------------------------
LOCALSTACK_ENDPOINT ?= http://127.0.0.1:4566

localstack-up: $(STAMP)  ## LocalStack (SQS + CloudWatch Logs) on 127.0.0.1:4566, queues created
	infra/localstack/up.sh

localstack-down:  ## stop the LocalStack that localstack-up started (idempotent)
	infra/localstack/down.sh

test-localstack: $(STAMP)  ## the end-to-end tests against a running LocalStack (make localstack-up)
	@$(PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/_localstack/health", timeout=3)' $(LOCALSTACK_ENDPOINT) 2>/dev/null \
		|| { echo "no LocalStack answers on $(LOCALSTACK_ENDPOINT): run 'make localstack-up' first" >&2; exit 1; }
	CLOUDLOG_TEST_AWS_ENDPOINT_URL=$(LOCALSTACK_ENDPOINT) $(PY) -m pytest tests/integration -m integration

infra-test: $(STAMP)  ## the infra checks: compose file, CloudFormation template (cfn-lint)
	$(PY) -m pytest tests/infra

# --- benchmarks (issue 6): cloudlog, watchtower and the naive design side by side ---------------
BENCH_STAMP := $(VENV)/.bench-stamp
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(UV) sync --quiet --locked --all-packages --group bench
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## results to bench/results/ (latest.json, latest.md, *.png); BENCH_ARGS="--soak 300" for the 5-minute soak
	$(PY) -m bench $(BENCH_ARGS)
