# The two commands of the README, and their parts.
#   make demo   - build/reuse the local cluster, install CRDs, start the operator, apply the examples
#   make test   - lint, type-check and run every test (unit + e2e on the local cluster)
#   make down   - stop the operator and the local cluster
# Everything a fresh machine needs is installed here: a virtualenv with the
# project and its dev tools (pip's cache is reused), and the Kubernetes binaries,
# built from the Go module proxy once and cached in ~/.cache/lepton, and the
# Debian packages of `tools` (prometheus; the real node's containerd, runc, CNI, ...).

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
# discovery needed); the local cluster's real node (containerd, runc, CNI
# plugins, iptables, conntrack; gcc for its pause program, busybox-static) and
# its images (buildah, skopeo, umoci, debootstrap); ipset for the NetworkPolicy
# enforcer of the real node (kube-router, test harness only). Installed once (apt-get
# skips what is there); needs root or sudo.
TOOLS_PACKAGES := prometheus containerd runc containernetworking-plugins iptables conntrack gcc \
	busybox-static buildah skopeo umoci debootstrap ipset
tools:
	@missing=$$(for p in $(TOOLS_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	[ -z "$$missing" ] || { \
	  echo "installing Debian packages: $$missing ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; }

demo: setup tools
	$(PY) -m localcluster.demo up

down: setup
	$(PY) -m localcluster.demo down

cluster: setup tools
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
