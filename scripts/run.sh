#!/usr/bin/env bash
# The platform in one process (`make run`): config API, ingestion, compute and serving
# on one port with embedded backends (SQLite config store, durable SQLite event log,
# SQLite online store, chDB analytics). Nothing else to install.
#   STANDALONE_PORT=8000 DATA_DIR=./data scripts/run.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/venv.sh
echo "[run] starting the platform on port ${STANDALONE_PORT:-8000}; it prints a dev token when ready" >&2
exec .venv/bin/python -m standalone "$@"
