#!/usr/bin/env bash
# Provisions argocd-health (hack/argocd-health/main.go): Argo CD's own health evaluation
# (its argocd-cm parsing, gopher-lua VM and gitops-engine health types) at a pinned Argo CD
# version, which tests/integration/argocd/test_argocd_health_engine.py runs the tuneforge
# health checks through.
#
# Built once from the Go module proxy into $TUNEFORGE_CACHE/argocd/<version>/ (keyed by
# the helper's source too, so an edit rebuilds it). Argo CD v3.6 needs Go 1.27, which the
# go command fetches from the module proxy as golang.org/toolchain (GOTOOLCHAIN below);
# nothing else in tuneforge needs it. Argo CD's go.mod pins the Kubernetes libraries with
# replace directives, which a requiring module does not inherit, so they are copied over;
# its gitops-engine is required at the release tagged with it.
# Prints the path of the binary on its last line of stdout.
set -euo pipefail

ARGOCD_VERSION="${ARGOCD_VERSION:-v3.6.2}"
ARGOCD_GO_TOOLCHAIN="${ARGOCD_GO_TOOLCHAIN:-go1.27.3}"
CACHE_ROOT="${TUNEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge}"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/argocd-health/main.go"

log() { echo "provision-argocd-health: $*" >&2; }

source_hash="$(sha256sum "$SOURCE" | cut -c1-12)"
binary="$CACHE_ROOT/argocd/$ARGOCD_VERSION/argocd-health-$source_hash"
if [[ -x "$binary" ]]; then
  echo "$binary"
  exit 0
fi

command -v go >/dev/null || { log "Go is needed to build argocd-health"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/go-module.sh"
go_build_env "$CACHE_ROOT"
export GOTOOLCHAIN="$ARGOCD_GO_TOOLCHAIN"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$SOURCE" main.go
go mod init tuneforge.local/argocd-health >/dev/null 2>&1
go mod edit -require="github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" \
  -require="github.com/argoproj/argo-cd/gitops-engine/v3@$ARGOCD_VERSION"
argocd_mod="$(go mod download -json "github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
# Every `old => new version` replacement of Argo CD's go.mod; its one local path (./gitops-engine)
# is the module required above.
while read -r old new version; do
  go mod edit -replace="$old=$new@$version"
done < <(sed -n 's#^\s*\([^ /][^ ]*\) => \([^ .][^ ]*\) \(v[^ ]*\)\s*$#\1 \2 \3#p' "$argocd_mod")
log "resolving Argo CD $ARGOCD_VERSION (Go $ARGOCD_GO_TOOLCHAIN); this takes a while once"
go mod tidy >&2
mkdir -p "$(dirname "$binary")"
go build -trimpath -ldflags "-s -w" -o "$binary.tmp" .
mv "$binary.tmp" "$binary"
log "argocd-health ready: $binary"
echo "$binary"
