# Sourced by the provision-*.sh scripts: building test tooling from upstream Go modules.
#
# Each tool is built in a throwaway Go module that requires the upstream module at the
# pinned version and imports the packages to build from a tools.go, so `go mod tidy`
# resolves exactly their dependencies through the Go module proxy. Module downloads and
# build objects are cached under the tuneforge cache, so a second build is quick.

# go_build_env CACHE_ROOT: the Go settings every build here uses.
go_build_env() {
  export GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
  export GOPATH="${GOPATH:-$1/go}" GOCACHE="${GOCACHE:-$1/go-build}"
}

# throwaway_module DIR NAME MODULE@VERSION PACKAGE...: creates the module in DIR, which
# requires MODULE@VERSION and imports each PACKAGE, and changes into DIR. The caller adds
# any replace directives and then runs `go mod tidy`.
throwaway_module() {
  local dir="$1" name="$2" requirement="$3" package
  shift 3
  mkdir -p "$dir"
  cd "$dir"
  go mod init "tuneforge.local/$name" >/dev/null 2>&1
  go mod edit -require="$requirement"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for package in "$@"; do printf '\t_ "%s"\n' "$package"; done
    printf ')\n'
  } > tools.go
}
