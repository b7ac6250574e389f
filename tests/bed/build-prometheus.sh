#!/usr/bin/env bash
# Build promtool and prometheus (Prometheus' Go module) and alertmanager (Alertmanager's) into a cache outside the
# repository, for the chart's rule tests (promtool, in `make test`) and the bed's end-to-end alert test.
#
#   tests/bed/build-prometheus.sh      # prints the two cache directories, promtool's and prometheus' first
#
# $BED_CACHE/prometheus-<ver>/{promtool,prometheus} and $BED_CACHE/alertmanager-<ver>/alertmanager; a finished
# build leaves a ".complete" marker and is reused as is; a half-done build is redone. Prometheus' module has no
# replace directives, so `go install module/cmd@version` builds exactly the release's dependency graph; it is built
# with `remove_all_sd` (static and file discovery only: the tests name their targets) and without the embedded web
# UI (the API is all the tests read). Alertmanager: see below.
set -euo pipefail

PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
ALERTMANAGER_VERSION="${ALERTMANAGER_VERSION:-v0.35.0}"
BED_CACHE="${BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alembic-operator}"
PROM_OUT="$BED_CACHE/prometheus-${PROMETHEUS_VERSION}"
AM_OUT="$BED_CACHE/alertmanager-${ALERTMANAGER_VERSION}"

command -v go >/dev/null || { echo "go is required (https://go.dev/dl/)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false" CGO_ENABLED=0

# build OUT MODULE VERSION TAGS CMD... : go install each command of MODULE@VERSION into OUT, once
build() {
  local out="$1" module="$2" version="$3" tags="$4"
  shift 4
  [[ -f "$out/.complete" ]] && return 0
  mkdir -p "$out"
  local start
  start=$(date +%s)
  for cmd in "$@"; do
    echo "building $cmd $version" >&2
    # prometheus/common's version package is what `--version` prints (its ldflags, as the release's Makefile sets)
    GOBIN="$out" nice -n 10 go install -trimpath -tags "$tags" -ldflags "-s -w \
      -X github.com/prometheus/common/version.Version=${version} \
      -X github.com/prometheus/common/version.Branch=module \
      -X github.com/prometheus/common/version.BuildUser=alembic-operator" "${module}/cmd/${cmd}@${version}"
  done
  echo "$(( $(date +%s) - start ))" > "$out/build-seconds"
  echo "cold build of $module took $(cat "$out/build-seconds")s" >&2
  touch "$out/.complete"
}

build "$PROM_OUT" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" remove_all_sd promtool prometheus

# Alertmanager embeds its web UI's built files (ui/app/dist), which its module does not carry (they are built with
# npm at release time): it is built from a copy of the module with a one-page placeholder there (the tests use the
# API only), against exactly the module's go.sum.
if [[ ! -f "$AM_OUT/.complete" ]]; then
  mkdir -p "$AM_OUT"
  start=$(date +%s)
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/prometheus/alertmanager@${ALERTMANAGER_VERSION}" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  work="$AM_OUT/src"
  rm -rf "$work"
  cp -r "$src" "$work"
  chmod -R u+w "$work"
  for ui in elm mantine; do
    mkdir -p "$work/ui/app/dist/$ui"
    echo '<!doctype html><title>Alertmanager</title><p>The web UI is not built here: use the API (/api/v2).' \
      > "$work/ui/app/dist/$ui/index.html"
  done
  echo "building alertmanager $ALERTMANAGER_VERSION" >&2
  (cd "$work" && nice -n 10 go build -trimpath -ldflags "-s -w \
      -X github.com/prometheus/common/version.Version=${ALERTMANAGER_VERSION} \
      -X github.com/prometheus/common/version.Branch=module \
      -X github.com/prometheus/common/version.BuildUser=alembic-operator" -o "$AM_OUT/alertmanager" ./cmd/alertmanager)
  rm -rf "$work"
  echo "$(( $(date +%s) - start ))" > "$AM_OUT/build-seconds"
  echo "cold build of github.com/prometheus/alertmanager took $(cat "$AM_OUT/build-seconds")s" >&2
  touch "$AM_OUT/.complete"
fi
echo "$PROM_OUT"
echo "$AM_OUT"
