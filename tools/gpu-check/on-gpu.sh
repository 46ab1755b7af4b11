#!/usr/bin/env bash
# Issue 24's measurement, on the GPU machine (torch, transformers, accelerate; no diffusers, no
# cargo, no internet), from the bundle `tools/gpu-check/run` prepared. One call, under 8 minutes:
#
#   bash tools/gpu-check/on-gpu.sh BUNDLE [RESULTS]
#
# BUNDLE   the bundle folder, or its .tar.xz / .tar.gz (unpacked into a scratch folder)
# RESULTS  where the JSON lines and logs go (default: $OUT if set, else ./gpu-check-results)
#
# Steps (each under `timeout`; a failure is recorded and the next step runs):
#   0. the card and driver (nvidia-smi), diffusers installed from the carried wheel (--no-deps)
#   1. parity: the gpu_parity binary on cuda in f32 / f16 / bf16 (parity.jsonl)
#   2. UNet speed: unet_forward (idforge) and time_unet.py (diffusers) for SD1.5 at 512 px
#      (latent 64, batch 2) and SDXL at 1024 px (latent 128, batch 2), f32 / f16 / bf16, with
#      the card's peak memory from nvidia-smi polling for both and torch's own peak (unet.jsonl)
#   3. training step: IP-Adapter-FaceID on the SD1.5-sized UNet at 512 px (latent 64), batch 8,
#      f32: train_step (idforge, 1 GPU and --replicas 2 when two are present) beside
#      time_step.py (diffusers + PEFT + torch AdamW), ms per step and peak memory (train.jsonl)
#   4. curate: the demo photographs ingested, then curated with --device cpu and --device cuda
#      by the same binary, wall time and training crops of each (curate.jsonl)
# They run in the order 1, 3, 4, 2 (the UNet timings are the longest and last) against one
# deadline, BUDGET_S seconds after the start (default 450): a step gets at most its own limit
# and what is left; a step with under 15 s left is recorded as skipped.
# summary.txt gathers everything; every command's output is under logs/.
set -uo pipefail

BUNDLE="${1:?usage: on-gpu.sh BUNDLE [RESULTS]}"
RESULTS="${2:-${OUT:-$PWD/gpu-check-results}}"
mkdir -p "$RESULTS/logs"
RESULTS="$(cd "$RESULTS" && pwd)"
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET_S:-450}))
log() { echo "[gpu-check +$(($(date +%s) - T0))s] $*" | tee -a "$RESULTS/summary.txt" >&2; }

if [ -f "$BUNDLE" ]; then
  SCRATCH="$(mktemp -d)"
  tar -xf "$BUNDLE" -C "$SCRATCH"
  BUNDLE="$SCRATCH/bundle"
fi
BUNDLE="$(cd "$BUNDLE" && pwd)"
BIN="$BUNDLE/bin"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"

# --- 0. the card, the driver, CUDA for burn -------------------------------------------------
nvidia-smi >"$RESULTS/logs/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader \
  >"$RESULTS/card.csv" 2>&1
log "card: $(cat "$RESULTS/card.csv")"
log "cuda (driver): $(grep -o 'CUDA Version: [0-9.]*' "$RESULTS/logs/nvidia-smi.txt" | head -1)"
log "bundle: $(cat "$BUNDLE/BUILD_INFO" 2>/dev/null | tr '\n' ' ')"

# burn's CUDA backend compiles its kernels at run time with NVRTC and wants the CUDA headers
# (CUDA_PATH/include, cuda_fp16.h and cuda_bf16.h for half precision). Without a toolkit on the
# machine, torch's pip packages (nvidia-cuda-runtime-cu12, nvidia-cuda-nvrtc-cu12) have both:
# their include/ folders are merged into a CUDA_PATH and their lib/ folders go on the loader path.
NV_ROOT="$("$PY" -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
if [ -n "$NV_ROOT" ]; then
  for lib in "$NV_ROOT"/*/lib; do LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
  export LD_LIBRARY_PATH
fi
if [ -z "${CUDA_PATH:-}" ] && [ ! -d /usr/local/cuda/include ] && [ ! -d /opt/cuda/include ]; then
  if [ -n "$NV_ROOT" ]; then
    mkdir -p "$WORK/cuda/include"
    for inc in "$NV_ROOT"/*/include; do
      for f in "$inc"/*; do ln -sfn "$f" "$WORK/cuda/include/$(basename "$f")"; done
    done
    export CUDA_PATH="$WORK/cuda"
    log "CUDA_PATH: torch's nvidia pip headers ($NV_ROOT/*/include)"
  else
    log "no CUDA toolkit and no nvidia pip packages: burn's CUDA backend will not find its headers"
  fi
