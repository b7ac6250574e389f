#!/usr/bin/env bash
# Build SeaweedFS' `weed` (the S3-compatible server of the backup-store tests) from its Go module into the cache.
#
#   tests/bed/build-seaweedfs.sh            # prints the cache directory holding `weed`
#
# The cache is keyed by version: $BED_CACHE/seaweedfs-<version>/weed, with a ".complete" marker once built; a
# half-done build is redone. Its go.mod has a replace directive (go-bip39), so `go install weed@version` refuses
# it: a wrapper module requires the module and repeats that replacement.
set -euo pipefail

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
BED_CACHE="${BED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/alembic-operator}"
OUT="$BED_CACHE/seaweedfs-${SEAWEEDFS_VERSION}"

if [[ -f "$OUT/.complete" && -x "$OUT/weed" ]]; then
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || { echo "go is required (https://go.dev/dl/)" >&2; exit 1; }
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false" CGO_ENABLED=0
mkdir -p "$OUT"
work="$OUT/src"
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)

upstream_mod=$(curl -fsSL "https://proxy.golang.org/github.com/seaweedfs/seaweedfs/@v/${SEAWEEDFS_VERSION}.mod")
goline=$(printf '%s\n' "$upstream_mod" | grep -E '^go ' | head -1)
{
  echo "module alembic-operator.io/bed/seaweedfs"
  echo
  echo "$goline"
  echo
  echo "require github.com/seaweedfs/seaweedfs ${SEAWEEDFS_VERSION}"
  echo
  # the module's own replace directives (those pointing at another module, not at a local path)
  printf '%s\n' "$upstream_mod" | grep -E '^replace [^ ]+ => [^./][^ ]* v' || true
} > "$work/go.mod"
cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/seaweedfs/seaweedfs/weed"
GO
(
  cd "$work"
  go mod tidy >/dev/null 2>&1 || go get "github.com/seaweedfs/seaweedfs/weed@${SEAWEEDFS_VERSION}"
  nice -n 10 go build -trimpath -ldflags "-s -w" -o "$OUT/weed.part" github.com/seaweedfs/seaweedfs/weed
)
mv "$OUT/weed.part" "$OUT/weed"
rm -rf "$work"
touch "$OUT/.complete"
echo "built SeaweedFS ${SEAWEEDFS_VERSION} in $(( $(date +%s) - start )) s" >&2
echo "$OUT"
