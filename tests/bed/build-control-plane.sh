#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and etcd from Go modules into a cache outside the repository.
#
#   tests/bed/build-control-plane.sh            # prints the cache directory holding the binaries
#
# The cache is keyed by version: $BED_CACHE/controlplane/k8s-<ver>-etcd-<ver>/{kube-apiserver,...}. A finished
# build leaves a ".complete" marker and is reused as is; a half-done build is redone.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the staging modules with ./staging/... paths.
# A wrapper module requires it and replaces each staging module with the published k8s.io/<mod> v0.Y.Z.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
BED_CACHE="${BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alembic-operator}"
OUT="$BED_CACHE/controlplane/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

if [[ -f "$OUT/.complete" ]]; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "go is required (https://go.dev/dl/)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false" CGO_ENABLED=0
mkdir -p "$OUT"
work="$BED_CACHE/controlplane/src-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"
rm -rf "$work"
mkdir -p "$work/k8s" "$work/etcd"
start=$(date +%s)

# --- Kubernetes ---------------------------------------------------------------------------------------------
minor="${K8S_VERSION#v1.}"           # 36.3
staging_version="v0.${minor}"        # v0.36.3
upstream_mod=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/${K8S_VERSION}.mod")
godebug=$(printf '%s\n' "$upstream_mod" | grep -E '^godebug ' || true)
goline=$(printf '%s\n' "$upstream_mod" | grep -E '^go ' | head -1)
{
  echo "module alembic-operator.io/bed/k8s"
  echo
  echo "$goline"
  [[ -n "$godebug" ]] && echo "$godebug"
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "replace ("
  # every staging module that the release replaces and that is published (sample-* are examples, not published)
  printf '%s\n' "$upstream_mod" | awk '/=> \.\/staging\/src\// {print $1}' | grep -v '^k8s.io/sample-' \
    | while read -r mod; do echo "	$mod => $mod $staging_version"; done
  echo ")"
} > "$work/k8s/go.mod"
cat > "$work/k8s/tools.go" <<'EOF'
//go:build tools

package tools
EOF

commit=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/${K8S_VERSION}.info" | sed -n 's/.*"Origin".*"Hash":"\([0-9a-f]*\)".*/\1/p')
[[ -n "$commit" ]] || commit="0000000000000000000000000000000000000000"
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
major=1
minor_only="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor_only}"
  ldflags+=" -X ${pkg}.gitCommit=${commit} -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
done

(
  cd "$work/k8s"
  go mod download k8s.io/kubernetes
  go get "k8s.io/kubernetes@${K8S_VERSION}" >/dev/null 2>&1 || go get "k8s.io/kubernetes@${K8S_VERSION}"
  for cmd in kube-apiserver kube-controller-manager; do
    echo "building $cmd ${K8S_VERSION}" >&2
    go build -mod=mod -trimpath -ldflags "$ldflags" -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
)

# --- etcd ---------------------------------------------------------------------------------------------------
etcd_mod=$(curl -fsSL "https://proxy.golang.org/go.etcd.io/etcd/server/v3/@v/${ETCD_VERSION}.mod")
etcd_go=$(printf '%s\n' "$etcd_mod" | grep -E '^go ' | head -1)
cat > "$work/etcd/go.mod" <<EOF
module alembic-operator.io/bed/etcd

$etcd_go

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
cat > "$work/etcd/main.go" <<'EOF'
// The etcd binary: the same entry point as etcd's own main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
(
  cd "$work/etcd"
  go mod tidy >/dev/null 2>&1 || go mod tidy
  echo "building etcd ${ETCD_VERSION}" >&2
  go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" -o "$OUT/etcd" .
)

end=$(date +%s)
echo "cold build took $((end - start))s" >&2
echo "$((end - start))" > "$OUT/build-seconds"
touch "$OUT/.complete"
rm -rf "$work"
echo "$OUT"
