#!/usr/bin/env bash
# All servers the test suite needs: Redis, FerretDB (MongoDB wire protocol)
# and Kafka, each on 127.0.0.1 on a non-default port.
#
#   scripts/servers.sh start     install what is missing, start what is not running
#   scripts/servers.sh stop      stop the servers we started (by recorded pid)
#   scripts/servers.sh restart   stop + start (fresh, empty data)
#   scripts/servers.sh status    one line each; exit 1 unless all are up
#   scripts/servers.sh install   only fill the caches (downloads/builds)
#   scripts/servers.sh env       print `export ...` lines for the tests:
#                                eval "$(scripts/servers.sh env)"
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOG_NAME=servers
SERVERS=(redis ferretdb kafka)

# run_all ACTION: run scripts/<server>.sh ACTION for every server at once.
# In parallel because the cold path is dominated by the Maven download
# (network) and the FerretDB build (CPU), which overlap well. Fails if any did.
run_all() {
  local action="$1" s failed=()
  local -A pids=()
  for s in "${SERVERS[@]}"; do
    "$SCRIPTS_DIR/$s.sh" "$action" &
    pids[$s]=$!
  done
  for s in "${SERVERS[@]}"; do
    wait "${pids[$s]}" || failed+=("$s")
  done
  if ((${#failed[@]})); then
    log "$action failed for: ${failed[*]}"
    return 1
  fi
}

cmd_env() {
  echo "export KAFKA_BOOTSTRAP=$DPS_HOST:$DPS_KAFKA_PORT"
  echo "export MONGODB_URL=mongodb://$DPS_HOST:$DPS_MONGO_PORT/"
  echo "export REDIS_URL=redis://$DPS_HOST:$DPS_REDIS_PORT/0"
}

cmd_status() {
  local s rc=0
  for s in "${SERVERS[@]}"; do
    "$SCRIPTS_DIR/$s.sh" status || rc=1
  done
  return "$rc"
}

cmd_start() {
  local t0=$SECONDS
  ensure_dirs
  # Debian packages first and alone: apt must not run while the others are
  # busy downloading (it is serialized anyway, this just keeps output tidy).
  "$SCRIPTS_DIR/redis.sh" install
  if ! run_all start; then
    cmd_status || true
    log "logs: $LOG_DIR"
    exit 1
  fi
  log "all servers up in $((SECONDS - t0))s"
}

main() {
  case "${1:-}" in
    start) cmd_start ;;
    stop) run_all stop ;;
    restart) run_all stop && cmd_start ;;
    status) cmd_status ;;
    install) ensure_dirs && "$SCRIPTS_DIR/redis.sh" install && run_all install ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|restart|status|install|env" >&2; exit 2 ;;
  esac
}

main "$@"
