#!/usr/bin/env bash
# Build the real node's binaries into a cache outside the repository:
#   kubelet, kube-scheduler, kube-proxy (same wrapper module as build-control-plane.sh),
#   containerd, containerd-shim-runc-v2, ctr (containerd's Go module), a static pause binary
#   (the Kubernetes module's build/pause/linux/pause.c) and CoreDNS with only the plugins the bed uses.
#
#   tests/bed/build-node.sh            # prints the cache directory holding the binaries
#
# A separate cache dir keeps the control-plane cache valid: $BED_CACHE/node/k8s-<ver>-containerd-<ver>/.
# A finished build leaves a ".complete" marker and is reused as is; a half-done build is redone.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
BED_CACHE="${BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alembic-operator}"
OUT="$BED_CACHE/node/k8s-${K8S_VERSION}-containerd-${CONTAINERD_VERSION}-coredns-${COREDNS_VERSION}"

if [[ -f "$OUT/.complete" ]]; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "go is required (https://go.dev/dl/)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "gcc is required for the static pause binary (make deps)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false" CGO_ENABLED=0
mkdir -p "$OUT"
work="$BED_CACHE/node/src-$(basename "$OUT")"
rm -rf "$work"
mkdir -p "$work/k8s" "$work/containerd" "$work/coredns"
start=$(date +%s)

# --- Kubernetes: a wrapper module that replaces each staging module with its published v0.Y.Z -----------------
minor="${K8S_VERSION#v1.}"
staging_version="v0.${minor}"
upstream_mod=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/${K8S_VERSION}.mod")
godebug=$(printf '%s\n' "$upstream_mod" | grep -E '^godebug ' || true)
goline=$(printf '%s\n' "$upstream_mod" | grep -E '^go ' | head -1)
{
  echo "module alembic-operator.io/bed/node"
  echo
  echo "$goline"
  [[ -n "$godebug" ]] && echo "$godebug"
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "replace ("
  printf '%s\n' "$upstream_mod" | awk '/=> \.\/staging\/src\// {print $1}' | grep -v '^k8s.io/sample-' \
    | while read -r mod; do echo "	$mod => $mod $staging_version"; done
  echo ")"
} > "$work/k8s/go.mod"
printf '//go:build tools\n\npackage tools\n' > "$work/k8s/tools.go"

commit=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/${K8S_VERSION}.info" | sed -n 's/.*"Origin".*"Hash":"\([0-9a-f]*\)".*/\1/p')
[[ -n "$commit" ]] || commit="0000000000000000000000000000000000000000"
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor%%.*}"
  ldflags+=" -X ${pkg}.gitCommit=${commit} -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done
(
  cd "$work/k8s"
  go mod download k8s.io/kubernetes
  go get "k8s.io/kubernetes@${K8S_VERSION}" >/dev/null 2>&1 || go get "k8s.io/kubernetes@${K8S_VERSION}"
  for cmd in kubelet kube-scheduler kube-proxy; do
    echo "building $cmd ${K8S_VERSION}" >&2
    go build -mod=mod -trimpath -ldflags "$ldflags" -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  # registry.k8s.io is unreachable from the bed: the sandbox ("pause") image is built from the release's source
  src=$(go list -mod=mod -m -f '{{.Dir}}' k8s.io/kubernetes)
  echo "building pause from $src/build/pause/linux/pause.c" >&2
  gcc -Os -static -DVERSION="\"${K8S_VERSION}-bed\"" -o "$OUT/pause" "$src/build/pause/linux/pause.c"
  strip "$OUT/pause"
)

# --- containerd 2.x ----------------------------------------------------------------------------------------
ctrd_go=$(curl -fsSL "https://proxy.golang.org/github.com/containerd/containerd/v2/@v/${CONTAINERD_VERSION}.mod" | grep -E '^go ' | head -1)
cat > "$work/containerd/go.mod" <<EOM
module alembic-operator.io/bed/containerd

$ctrd_go

require github.com/containerd/containerd/v2 ${CONTAINERD_VERSION}
EOM
cat > "$work/containerd/tools.go" <<'EOM'
//go:build tools

package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
EOM
(
  cd "$work/containerd"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  cver="-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    echo "building $cmd ${CONTAINERD_VERSION}" >&2
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "-s -w $cver" -o "$OUT/$cmd" \
      "github.com/containerd/containerd/v2/cmd/$cmd"
  done
)

# --- CoreDNS: its own main with the few plugins the bed's Corefile uses (the full set pulls in every cloud SDK) ---
cat > "$work/coredns/go.mod" <<EOM
module alembic-operator.io/bed/coredns

go 1.26

require github.com/coredns/coredns ${COREDNS_VERSION}
EOM
cat > "$work/coredns/main.go" <<'EOM'
// CoreDNS for the bed: cluster DNS from the kubernetes plugin, nothing forwarded anywhere.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
EOM
(
  cd "$work/coredns"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  echo "building coredns ${COREDNS_VERSION}" >&2
  go build -trimpath -ldflags "-s -w" -o "$OUT/coredns" .
)

end=$(date +%s)
echo "cold build took $((end - start))s" >&2
echo "$((end - start))" > "$OUT/build-seconds"
touch "$OUT/.complete"
rm -rf "$work"
echo "$OUT"
