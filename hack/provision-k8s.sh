#!/usr/bin/env bash
# Provisions the control-plane binaries that integration tests and `make dev` run:
# etcd, kube-apiserver, kube-controller-manager and kubectl at one pinned version.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, if it already holds the binaries (nothing is built);
#   2. the cache $TUNEFORGE_CACHE/k8s/<version>/ from an earlier run;
#   3. a build from the upstream Go modules through the Go module proxy.
#
# The build uses a throwaway Go module that requires k8s.io/kubernetes at the pinned
# version and replaces every staging module (k8s.io/api, k8s.io/client-go, ...) with its
# matching v0.x.y release, which is how the Kubernetes monorepo is consumed as a library.
# Prints the directory holding the binaries on its last line of stdout.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
CACHE_ROOT="${TUNEFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tuneforge}"
BINARIES=(etcd kube-apiserver kube-controller-manager kubectl)

log() { echo "provision-k8s: $*" >&2; }

have_all() {
  local dir="$1" bin
  for bin in "${BINARIES[@]}"; do [[ -x "$dir/$bin" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

dest="$CACHE_ROOT/k8s/$K8S_VERSION"
if have_all "$dest"; then
  echo "$dest"
  exit 0
fi

command -v go >/dev/null || { log "Go is needed to build the control plane (or set KUBEBUILDER_ASSETS)"; exit 1; }
mkdir -p "$dest"
staging_version="v0.${K8S_VERSION#v1.}"
source "$(dirname "${BASH_SOURCE[0]}")/go-module.sh"
go_build_env "$CACHE_ROOT"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- kubernetes ---------------------------------------------------------------------
log "building Kubernetes $K8S_VERSION (staging modules $staging_version); this takes a while once"
throwaway_module "$work/k8s" k8s-build "k8s.io/kubernetes@$K8S_VERSION" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
k8s_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
for module in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$k8s_mod"); do
  go mod edit -replace="$module=$module@$staging_version"
done
go mod tidy >/dev/null 2>&1 || true
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for bin in kube-apiserver kube-controller-manager kubectl; do
  log "go build $bin"
  go build -trimpath -ldflags "$ldflags" -o "$dest/$bin.tmp" "k8s.io/kubernetes/cmd/$bin"
  mv "$dest/$bin.tmp" "$dest/$bin"
done

# --- etcd ---------------------------------------------------------------------------
log "building etcd $ETCD_VERSION"
throwaway_module "$work/etcd" etcd-build "go.etcd.io/etcd/server/v3@$ETCD_VERSION" go.etcd.io/etcd/server/v3
go mod tidy >/dev/null 2>&1 || true
go build -trimpath -ldflags "-s -w" -o "$dest/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$dest/etcd.tmp" "$dest/etcd"

have_all "$dest" || { log "build finished but binaries are missing in $dest"; exit 1; }
log "binaries ready in $dest"
echo "$dest"