fi

"$PY" -m pip install --no-deps --no-index --quiet "$BUNDLE"/wheels/diffusers-*.whl \
  >"$RESULTS/logs/pip.txt" 2>&1 || log "pip install diffusers failed (logs/pip.txt)"
"$PY" -c 'import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.version.cuda)' \
  >"$RESULTS/versions.txt" 2>&1
log "torch diffusers transformers cuda: $(cat "$RESULTS/versions.txt")"

# Peak memory used on the card while a command runs: nvidia-smi polled every 100 ms, minus what
# was in use before it started (the CUDA context is counted, as torch's reserved pool is).
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
# run_step NAME TIMEOUT_S CMD...: runs CMD, its stdout's JSON lines to $RESULTS/NAME.jsonl
# (with the step's peak memory and exit status added), stdout+stderr to logs/.
run_step() {
  local name="$1" limit="$2" file="$3"; shift 3
  local tag="${name//[^A-Za-z0-9_.-]/_}"
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    echo "{\"step\":\"$name\",\"skipped\":\"budget spent\"}" >>"$RESULTS/$file"
    log "$name: skipped (budget spent)"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local base; base="$(gpu_used)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
    >"$WORK/$tag.mem" 2>/dev/null &
  local poll=$!
  local s; s=$(date +%s.%N)
  timeout "$limit" "$@" >"$RESULTS/logs/$tag.out" 2>"$RESULTS/logs/$tag.err"
  local rc=$?
  local wall; wall=$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null
  local peak; peak=$(sort -n "$WORK/$tag.mem" | tail -1)
  local delta=$(( ${peak:-0} - ${base:-0} ))
  grep '^{' "$RESULTS/logs/$tag.out" | while IFS= read -r line; do
    echo "${line%\}},\"step\":\"$name\",\"rc\":$rc,\"wall_s\":$wall,\"smi_peak_mib\":${peak:-null},\"smi_peak_over_idle_mib\":$delta}"
  done >>"$RESULTS/$file"
  if ! grep -q '^{' "$RESULTS/logs/$tag.out"; then
    echo "{\"step\":\"$name\",\"rc\":$rc,\"wall_s\":$wall,\"error\":\"no result (logs/$tag.err)\"}" >>"$RESULTS/$file"
  fi
  log "$name: rc $rc, ${wall}s, peak ${peak:-?} MiB (idle ${base:-?})"
  [ "$rc" = 124 ] && log "$name: timed out after ${limit}s"
  return 0
}

# --- 1. parity on CUDA ----------------------------------------------------------------------
for p in f32 f16 bf16; do
  run_step "parity-$p" 90 parity.jsonl \
    "$BIN/gpu_parity" --backend cuda --precision "$p" --root "$BUNDLE/fixtures"
done

# --- 3. training step -----------------------------------------------------------------------
run_step "train-sd15-512-b8-faceid-idforge" 120 train.jsonl \
  "$BIN/train_step" --bench --sd15 --latent 64 --batch 8 --rounds 3
run_step "train-sd15-512-b8-faceid-torch" 90 train.jsonl \
  "$PY" "$BUNDLE/time_step.py" --device cuda --latent 64 --batch 8 --rounds 3
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  run_step "train-sd15-512-b8-faceid-idforge-2gpu" 120 train.jsonl \
    "$BIN/train_step" --bench --sd15 --latent 64 --batch 8 --rounds 3 --replicas 2
fi

