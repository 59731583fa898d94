#!/usr/bin/env bash
# One-shot GPU check for a bare CUDA box (python3, pip, nvcc): builds the extension for the local
# GPU only, answers the riskiest questions first (bench/gpu_checks.py: PASS/FAIL lines), runs the
# CUDA tests, benchmarks full-size synthetic gpt-oss-20b and -120b generated on the device, and
# prints a compact table last, the checks at its top. Everything is logged under $OUT (default
# ./gpu_out). Each step has its own timeout, cut to what is left of the 8-minute budget
# (GPU_CHECK_BUDGET seconds), so one hang does not eat the rest.
#
#   bash bench/gpu_check.sh            # OUT=/path bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
: > "$SUM"
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for the whole check (the issue allows 8 minutes)
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUM"; }
# budget CAP RESERVE: a step's timeout: at most CAP, and never into the RESERVE seconds that the
# later steps need (at least 10 s, so a late step still reports something).
budget() {
  local left=$(( T0 + BUDGET - $(date +%s) - $2 ))
  (( left > $1 )) && left=$1
  (( left < 10 )) && left=10
  echo $left
}

log "gpu_check start $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
head -15 "$OUT/nvidia-smi.txt"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
ARCH=${ARCH:-90}
log "arch sm_$ARCH, nvcc: $(nvcc --version 2>/dev/null | tail -1)"

# 1. build tools: the lent H200 image has them all and reaches no package registry, so pip
# runs only when something is missing (and gives up fast: no retries, short timeout).
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
MISSING=()
python3 -c "import pybind11" 2>/dev/null || MISSING+=("pybind11>=2.12")
python3 -c "import numpy" 2>/dev/null || MISSING+=(numpy)
python3 -c "import pytest" 2>/dev/null || MISSING+=(pytest)
command -v cmake > /dev/null || MISSING+=(cmake)
command -v ninja > /dev/null || MISSING+=(ninja)
if [ ${#MISSING[@]} -gt 0 ]; then
  log "missing: ${MISSING[*]}: trying pip"
  { timeout 60 python3 -m pip install -q --retries 0 "${MISSING[@]}" \
    || timeout 60 python3 -m pip install -q --retries 0 --break-system-packages "${MISSING[@]}"; } > "$OUT/pip.log" 2>&1 \
    || log "pip install failed (see pip.log); trying with what is installed"
fi

PYINC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$PYINC/Python.h" ]; then
  log "Python.h missing in $PYINC: trying apt-get install python3-dev"
  (timeout 120 apt-get install -y python3-dev || timeout 120 sudo apt-get install -y python3-dev) > "$OUT/apt.log" 2>&1
fi

# 2. build for this GPU only
BUILD=$ROOT/build/gpu_check
PYBIND_DIR=$(python3 -m pybind11 --cmakedir 2>/dev/null)
log "configure + build (sm_$ARCH)"
if ! timeout $(budget 240 200) bash -c "cmake -S '$ROOT' -B '$BUILD' -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTOSS_CUDA=ON -DGPTOSS_CUDA_EMU=OFF \
      -DGPTOSS_CUDA_ARCHS='${ARCH}-real' -Dpybind11_DIR='$PYBIND_DIR' -DPython_EXECUTABLE=$(command -v python3) \
      && ninja -C '$BUILD' -j$(nproc)" > "$OUT/build.log" 2>&1; then
  log "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
log "build ok"
PKG=$BUILD/pkg
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r "$ROOT/python/gptoss" "$PKG/" && cp "$BUILD"/_core*.so "$PKG/gptoss/"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import gptoss, gptoss._core as c; print(gptoss.build_info(), c.cuda_device_count(), c.cuda_device_description(0))" \
  2>&1 | tee -a "$SUM"

# 3. smoke: one tiny model on both devices (a one-line health figure even if pytest dies)
timeout $(budget 60 190) python3 - > "$OUT/smoke.txt" 2>&1 <<'PY'
import numpy as np, gptoss
from gptoss.synthetic import synthetic_tensors
cfg = gptoss.config.preset("tiny", num_hidden_layers=4)
arrays = dict(synthetic_tensors(cfg, seed=0, layout="hf"))
cpu = gptoss.Model.synthetic(cfg, seed=0)
gpu = gptoss.Model("<synthetic>", device="cuda", _config=cfg, _arrays=arrays)
toks = list(range(1, 41))
a, b = gpu.forward(toks), cpu.forward(toks)
s = gpu.new_sequence(); s.prefill(toks[:4]); d = [s.decode(t) for t in toks[4:12]]
print("smoke forward rel err", float(np.abs(a - b).max() / np.abs(b).max()),
      "decode rel err", float(np.abs(np.stack(d) - b[4:12]).max() / np.abs(b).max()))
PY
log "$(tail -3 "$OUT/smoke.txt")"

# 4. the riskiest questions first (subnormals, arrival counters, sampling paths, launch modes,
# GEMV/GEMM error, kernel attributes): one PASS/FAIL line each, at the top of the final table
log "gpu_checks"
timeout $(budget 90 170) python3 -u bench/gpu_checks.py --out "$OUT" > "$OUT/checks.log" 2>&1
log "gpu_checks rc=$?: $(tail -1 "$OUT/checks.log")"
grep -E "^(PASS|FAIL) " "$OUT/checks.log" | tee -a "$SUM"

# 5. CUDA tests
log "pytest -m cuda tests/test_cuda.py"
timeout $(budget 200 180) python3 -m pytest -m cuda tests/test_cuda.py -q -rfE -p no:cacheprovider --maxfail=60 --durations=15 \
  > "$OUT/pytest.log" 2>&1
RC=$?
log "pytest rc=$RC: $(tail -1 "$OUT/pytest.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30 | tee -a "$SUM"

# 6. benchmarks (each bounded)
for M in gpt-oss-20b gpt-oss-120b; do
  log "bench $M"
  if [ $M = gpt-oss-20b ]; then T=$(budget 110 95); else T=$(budget 150 5); fi
  timeout $T python3 -u bench/bench_cuda.py --model $M --out "$OUT" > "$OUT/bench_$M.log" 2>&1
  log "bench $M rc=$?"
  tail -3 "$OUT/bench_$M.log" | cut -c1-400
done

# 7. compact table
python3 bench/gpu_table.py "$OUT" | tee -a "$SUM"
log "done (pytest rc=$RC)"
