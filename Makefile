# alembic-operator: every target installs what it needs (virtualenv, Debian packages, the cached control plane).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      ?= .venv
PY        := $(VENV)/bin/python
BED_DIR   ?= $(CURDIR)/.bed
BED_NODE  ?= real
DEMO_DB   ?= postgresql
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)/tests$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help deps venv controlplane node tools prometheus test test-unit lint demo dev-cluster dev-cluster-down crd k8s-openapi clean \
        image-check chart-check bench-gate bench-scale bench-fleet seaweedfs bench-s3 bench-rollout

help:
	@echo "make demo              the operator's whole job, end to end, on the local bed (DEMO_DB=mariadb: on MariaDB)"
	@echo "make test              the whole test suite: tests/unit, tests/postgres, tests/cluster (the bed), tests/e2e"
	@echo "make test-unit         the tests that need no server (tests/unit)"
	@echo "make lint              ruff and mypy"
	@echo "make dev-cluster       start the local bed with a real node (BED_NODE=none: control plane only)"
	@echo "make dev-cluster-down  stop it"
	@echo "make bench-gate        Ready -> last held pod released, for 1/10/100 pods (median, p99)"
	@echo "make bench-rollout     requests/s, p50/p99 and failed requests of the served shop during rollouts: none, a rename (expand/contract), a naive rename"
	@echo "make bench-scale       what N idle DatabaseMigrations cost (N=1000; N=\"200 500 1000\"), next to the empty operator"
	@echo "make bench-rehearsal   a table rewrite on ~1 GB: rehearsal vs real duration, several runs (BENCH_ARGS=\"--runs 5\")"
	@echo "make bench-s3          the backup Job's command to S3 (SeaweedFS) vs pg_dump piped by hand, ~1 GB (BENCH_MB=1024)"
	@echo "make bench-fleet       a DatabaseMigrationSet over 200 PostgreSQL + 10 MariaDB tenants (canary failure, resume, ratio to the best possible), then 1,000 idle"
	@echo "make crd               regenerate crds/, docs/crd-reference.md (the pydantic model), docs/reasons.md, docs/locking.md and the chart's approval-change.cel"
	@echo "make k8s-openapi       re-vendor Kubernetes' core/v1 schemas from \$$KUBECONFIG's API server, then make crd"

# Debian packages: PostgreSQL (server for the tests and the demo, pg_dump/pg_restore for the Jobs), MariaDB
# (server for tests/mariadb, mariadb-dump and the mariadb client for the Jobs on MySQL/MariaDB), util-linux
# (unshare, nsenter, mount: the bed's namespaces); the real node's runc, CNI plugins, registry, iproute2, iptables
# (kube-proxy); skopeo (pushes), busybox-static (the bed's test images), gcc (the static pause binary); buildah and
# mmdebstrap (image builds). Go builds the control plane and the node.
deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v pg_dump >/dev/null || missing="$$missing postgresql-client"; \
	test -x /usr/sbin/mariadbd || missing="$$missing mariadb-server"; \
	command -v mariadb-dump >/dev/null || missing="$$missing mariadb-client"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v runc >/dev/null || missing="$$missing runc"; \
	test -x /usr/lib/cni/bridge || missing="$$missing containernetworking-plugins"; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v buildah >/dev/null || missing="$$missing buildah"; \
	command -v mmdebstrap >/dev/null || missing="$$missing mmdebstrap"; \
	test -x /bin/busybox || missing="$$missing busybox-static"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
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

# kubelet, kube-scheduler, kube-proxy, containerd (+ shim, ctr) and the pause binary, cached like the control plane
node: deps
	tests/bed/build-node.sh

tools: venv
	$(PY) -m bed tools

# SeaweedFS' `weed` (the S3-compatible server of the S3 store's tests), built from its Go module and cached
seaweedfs: deps
	tests/bed/build-seaweedfs.sh

# promtool and prometheus (Prometheus' Go module), alertmanager (Alertmanager's), cached like the control plane: the
# chart's alert tests (tests/unit/test_alerts.py) and the bed's end-to-end alert test use them.
prometheus: deps
	tests/bed/build-prometheus.sh

# In parallel (pytest-xdist): one bed for all workers, each test in its own namespace with its own operator process
# (tests/sharing.py); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 4
test: deps venv controlplane node tools prometheus seaweedfs
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# No server at all: no PostgreSQL, no bed (tests/postgres, tests/cluster and tests/e2e need them); promtool (cached).
test-unit: venv prometheus
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests examples
	$(VENV)/bin/mypy

# Every generated file, from one list (crdgen.GENERATED): `alembic-operator crd --check` (a unit test) agrees.
crd: venv
	$(VENV)/bin/alembic-operator crd --write

# After a Kubernetes upgrade: point KUBECONFIG at a cluster of the new version (e.g. make dev-cluster).
k8s-openapi: venv
	$(PY) -m alembic_operator.k8s_openapi
	$(VENV)/bin/alembic-operator crd --write

dev-cluster: deps venv controlplane node tools
	$(PY) -m bed up --node $(BED_NODE) --dir $(BED_DIR)

dev-cluster-down: venv
	$(PY) -m bed down --dir $(BED_DIR)

demo: deps venv controlplane node tools
	$(PY) examples/demo.py --bed-dir $(BED_DIR) --db $(DEMO_DB)

bench-gate: deps venv controlplane node tools
	$(PY) tests/bench_gate.py --bed-dir $(BED_DIR) $(BENCH_ARGS)

bench-rollout: deps venv controlplane node tools
	$(PY) tests/bench_rollout.py --bed-dir $(BED_DIR) $(BENCH_ARGS)

# spec.rehearsal: a table-rewriting revision on ~1 GB, rehearsal vs real duration, several runs (docs/rehearsal.md)
# BENCH_NICE=0: the same share of the CPU as other work (under nice its timings follow the machine's load)
BENCH_NICE ?= 10
bench-rehearsal: venv
	nice -n $(BENCH_NICE) $(PY) tests/bench_rehearsal.py $(BENCH_ARGS)

N ?= 1000
bench-scale: deps venv controlplane tools
	N="$(N)" $(PY) tests/bench_scale.py $(BENCH_ARGS)

BENCH_MB ?= 1024
bench-s3: deps venv seaweedfs
	nice -n 10 $(PY) tests/bench_s3.py --mb $(BENCH_MB) $(BENCH_ARGS)

bench-fleet: deps venv controlplane node tools
	$(PY) tests/bench_fleet.py $(BENCH_ARGS)

image-check: venv
	$(VENV)/bin/hadolint Dockerfile examples/shop/Dockerfile tests/bed/dockerfiles/*/Dockerfile
	$(PY) -m pytest -q -m "not bed" tests/unit/test_image.py

chart-check: venv tools
	$$($(PY) -m bed tools | sed -n 's/^helm=//p') lint --strict --kube-version 1.36.0 charts/alembic-operator
	$(PY) -m pytest -q -m "not bed" tests/unit/test_chart.py tests/unit/test_health_lua.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