# --- 4. curate on the demo photographs, CPU and CUDA ----------------------------------------
export IDFORGE_CACHE="$BUNDLE/cache"
CORES=$(nproc)
for dev in cpu cuda; do
  runs="$WORK/runs-$dev"
  mkdir -p "$runs"
  timeout 60 "$BIN/idforge" ingest --recipe "$BUNDLE/demo.toml" --runs-dir "$runs" \
    >"$RESULTS/logs/ingest-$dev.out" 2>&1 || log "ingest ($dev) failed (logs/ingest-$dev.out)"
  # The CLI prints its own summary; the JSON line is written here from the wall time.
  cat >"$WORK/curate-$dev.sh" <<EOF
s=\$(date +%s.%N)
"$BIN/idforge" curate --recipe "$BUNDLE/demo.toml" --runs-dir "$runs" --device $dev --threads 0 \\
  --weights "$BUNDLE/cache/face-api-1.7.15/model" >&2 || exit \$?
e=\$(date +%s.%N)
kept=\$(find "$runs/demo/curate/crops" -type f 2>/dev/null | wc -l)
secs=\$(awk -v a="\$s" -v b="\$e" 'BEGIN { printf "%.2f", b - a }')
echo "{\"impl\":\"idforge curate\",\"device\":\"$dev\",\"images\":6,\"cores\":$CORES,\"curate_s\":\$secs,\"training_crops\":\$kept}"
EOF
  run_step "curate-$dev" 90 curate.jsonl bash "$WORK/curate-$dev.sh"
done

# --- 2. UNet speed beside diffusers ---------------------------------------------------------
TIME_UNET="$BUNDLE/time_unet.py"
for cfg in "sd15 64" "sdxl 128"; do
  set -- $cfg
  model=$1 latent=$2
  xl=(); [ "$model" = sdxl ] && xl=(--sdxl)
  for p in f32 f16 bf16; do
    run_step "unet-$model-$p-idforge" 75 unet.jsonl \
      "$BIN/unet_forward" --bench "${xl[@]}" --latent "$latent" --batch 2 --rounds 5 --precision "$p"
    run_step "unet-$model-$p-diffusers" 60 unet.jsonl \
      "$PY" "$TIME_UNET" --device cuda --dtype "$p" "${xl[@]}" --latent "$latent" --batch 2 --rounds 5
  done
done

# --- summary --------------------------------------------------------------------------------
{
  echo
  echo "== parity (rel = max |Δ| / scale; f32 bound 1e-4) =="
  cat "$RESULTS/parity.jsonl" 2>/dev/null
  echo "== unet =="
  cat "$RESULTS/unet.jsonl" 2>/dev/null
  echo "== train step =="
  cat "$RESULTS/train.jsonl" 2>/dev/null
  echo "== curate =="
  cat "$RESULTS/curate.jsonl" 2>/dev/null
} >>"$RESULTS/summary.txt"
"$PY" - "$RESULTS" <<'PY' >>"$RESULTS/summary.txt" 2>&1 || true
import json, sys, pathlib
r = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (r / "unet.jsonl").read_text().splitlines() if l.strip()]
print("\n| UNet | precision | idforge ms | diffusers ms | idforge / diffusers time | idforge peak MiB (smi) | diffusers peak MiB (smi / torch allocated) |")
print("|---|---|---:|---:|---:|---:|---:|")
for model in ("sd15", "sdxl"):
    for p in ("f32", "f16", "bf16"):
        i = next((x for x in rows if x.get("step") == f"unet-{model}-{p}-idforge"), {})
        d = next((x for x in rows if x.get("step") == f"unet-{model}-{p}-diffusers"), {})
        im, dm = i.get("ms_per_forward"), d.get("ms_per_forward")
        ratio = f"{im / dm:.2f}" if im and dm else "-"
        print(f"| {model} | {p} | {im or '-'} | {dm or '-'} | {ratio} | {i.get('smi_peak_over_idle_mib', '-')} | "
              f"{d.get('smi_peak_over_idle_mib', '-')} / {d.get('peak_allocated_mib', '-')} |")
PY
log "done in $(($(date +%s) - T0))s; results in $RESULTS"
