#!/usr/bin/env bash
# Provisions the pinned helm v3 binary that the chart tests, `make manifests` and the
# install docs use.
#
# Order of preference:
#   1. $TUNEFORGE_HELM, if it names an executable (nothing is built);
#   2. the cache $TUNEFORGE_CACHE/helm/<version>/helm from an earlier run;
#   3. a build from the upstream Go module helm.sh/helm/v3 through the Go module proxy.
#
# The build uses a throwaway Go module that requires helm.sh/helm/v3 at the pinned version
# and nothing else, so minimal version selection resolves exactly helm's own dependency
# versions. The ldflags mirror helm's Makefile: the version string and the Kubernetes
# version that `helm template` and `helm lint` assume, taken from helm's client-go.
# Prints the path of the helm binary on its last line of stdout.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${TUNEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge}"

log() { echo "provision-helm: $*" >&2; }

if [[ -n "${TUNEFORGE_HELM:-}" ]]; then
  [[ -x "$TUNEFORGE_HELM" ]] || { log "TUNEFORGE_HELM=$TUNEFORGE_HELM is not an executable"; exit 1; }
  echo "$TUNEFORGE_HELM"
  exit 0
fi

dest="$CACHE_ROOT/helm/$HELM_VERSION"
if [[ -x "$dest/helm" ]]; then
  echo "$dest/helm"
  exit 0
fi

command -v go >/dev/null || { log "Go is needed to build helm (or set TUNEFORGE_HELM)"; exit 1; }
mkdir -p "$dest"
source "$(dirname "${BASH_SOURCE[0]}")/go-module.sh"
go_build_env "$CACHE_ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "building helm $HELM_VERSION; this takes a few minutes once"
throwaway_module "$work/helm" helm-build "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm
go mod tidy >/dev/null 2>&1 || true

client_go="$(go list -m -f '{{.Version}}' k8s.io/client-go)"   # e.g. v0.34.2
client_go="${client_go#v0.}"
k8s_major=1
k8s_minor="${client_go%%.*}"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata= -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
done
log "go build helm (Kubernetes $k8s_major.$k8s_minor client libraries)"
go build -trimpath -ldflags "$ldflags" -o "$dest/helm.tmp" helm.sh/helm/v3/cmd/helm
mv "$dest/helm.tmp" "$dest/helm"

log "helm ready at $dest/helm"
echo "$dest/helm"
