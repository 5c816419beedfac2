#!/usr/bin/env bash
# The test command (`make test`): from an empty machine, install everything, start the
# real servers (Kafka, FerretDB, Redis) on 127.0.0.1, run lint, type check and pytest,
# then stop the servers this run started (ones already running are left alone).
#   scripts/test.sh [pytest args...]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

scripts/venv.sh dev

# Remember which servers were up before, so we stop only what we start.
started=()
for s in redis ferretdb kafka; do
  if ! scripts/$s.sh status >/dev/null 2>&1; then
    started+=("$s")
  fi
done
stop_started() {
  local s
  for s in "${started[@]}"; do
    scripts/$s.sh stop || true
  done
}
trap stop_started EXIT

scripts/servers.sh start
eval "$(scripts/servers.sh env)"

echo "== ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
.venv/bin/python -m pytest "$@"
