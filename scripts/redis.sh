#!/usr/bin/env bash
# Redis for the test suite: Debian's redis-server, run as our own process on
# 127.0.0.1:$DPS_REDIS_PORT (default 36379), append-only file fsynced every second.
# Usage: scripts/redis.sh install|start|stop|status
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOG_NAME=redis
NAME=redis
PATTERN=redis-server # what /proc/<pid>/cmdline must contain

redis_install() {
  # The Debian package also ships a system service; we never use it (on a
  # machine without systemd it is not started anyway).
  need_cmd redis-server redis-server
  need_cmd redis-cli redis-tools
}

redis_ping() {
  [[ "$(redis-cli -h "$DPS_HOST" -p "$DPS_REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_ready() { wait_until "$NAME" "$PATTERN" 30 redis_ping; }

redis_launch() {
  log "starting redis-server on $DPS_HOST:$DPS_REDIS_PORT"
  # The production persistence (docker-compose.yml): an append-only file fsynced
  # every second, so a redis-server killed mid-run comes back with all but the
  # last second of writes (bench/online_store_bench.py measured the cost: within
  # noise of no persistence). No RDB snapshots (--save ''). `start` still begins
  # from an empty data dir (generic_start), so every test run starts clean.
  # --logfile '' logs to stdout, which start_bg captures.
  start_bg "$NAME" redis-server \
    --port "$DPS_REDIS_PORT" --bind "$DPS_HOST" \
    --save '' --appendonly yes --appendfsync everysec --daemonize no \
    --dir "$(data_dir "$NAME")" --logfile '' \
    --protected-mode yes
}

redis_start() {
  redis_install
  generic_start "$NAME" "$PATTERN" "$DPS_REDIS_PORT" redis_ready redis_launch
}

main() {
  case "${1:-}" in
    install) lock_server "$NAME" && redis_install ;;
    start) lock_server "$NAME" && redis_start ;;
    stop) lock_server "$NAME" && stop_server "$NAME" "$PATTERN" 10 ;;
    status) status_line "$NAME" "$PATTERN" "$DPS_REDIS_PORT" ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
  esac
}

main "$@"
