"""Model(precision="bf16"): end-to-end logits against transformers in fp32 and in bf16.

The bf16 path rounds activations to bf16 at every matrix product but the router and sums in
fp32; transformers in bf16 rounds its weights' products, its residual stream and its attention
too. On the same random tiny checkpoints the bf16 path must stay closer to transformers-fp32
than transformers-bf16 does, agree with it on the greedy next token about as often, and really
differ from the exact path. Skipped, with the reason, on CPUs without AVX512_BF16.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gptoss
from gptoss import _core

pytest.importorskip("torch")
pytest.importorskip("transformers")
from hf_reference import hf_logits  # noqa: E402

HAS_DOT = bool(_core.kernels.bf16_dot_available())
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="this CPU has no AVX512_BF16: precision='bf16' cannot run here")

CASES = [("tiny", 0, "hf", 60), ("tiny4", 3, "original", 45), ("gqa4", 4, "hf", 50), ("hd32", 5, "original", 40)]


def _tokens(vocab: int, n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(500 + seed).integers(0, vocab, n)]


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


@needs_dot
@pytest.mark.parametrize("name,seed,layout,n", CASES)
def test_bf16_logits_against_transformers(make_checkpoint, name, seed, layout, n):
    d = make_checkpoint(name, seed, layout)
    m = gptoss.Model(d, precision="bf16")
    assert m.precision_active == "bf16"
    toks = _tokens(m.config.vocab_size, n, seed)
    ours = m.forward(toks)
    ref = hf_logits(d, toks)
    hf_bf16 = hf_logits(d, toks, "bfloat16")
    exact = gptoss.Model(d, precision="fp32").forward(toks)
    ours_err, hf_err = _rel(ours, ref), _rel(hf_bf16, ref)
    assert np.std(ref[-1]) > 0.1  # a model whose logits depend on the input
    assert 1e-5 < _rel(ours, exact)  # the bf16 path was taken (fp32 is within ~2e-6)
    assert ours_err <= hf_err, f"bf16 path {ours_err:.3g} vs transformers-bf16 {hf_err:.3g}"
    assert ours_err < 5e-2
    agree = np.mean(ours.argmax(-1) == ref.argmax(-1))
    agree_hf = np.mean(hf_bf16.argmax(-1) == ref.argmax(-1))
    assert agree >= min(agree_hf, 0.97) - 1.0 / n, (agree, agree_hf)


@needs_dot
def test_bf16_greedy_decode_matches_its_own_prefill(make_checkpoint):
    """Decode steps (one token: the fp32 dot products on bf16-rounded activations) compute what
    the bf16 GEMM of a long step does: the greedy continuation is the argmax of a full forward."""
    d = make_checkpoint("gqa4", 8, "original")
    m = gptoss.Model(d, precision="bf16")
    prompt = _tokens(m.config.vocab_size, 20, 8)
    s = m.new_sequence()
    logits, got = s.prefill(prompt), []
    rows = []
    for _ in range(12):
        t = int(np.argmax(logits))
        got.append(t)
        logits = s.decode(t)
        rows.append(logits)
    full = m.forward(prompt + got)
    np.testing.assert_allclose(np.stack(rows), full[len(prompt):], rtol=0, atol=2e-3 * np.abs(full).max())
    assert [int(t) for t in full[len(prompt) - 1:-1].argmax(-1)] == got


def test_precision_arguments(make_checkpoint):
    d = make_checkpoint("tiny", 0, "hf")
    assert gptoss.Model(d).precision_active == "fp32"  # the default: exact
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        gptoss.Model(d, precision="fp16")
    info = gptoss.build_info()
    assert info["cpu_bf16_dot"] is HAS_DOT
    old = os.environ.get("GPTOSS_SIMD")
    os.environ["GPTOSS_SIMD"] = "avx2"
    try:
        with pytest.raises(ValueError, match="needs a CPU with AVX512_BF16"):
            gptoss.Model(d, precision="bf16")
    finally:
        if old is None:
            del os.environ["GPTOSS_SIMD"]
        else:
            os.environ["GPTOSS_SIMD"] = old


@pytest.mark.skipif(not gptoss.build_info().get("cuda_emu"), reason="no CUDA emulator in this build")
def test_cuda_bf16_runs_the_tensor_cores_on_plain_bf16():
    """On CUDA, precision='bf16' turns off the hi/lo split (one MMA on bf16 operands): a prefill
    long enough for the tensor-core GEMMs (over 8 rows) moves, within bf16's error."""
    toks = _tokens(1024, 24, 9)
    exact = gptoss.Model.synthetic("tiny", seed=9, device="cuda-emu", kv_cache_bytes=1 << 22)
    bf = gptoss.Model.synthetic("tiny", seed=9, device="cuda-emu", kv_cache_bytes=1 << 22, precision="bf16")
    assert exact.precision_active == "fp32" and bf.precision_active == "bf16"
    a, b = exact.forward(toks), bf.forward(toks)
    assert 1e-6 < _rel(b, a) < 5e-2
