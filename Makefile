# The two commands of the README, and their parts.
#   make demo   - build/reuse the local cluster, install CRDs, start the operator, apply the examples
#   make test   - lint, type-check and run every test (unit + e2e on the local cluster)
#   make down   - stop the operator and the local cluster
# Everything a fresh machine needs is installed here: a virtualenv with the
# project and its dev tools (pip's cache is reused), and the Kubernetes binaries,
# built from the Go module proxy once and cached in ~/.cache/lepton, and the
# prometheus package (apt) for the serving e2e.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export PYTHONPATH := $(CURDIR)/e2e

.PHONY: setup tools demo down test unit e2e lint crds cluster

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,workloads]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# System tools from Debian that tests run for real: promtool (alert rules) and
# Prometheus 2.42 (autoscaling signals; file-based targets, no Kubernetes
# discovery needed). Installed once; needs root or sudo.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Debian's prometheus (promtool) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null; }

demo: setup
	$(PY) -m localcluster.demo up

down: setup
	$(PY) -m localcluster.demo down

cluster: setup
	$(PY) -m localcluster up

crds: setup
	$(VENV)/bin/lepton-operator crds

lint: setup
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest -m "not e2e"

e2e: setup tools
	$(PY) -m localcluster build
	$(VENV)/bin/pytest -m e2e

# The cluster binaries are built (or found in the cache) before pytest starts,
# so a cold build prints its progress instead of hiding inside a fixture.
test: lint tools
	$(PY) -m localcluster build
	$(VENV)/bin/pytest
