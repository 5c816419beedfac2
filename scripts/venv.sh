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
# pip's own lines (one per package collected, then the install) are the progress: a fresh
# machine spends minutes here, and silence for that long looks like a hang.
started=$SECONDS
echo "[venv] installing $req (a few minutes on a fresh machine, seconds when cached)" >&2
echo "[venv] 1/2 upgrading pip" >&2
.venv/bin/python -m pip install -q --upgrade pip >&2
echo "[venv] 2/2 installing the pinned packages" >&2
.venv/bin/python -m pip install --progress-bar on -r "$req" 2>&1 |
  { grep --line-buffered -v '^Requirement already satisfied' || true; } >&2
echo "$digest" >"$stamp"
echo "[venv] done in $((SECONDS - started)) s" >&2
