#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent, quiet when nothing changed).
#   scripts/venv.sh            runtime requirements (the platform)
#   scripts/venv.sh dev        + test/lint requirements
# pip's own cache (~/.cache/pip) is reused when present, never required.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PYTHON="${PYTHON:-python3}"
req="requirements.txt"
[[ "${1:-}" == dev ]] && req="requirements-dev.txt"

if [[ ! -x .venv/bin/python ]]; then
  echo "[venv] creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi

# Skip pip entirely when the requirement files have not changed since the last install:
# a warm `make test` should not spend seconds asking the registry about pinned versions.
stamp=".venv/.installed-$(basename "$req" .txt)"
digest="$(cat requirements.txt "$req" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
  exit 0
fi
echo "[venv] installing $req" >&2
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -r "$req" >&2
echo "$digest" >"$stamp"
