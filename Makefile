# alembic-operator: every target installs what it needs (virtualenv, Debian packages, the cached control plane).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BED_DIR   ?= $(CURDIR)/.bed
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/tests$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help deps venv controlplane tools test test-unit lint demo dev-cluster dev-cluster-down crd k8s-openapi clean \
        image-check chart-check bench-gate

help:
	@echo "make demo              the operator's whole job, end to end, on the local bed"
	@echo "make test              the whole test suite (unit + the real bed)"
	@echo "make lint              ruff and mypy"
	@echo "make dev-cluster       start the local bed in the background (prints export KUBECONFIG=...)"
	@echo "make dev-cluster-down  stop it"
	@echo "make bench-gate        Ready -> last held pod released, for 1/10/100 pods (median, p99)"
	@echo "make crd               regenerate crds/ and docs/crd-reference.md from the pydantic model"
	@echo "make k8s-openapi       re-vendor Kubernetes' core/v1 schemas from \$$KUBECONFIG's API server, then make crd"

# Debian packages: PostgreSQL (server for the tests and the demo, pg_dump/pg_restore for the Jobs), util-linux
# (unshare, mount: the node agent's mount namespaces), mmdebstrap and buildah (the bed's images, tests/bed/images.py),
# docker-registry (the bed's registry). Go builds the control plane.
deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v pg_dump >/dev/null || missing="$$missing postgresql-client"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq $$missing; \
	fi; \
	command -v go >/dev/null || { echo "Go >= 1.26 is needed to build the control plane: https://go.dev/dl/"; exit 1; }

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

controlplane: deps
	tests/bed/build-control-plane.sh

tools: venv
	$(PY) -m bed tools

test: deps venv controlplane tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -m "not bed" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests examples
	$(VENV)/bin/mypy

crd: venv
	$(PY) -m alembic_operator.crdgen

# After a Kubernetes upgrade: point KUBECONFIG at a cluster of the new version (e.g. make dev-cluster).
k8s-openapi: venv
	$(PY) -m alembic_operator.k8s_openapi
	$(PY) -m alembic_operator.crdgen

dev-cluster: deps venv controlplane tools
	$(PY) -m bed up --dir $(BED_DIR)

dev-cluster-down: venv
	$(PY) -m bed down --dir $(BED_DIR)

demo: deps venv controlplane tools
	$(PY) examples/demo.py --bed-dir $(BED_DIR)

bench-gate: deps venv controlplane tools
	$(PY) tests/bench_gate.py --bed-dir $(BED_DIR) $(BENCH_ARGS)

image-check: venv
	$(VENV)/bin/hadolint Dockerfile examples/shop/Dockerfile tests/bed/dockerfiles/*/Dockerfile
	$(PY) -m pytest -q -m "not bed" tests/test_image.py

chart-check: venv tools
	$$($(PY) -m bed tools | sed -n 's/^helm=//p') lint --strict --kube-version 1.36.0 charts/alembic-operator
	$(PY) -m pytest -q -m "not bed" tests/test_chart.py tests/test_health_lua.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
