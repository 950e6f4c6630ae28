#!/usr/bin/env bash
# Provisions the Kueue controller manager, with the CRDs and webhook manifests of the same
# release, for the tests that run tuneforge under real Kueue admission (tests/support/kueue.py).
#
# Built once from the Go module proxy (sigs.k8s.io/kueue at the pinned version) into
# $TUNEFORGE_CACHE/kueue/<version>/: the `kueue` binary, and manifests/ holding the
# module's own config/components/crd/bases/*.yaml and config/components/webhook/manifests.yaml.
# Prints that directory on its last line of stdout.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE_ROOT="${TUNEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge}"
dest="$CACHE_ROOT/kueue/$KUEUE_VERSION"

log() { echo "provision-kueue: $*" >&2; }

if [[ -x "$dest/kueue" && -f "$dest/manifests/webhook.yaml" ]]; then
  echo "$dest"
  exit 0
fi

command -v go >/dev/null || { log "Go is needed to build Kueue"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/go-module.sh"
go_build_env "$CACHE_ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
throwaway_module "$work/kueue" kueue-build "sigs.k8s.io/kueue@$KUEUE_VERSION" sigs.k8s.io/kueue/cmd/kueue
log "resolving and building Kueue $KUEUE_VERSION; this takes a few minutes once"
go mod tidy >&2
module_dir="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
mkdir -p "$dest/manifests/crds"
cp "$module_dir"/config/components/crd/bases/*.yaml "$dest/manifests/crds/"
cp "$module_dir/config/components/webhook/manifests.yaml" "$dest/manifests/webhook.yaml.tmp"
chmod -R u+w "$dest/manifests"
go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
  -o "$dest/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue
mv "$dest/kueue.tmp" "$dest/kueue"
mv "$dest/manifests/webhook.yaml.tmp" "$dest/manifests/webhook.yaml"
log "Kueue ready in $dest"
echo "$dest"
