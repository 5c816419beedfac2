#!/usr/bin/env bash
# MongoDB-compatible server for the test suite: FerretDB 1.x with its SQLite
# backend, on 127.0.0.1:$DPS_MONGO_PORT (default 37017), fresh data on every
# start. Built from the FerretDB module source (Go module proxy) and cached at
# $DPS_CACHE/ferretdb-<version>/ferretdb.
# Usage: scripts/ferretdb.sh install|start|stop|status
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOG_NAME=ferretdb
NAME=ferretdb
PATTERN=ferretdb # what /proc/<pid>/cmdline must contain

FERRETDB_VERSION="${DPS_FERRETDB_VERSION:-v1.24.2}"
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_HOME="$DPS_CACHE/ferretdb-${FERRETDB_VERSION#v}"
FERRETDB_BIN="$FERRETDB_HOME/ferretdb"

# Keep Go's module and build caches inside $DPS_CACHE so that wiping it really
# means a cold machine; -modcacherw keeps that folder deletable without chmod.
# GOTOOLCHAIN=local: never try to download another Go toolchain.
go_env() {
  env GOMODCACHE="${DPS_GOMODCACHE:-$DPS_CACHE/gomod}" \
    GOCACHE="${DPS_GOCACHE:-$DPS_CACHE/gocache}" \
    GOFLAGS="-mod=mod -modcacherw -buildvcs=false" \
    GOTOOLCHAIN=local CGO_ENABLED=0 "$@"
}

ferretdb_install() {
  if [[ -x "$FERRETDB_BIN" ]]; then
    return 0
  fi
  need_cmd go
  log "building FerretDB $FERRETDB_VERSION into $FERRETDB_BIN (first run: a minute or two)"
  mkdir -p "$FERRETDB_HOME"
  local dir src json
  # `go mod download` works outside any module and prints where the source is.
  json="$(cd "$FERRETDB_HOME" && go_env go mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION")" ||
    die "go mod download $FERRETDB_MODULE@$FERRETDB_VERSION failed: $json"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  [[ -n "$dir" && -d "$dir" ]] || die "go mod download of $FERRETDB_MODULE@$FERRETDB_VERSION gave no source dir"
  # The published module lacks the generated build/version/version.txt, and
  # a binary built without it panics at start ("go install" does exactly
  # that). So build from a writable copy with the file added.
  src="$FERRETDB_HOME/src.tmp.$$"
  rm -rf "$src"
  cp -R "$dir" "$src"
  chmod -R u+w "$src"
  printf '%s\n' "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  printf '%s\n' "dps-scripts" >"$src/build/version/package.txt"
  # Build output (mostly "go: downloading ...") goes to a log, not the console.
  local build_log="$LOG_DIR/ferretdb-build.log"
  mkdir -p "$LOG_DIR"
  if ! (cd "$src" && go_env go build -trimpath -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb) >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    rm -rf "$src" "$FERRETDB_BIN.tmp"
    die "go build of FerretDB failed (full output: $build_log)"
  fi
  rm -rf "$src"
  # Rename last: a half-built binary is never taken for a cached one.
  mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  log "FerretDB $("$FERRETDB_BIN" --version | awk '/^version:/{print $2}') built"
}

ferretdb_ping() { port_open "$DPS_MONGO_PORT"; }

ferretdb_ready() { wait_until "$NAME" "$PATTERN" 60 ferretdb_ping; }

ferretdb_launch() {
  local data
  data="$(data_dir "$NAME")"
  mkdir -p "$data/sqlite" "$data/state"
  log "starting FerretDB $FERRETDB_VERSION (sqlite) on $DPS_HOST:$DPS_MONGO_PORT"
  # --debug-addr=-: no metrics/pprof HTTP listener (its default port 8088
  # could clash). --state-dir: FerretDB otherwise writes state.json into the
  # current directory. Telemetry off: the machine has no outside network.
  start_bg "$NAME" env FERRETDB_TELEMETRY=disable DO_NOT_TRACK=1 \
    "$FERRETDB_BIN" \
    --listen-addr="$DPS_HOST:$DPS_MONGO_PORT" \
    --handler=sqlite \
    --sqlite-url="file:$data/sqlite/" \
    --state-dir="$data/state" \
    --telemetry=disable \
    --debug-addr=- \
    --log-level="${DPS_FERRETDB_LOG_LEVEL:-info}"
}

ferretdb_start() {
  ferretdb_install
  generic_start "$NAME" "$PATTERN" "$DPS_MONGO_PORT" ferretdb_ready ferretdb_launch
}

main() {
  case "${1:-}" in
    install) lock_server "$NAME" && ferretdb_install ;;
    start) lock_server "$NAME" && ferretdb_start ;;
    stop) lock_server "$NAME" && stop_server "$NAME" "$PATTERN" 15 ;;
    status) status_line "$NAME" "$PATTERN" "$DPS_MONGO_PORT" ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
  esac
}

main "$@"
