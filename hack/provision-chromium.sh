#!/usr/bin/env bash
# Provisions the headless browser that the dashboard's end-to-end tests drive: Debian's
# chromium package, started by Playwright's Python package (which downloads no browser of
# its own, and could not: its download host is not a package registry).
#
# Order of preference:
#   1. $TUNEFORGE_CHROMIUM, if it names an executable (nothing is installed);
#   2. /usr/bin/chromium, already installed;
#   3. `apt-get install chromium`, when this runs as root on a Debian-based machine
#      (CI machines and fresh development containers are such machines).
# Anywhere else it stops with the command to run, rather than letting the tests fail later.
# Prints the path of the chromium binary on its last line of stdout.
set -euo pipefail

SYSTEM_CHROMIUM=/usr/bin/chromium

log() { echo "provision-chromium: $*" >&2; }

if [[ -n "${TUNEFORGE_CHROMIUM:-}" ]]; then
  [[ -x "$TUNEFORGE_CHROMIUM" ]] || { log "TUNEFORGE_CHROMIUM=$TUNEFORGE_CHROMIUM is not an executable"; exit 1; }
  echo "$TUNEFORGE_CHROMIUM"
  exit 0
fi

if [[ -x "$SYSTEM_CHROMIUM" ]]; then
  echo "$SYSTEM_CHROMIUM"
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null; then
  log "the dashboard's browser tests need Debian's chromium: run 'apt-get install chromium' as root"
  log "(or set TUNEFORGE_CHROMIUM to a chromium executable)"
  exit 1
fi

log "installing Debian's chromium with apt-get; this takes a minute or two once"
export DEBIAN_FRONTEND=noninteractive
apt_log="$(mktemp)"
trap 'rm -f "$apt_log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq chromium; } >"$apt_log" 2>&1; then
  tail -n 40 "$apt_log" >&2
  log "apt-get could not install chromium (its last lines are above)"
  exit 1
fi
[[ -x "$SYSTEM_CHROMIUM" ]] || { log "apt-get installed chromium but $SYSTEM_CHROMIUM is missing"; exit 1; }
log "chromium ready at $SYSTEM_CHROMIUM"
echo "$SYSTEM_CHROMIUM"
