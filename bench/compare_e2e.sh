#!/usr/bin/env bash
# The C++ engine without Python (build-bench/bench/gptoss_bench_e2e) and through the Python
# binding (bench/bench_cpu.py), one after the other on the same checkpoint: the difference in
# tokens/s is what the binding and the Python layer cost.
#
#   bash bench/compare_e2e.sh [CHECKPOINT_DIR] [OUT_DIR]    (PROMPT=512 by default)
#
# Needs the bench preset built (cmake --workflow --preset bench) and gptoss installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-/tmp/gptoss-bench-gpt-oss-20b}
out=${2:-.}
prompt=${PROMPT:-512}
./build-bench/bench/gptoss_bench_e2e --gptoss_checkpoint="$ckpt" --gptoss_prompt="$prompt" \
  --gptoss_context=50 --gptoss_batch=1,8 --benchmark_out="$out/e2e_cpp.json" --benchmark_out_format=json
python3 bench/bench_cpu.py --checkpoint "$ckpt" --prompt "$prompt" --decode 32 --batch 8 --json "$out/e2e_python.json"
