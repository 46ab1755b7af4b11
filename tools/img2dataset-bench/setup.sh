#!/usr/bin/env bash
# Create <repo>/.venv-bench and install the pinned img2dataset stack into it.
# Idempotent: a marker file inside the venv records the hash of requirements.txt
# and the interpreter version; when both still match (and img2dataset imports),
# nothing is reinstalled.
#
# Usage: tools/img2dataset-bench/setup.sh        (PYTHON=python3.11 to pick another interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.venv-bench"
REQ="$HERE/requirements.txt"
MARKER="$VENV/.idforge-bench-installed"
PYTHON="${PYTHON:-python3}"
export NO_ALBUMENTATIONS_UPDATE=1  # albumentations otherwise queries the package index on import

log() { echo "[img2dataset-bench setup] $*"; }

want="$(sha256sum "$REQ" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

if [[ -x "$VENV/bin/python" && -f "$MARKER" && "$(cat "$MARKER")" == "$want" ]] \
   && "$VENV/bin/python" -c 'import img2dataset, cv2' 2>/dev/null; then
  log "up to date: $VENV ($want)"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
else
  log "reusing venv $VENV"
fi

rm -f "$MARKER"
log "installing pinned requirements from $REQ"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
log "checking dependency consistency"
"$VENV/bin/python" -m pip check
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import cv2, img2dataset  # noqa: F401  (import check)
print("[img2dataset-bench setup] img2dataset", md.version("img2dataset"), "/ opencv", cv2.__version__)
PY
echo "$want" > "$MARKER"
log "done"
