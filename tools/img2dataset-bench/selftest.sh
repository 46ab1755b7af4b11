#!/usr/bin/env bash
# End-to-end check of run.py against a loopback-only HTTP server.
#   tools/img2dataset-bench/selftest.sh [N_URLS=200] [extra run.py args...]
# Makes 8 synthetic ~200 KB JPEGs, serves them on 127.0.0.1 (serve.py) on a free port, writes N_URLS URLs (the 8 files repeated with ?i=k), runs run.py,
# checks that >= 95% came back ok, stops the server, and echoes run.py's JSON line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="$REPO/.venv-bench/bin/python"
N="${1:-200}"
shift || true

bash "$HERE/setup.sh" >&2

WORK="$(mktemp -d /tmp/i2d-selftest-XXXXXX)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$PY" "$HERE/make_images.py" "$WORK/www" --count 8 2>/dev/null
# serve.py = `python3 -m http.server --bind 127.0.0.1` with a 1024-deep listen backlog
# (the stock backlog of 5 causes SYN-drop timeouts at 64 concurrent connections).
"$PY" "$HERE/serve.py" --dir "$WORK/www" --max-seconds 900 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
PORT=""
for _ in $(seq 100); do
  PORT="$(sed -n 's/^PORT //p' "$WORK/server.log")"
  [[ -n "$PORT" ]] && break
  sleep 0.1
done
[[ -n "$PORT" ]] || { echo "server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }

for k in $(seq 0 $((N - 1))); do
  printf 'http://127.0.0.1:%s/img%03d.jpg?i=%d\n' "$PORT" $((k % 8)) "$k"
done >"$WORK/urls.txt"

"$PY" "$HERE/run.py" --urls "$WORK/urls.txt" --out "$WORK/out" "$@" >"$WORK/result.json"
cat "$WORK/result.json"

"$PY" - "$WORK/result.json" "$WORK/out" "$WORK/www" "$N" <<'PY'
import json, sys, pathlib
r = json.loads(pathlib.Path(sys.argv[1]).read_text().strip())
out, www, n = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
assert r["images"] == n, r
assert r["ok"] >= 0.95 * n, r
# the written files are the original bytes (no re-encode)
originals = {p.read_bytes() for p in www.glob("*.jpg")}
written = list(out.glob("*/*.jpg"))
assert len(written) == r["ok"], (len(written), r["ok"])
assert all(p.read_bytes() in originals for p in written), "img2dataset re-encoded an image"
print(f"selftest ok: {r['ok']}/{n} images, {r['images_per_s']} images/s, byte-identical output", file=sys.stderr)
PY
