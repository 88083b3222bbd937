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

.PHONY: setup demo down test unit e2e lint crds cluster prometheus

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,workloads]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

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

# The serving e2e runs a real Prometheus (Debian's package: 2.42, file-based
# targets, no Kubernetes discovery needed) next to the Triton simulators.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
prometheus:
	command -v prometheus >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends prometheus; }

e2e: setup prometheus
	$(PY) -m localcluster build
	$(VENV)/bin/pytest -m e2e

# The cluster binaries are built (or found in the cache) before pytest starts,
# so a cold build prints its progress instead of hiding inside a fixture.
test: lint prometheus
	$(PY) -m localcluster build
	$(VENV)/bin/pytest
