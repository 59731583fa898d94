"""CUDA backend: every kernel against its CPU twin (gptoss._core.kernels) on fresh random
inputs and odd shapes, and the CUDA engine against the CPU engine end to end (ragged batches,
chunked prefill, contexts past the sliding window, fork/truncate, errors).

Every test runs on two backends (the `backend` fixture):
  * "cuda": the real GPU; skipped when the build has no CUDA backend or no device is visible;
  * "emu": the same CUDA sources compiled for the CPU emulator (cuda/emu, `_core.cuda_emu`),
    so CI without a GPU still runs every kernel and the whole CUDA engine. The emulator is
    thousands of times slower, so the largest shapes are GPU-only (`gpu_only`).
Tests marked `cuda` are what bench/gpu_check.sh runs on a GPU machine.

Tolerances: the CUDA engine keeps fp32 activations and (by default) an fp32 KV cache like the
CPU engine; tensor-core products split activations into two bf16 halves, so results agree to
~1e-5 relative. The checks below use `rel` bounds on max|a - b| / max|b| with margin.
"""

from __future__ import annotations

import os
import shutil
import zlib

import numpy as np
import pytest

import gptoss
from conftest import TINY_CONFIGS, interrupt_prefill, tiny_config

try:
    from gptoss import _core as core
except ImportError:  # pragma: no cover
    core = None


def _cuda_available() -> bool:
    return core is not None and hasattr(core, "cuda_device_count") and core.cuda_device_count() > 0


def _emu_available() -> bool:
    return core is not None and hasattr(core, "cuda_emu")


BACKENDS = [
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not _cuda_available(), reason="no CUDA build or no CUDA device")]),
    pytest.param("emu", marks=pytest.mark.skipif(not _emu_available(), reason="built without the CUDA emulator")),
]


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.module = core if name == "cuda" else core.cuda_emu
        self.device = "cuda" if name == "cuda" else "cuda-emu"
        self.kernels = self.module.cuda_kernels

    @property
    def emu(self) -> bool:
        return self.name == "emu"


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return Backend(request.param)


def cuda_test(f):
    """Runs on every backend (the test takes the `backend` fixture)."""
    return f


def gpu_only(*values, reason="too slow for the CPU emulator"):
    """A parametrization case that only runs on a real GPU."""
    return pytest.param(*values, marks=pytest.mark.gpu_only)


@pytest.fixture(autouse=True)
def _skip_gpu_only_on_emu(request):
    if request.node.get_closest_marker("gpu_only") and "backend" in request.fixturenames:
        if request.getfixturevalue("backend").emu:
            pytest.skip("GPU-only size (the emulator would take minutes)")


# ---------------------------------------------------------------------------------- helpers
def to_bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32)


def assert_rel(got: np.ndarray, want: np.ndarray, rel: float, what: str = "") -> None:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    assert err <= rel * scale + 1e-6, f"{what}: max abs err {err:.3g} vs scale {scale:.3g} (rel {err / max(scale, 1e-30):.3g} > {rel})"


def mx_random(rng, n: int, k: int, lo: int = 118, hi: int = 130):
    return (rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8),
            rng.integers(lo, hi, (n, k // 32), dtype=np.uint8))


ck = core.kernels if core is not None else None


# ------------------------------------------------------------------- non-GPU build check
def test_cuda_backend_compiled_when_nvcc_present():
    if core is None:
        pytest.skip("extension not built")
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    info = gptoss.build_info()
    if os.environ.get("GPTOSS_CUDA", "").upper() == "OFF":
        pytest.skip("CUDA explicitly disabled")
    if not nvcc:
        pytest.skip("no nvcc on this machine")
    assert info["cuda"] is True, "nvcc is present but the CUDA backend was not compiled in"
    assert info["cuda_archs"]
    assert hasattr(core, "cuda_engine") and hasattr(core, "cuda_kernels")
    assert isinstance(core.cuda_device_count(), int)  # never raises, even without a driver


def test_cuda_emulator_built():
    """The CUDA tests below run on the emulator in CI: a build without it would skip them silently."""
    if core is None:
        pytest.skip("extension not built")
    import sys

    import platform

    if (not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64")
            or os.environ.get("GPTOSS_CUDA_EMU", "").upper() == "OFF"):
        pytest.skip("the emulator is built by default on x86-64 Linux (GPTOSS_CUDA_EMU)")
    assert gptoss.build_info()["cuda_emu"] is True and _emu_available()
    assert core.cuda_emu.cuda_device_count() == 1


def test_cuda_device_errors_are_clear():
    if core is None or not gptoss.build_info()["cuda"]:
        pytest.skip("no CUDA build")
    if _cuda_available():
        pytest.skip("a device is present")
    with pytest.raises(RuntimeError, match="cuda"):
        gptoss.Model.synthetic("tiny", device="cuda")
    with pytest.raises(RuntimeError):
        core.cuda_kernels.rmsnorm(np.ones((2, 4), np.float32), np.ones(4, np.float32), 1e-5)


# ------------------------------------------------------------------------ small kernels
@cuda_test
@pytest.mark.parametrize("T,H", [(1, 64), (3, 96), (17, 2880), (5, 100), (2, 7)])
def test_rmsnorm(backend, T, H):
    rng = np.random.default_rng(T * 1000 + H)
    x = rng.standard_normal((T, H)).astype(np.float32) * 3
    w = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    assert_rel(backend.kernels.rmsnorm(x, w, 1e-5), ck.rmsnorm(x, w, 1e-5), 1e-5, "rmsnorm")


@cuda_test
@pytest.mark.parametrize("T,K,H", [(1, 4, 64), (7, 2, 2880), (3, 3, 50)])
def test_add_rmsnorm(backend, T, K, H):
    rng = np.random.default_rng(T + K + H)
    x = rng.standard_normal((T, H)).astype(np.float32)
    add = rng.standard_normal((T, K, H)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    xo, y = backend.kernels.add_rmsnorm(x, add, w, 1e-5)
    xr = x + add.sum(axis=1, dtype=np.float32)
    assert_rel(xo, xr, 1e-6, "residual")
    assert_rel(y, ck.rmsnorm(xr.astype(np.float32), w, 1e-5), 1e-5, "norm")


@cuda_test
def test_embedding(backend):
    rng = np.random.default_rng(1)
    E = to_bf16(rng.standard_normal((333, 70)).astype(np.float32))
    tok = rng.integers(0, 333, 41).astype(np.int32)
    np.testing.assert_array_equal(backend.kernels.embedding(tok, E), ck.embedding(tok, E))


@cuda_test
@pytest.mark.parametrize("heads,half", [(4, 32), (3, 16), (8, 64)])
def test_rope(backend, heads, half):
    rng = np.random.default_rng(heads * half)
    cfg = gptoss.config.preset("tiny", head_dim=2 * half)
    inv_freq, conc = cfg.yarn()
    inv_freq = np.asarray(inv_freq, np.float32)
    pos = np.array([0, 1, 5, 127, 128, 4095, 4096, 33333, 131071], np.int64)
    x = rng.standard_normal((len(pos), heads * 2 * half)).astype(np.float32)
    assert_rel(backend.kernels.rope(x, pos, inv_freq, conc, heads), ck.rope(x, pos, inv_freq, conc, heads), 2e-6, "rope")


# ---------------------------------------------------------------------------- attention
ATTN_CASES = [
    # n_heads, n_kv, D, L, window, block_size, pos pattern
    (4, 2, 64, 40, 0, 4, "prefill"),
    (4, 2, 64, 40, 8, 4, "prefill"),
    (64, 8, 64, 300, 128, 16, "prefill"),
    (64, 8, 64, 700, 0, 16, "decode"),
    (64, 8, 64, 700, 128, 16, "decode"),
    (8, 2, 64, 33, 5, 1, "random"),
    (6, 3, 32, 50, 11, 3, "random"),
    (8, 8, 32, 20, 0, 7, "prefill"),
    (16, 1, 64, 90, 0, 5, "prefill"),
    (4, 1, 128, 70, 16, 16, "random"),
]


def _attn_inputs(case, seed):
    nh, nkv, D, L, window, bs, pat = case
    rng = np.random.default_rng(seed)
    if pat == "prefill":
        pos = np.arange(L, dtype=np.int64)
    elif pat == "decode":
        pos = np.array([L - 1], np.int64)
    else:
        pos = np.sort(rng.choice(L, size=min(L, 13), replace=False)).astype(np.int64)
    q = rng.standard_normal((len(pos), nh * D)).astype(np.float32)
    k = rng.standard_normal((L, nkv, D)).astype(np.float32)
    v = rng.standard_normal((L, nkv, D)).astype(np.float32)
    sinks = (1 + 2 * rng.standard_normal(nh)).astype(np.float32)
    return q, k, v, pos, sinks, D ** -0.5, window, bs


@cuda_test
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("split_len", [0, 32])
@pytest.mark.parametrize("path", [1, 2])  # CUDA cores, tensor cores (head_dim 64 only)
def test_attention(backend, case, split_len, path):
    q, k, v, pos, sinks, scale, window, bs = _attn_inputs(case, zlib.crc32(repr(case).encode()))
    want = ck.attention(q, k, v, pos, sinks, scale, window, bs, 3)
    got = backend.kernels.attention(q, k, v, pos, sinks, scale, window, bs, 5, "float32", split_len, path)
    assert_rel(got, want, 2e-5, "attention")
    if split_len:  # the splits merged by the separate kernel instead of their last block
        two = backend.kernels.attention(q, k, v, pos, sinks, scale, window, bs, 5, "float32", split_len, path,
                                        True, False)
        assert_rel(two, want, 2e-5, "attention (merge kernel)")


@cuda_test
@pytest.mark.parametrize("case", [c for c in ATTN_CASES if c[2] == 64 and c[6] != "decode"],
                         ids=lambda c: "-".join(map(str, c)))
def test_attention_tensor_cores_on_bf16_operands(backend, case):
    """tc_split=False (set_tc_split(False) in the engine): one MMA on bf16 q, k, p, v instead of
    three on hi/lo parts: bf16-close to the reference with bf16-rounded inputs, and not the
    fp32-level result."""
    q, k, v, pos, sinks, scale, window, bs = _attn_inputs(case, 11)
    r = lambda a: from_bf16(to_bf16(a)).reshape(a.shape)  # noqa: E731
    qs = r(q * scale) / scale
    want = ck.attention(qs, r(k), r(v), pos, sinks, scale, window, bs, 3)
    got = backend.kernels.attention(q, k, v, pos, sinks, scale, window, bs, 5, "float32", 0, 2, False)
    assert_rel(got, want, 1e-2, "attention (bf16 operands)")
    exact = backend.kernels.attention(q, k, v, pos, sinks, scale, window, bs, 5, "float32", 0, 2, True)
    assert np.abs(got - exact).max() > 1e-5 * np.abs(exact).max()


@cuda_test
@pytest.mark.parametrize("case", ATTN_CASES[:6], ids=lambda c: "-".join(map(str, c)))
def test_attention_bf16_cache(backend, case):
    q, k, v, pos, sinks, scale, window, bs = _attn_inputs(case, 7)
    kb, vb = from_bf16(to_bf16(k)).reshape(k.shape), from_bf16(to_bf16(v)).reshape(v.shape)
    want = ck.attention(q, kb, vb, pos, sinks, scale, window, bs, 3)
    for path in (1, 2):
        got = backend.kernels.attention(q, k, v, pos, sinks, scale, window, bs, 5, "bfloat16", 0, path)
        assert_rel(got, want, 2e-5, f"attention (bf16 cache, path {path})")


# -------------------------------------------------------------------------- dense GEMM
@cuda_test
@pytest.mark.parametrize("M", [1, 3, 8, 9, 64, 70, 130])
@pytest.mark.parametrize("K,N", [(64, 65), (100, 33), (2880, 300), (4096, 129), (7, 5), (56, 70)])
@pytest.mark.parametrize("path", [0, 1, 2, 3])
def test_matmul_bf16(backend, M, K, N, path):
    """path 3 (tensor-core GEMV, exact three-way bf16 split of the activations) as tight as the
    CUDA-core GEMV; K = 100 and 7 send it back to the CUDA cores (rows not 16-byte aligned),
    K = 56 ends in a partial 32-k step (3 of the 4 lanes of a row)."""
    rng = np.random.default_rng(M * 7 + K * 3 + N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = to_bf16((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32))
    bias = rng.standard_normal(N).astype(np.float32)
    want = ck.matmul_bf16(x, w) + bias
    got = backend.kernels.matmul_bf16(x, w, bias, path)
    # The GEMVs are fp32-exact up to the order of the sums (a two-part split would be ~1e-5 off).
    assert_rel(got, want, 5e-5 if path == 2 or (path == 0 and M > 8) else 5e-6, f"matmul_bf16 path {path}")
    assert_rel(backend.kernels.matmul_bf16(x, w, None, path), ck.matmul_bf16(x, w), 5e-5, "no bias")


@cuda_test
@pytest.mark.parametrize("tiles", [1, 2, 3, 4])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("M,K,N", [(9, 64, 65), (130, 100, 300), (200, 2880, 129), (257, 7, 5), (64, 32, 128),
                                   gpu_only(1000, 2880, 5120)])
def test_matmul_bf16_tiles(backend, M, K, N, tiles, split):
    """Every tensor-core tile shape, on hi/lo (split) and plain bf16 activations: partial row and
    column tiles, a k tail, several k-steps through both shared-memory stages."""
    rng = np.random.default_rng(M * 5 + K + N * 3 + tiles)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = to_bf16((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32))
    bias = rng.standard_normal(N).astype(np.float32)
    xr = x if split else from_bf16(to_bf16(x)).reshape(x.shape)  # what one bf16 MMA multiplies
    want = ck.matmul_bf16(xr, w) + bias
    got = backend.kernels.matmul_bf16(x, w, bias, 2, split, tiles)
    assert_rel(got, want, 5e-5, f"matmul_bf16 tiles {tiles} split {split}")
    if not split:  # and it is really the bf16 product, not the fp32 one
        assert np.abs(got - (ck.matmul_bf16(x, w) + bias)).max() > 1e-5 * np.abs(want).max()


@cuda_test
@pytest.mark.parametrize("M,K,N", [(3, 64, 65), (8, 2880, 300), (5, 56, 70)])
def test_matmul_bf16_gemv_one_part(backend, M, K, N):
    """The 2-8 row tensor-core GEMV with split=False multiplies bf16-rounded activations (one MMA
    per step), so it matches the product of those exactly, not the fp32 one."""
    rng = np.random.default_rng(M + K + N)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = to_bf16((rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32))
    got = backend.kernels.matmul_bf16(x, w, None, 3, False)
    want = ck.matmul_bf16(from_bf16(to_bf16(x)).reshape(x.shape), w)
    assert_rel(got, want, 5e-6, "one bf16 part")
    assert np.abs(got - ck.matmul_bf16(x, w)).max() > 1e-4 * np.abs(want).max()


def to_f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


@cuda_test
@pytest.mark.parametrize("T,K,N", [(1, 2880, 128), (5, 320, 130), (8, 64, 64)])
def test_matmul_mxfp4_gemv_one_part(backend, T, K, N):
    """The experts' decode GEMV with split=False multiplies fp16-rounded activations."""
    rng = np.random.default_rng(T + K + N + 1)
    x = rng.standard_normal((T, K)).astype(np.float32)
    blocks, scales = mx_random(rng, N, K)
    got = backend.kernels.matmul_mxfp4(x, blocks, scales, None, False, 0, False)
    want = ck.matmul_mxfp4(to_f16(x), blocks, scales)
    assert_rel(got, want, 5e-6, "one fp16 part")
    assert np.abs(got - ck.matmul_mxfp4(x, blocks, scales)).max() > 2e-5 * np.abs(want).max()


@cuda_test
def test_matmul_tiles_argument_checked(backend):
    x = np.ones((9, 32), np.float32)
    w = to_bf16(np.ones((4, 32), np.float32))
    with pytest.raises(ValueError, match="tiles"):
        backend.kernels.matmul_bf16(x, w, None, 2, True, 5)


@cuda_test
@pytest.mark.parametrize("T", [1, 2, 5, 9, 64, 100])
@pytest.mark.parametrize("K,N", [(64, 64), (2880, 96), (96, 50), (320, 130)])
@pytest.mark.parametrize("tc", [False, True])
def test_matmul_mxfp4(backend, T, K, N, tc):
    rng = np.random.default_rng(T + K + N)
    x = rng.standard_normal((T, K)).astype(np.float32)
    blocks, scales = mx_random(rng, N, K)
    bias = rng.standard_normal(N).astype(np.float32)
    want = ck.matmul_mxfp4(x, blocks, scales) + bias
    assert_rel(backend.kernels.matmul_mxfp4(x, blocks, scales, bias, tc), want, 5e-5 if tc else 1e-5, "matmul_mxfp4")


@cuda_test
@pytest.mark.parametrize("tiles", [1, 2, 3, 4])
@pytest.mark.parametrize("T,K,N", [(100, 320, 130), (200, 64, 256), (130, 2880, 96)])
def test_matmul_mxfp4_tiles(backend, T, K, N, tiles):
    rng = np.random.default_rng(T + K + N + 7 * tiles)
    x = rng.standard_normal((T, K)).astype(np.float32)
    blocks, scales = mx_random(rng, N, K)
    bias = rng.standard_normal(N).astype(np.float32)
    want = ck.matmul_mxfp4(x, blocks, scales) + bias
    assert_rel(backend.kernels.matmul_mxfp4(x, blocks, scales, bias, True, tiles), want, 5e-5, f"tiles {tiles}")


@cuda_test
def test_matmul_mxfp4_extreme_scales(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    blocks, _ = mx_random(rng, 8, 64)
    scales = np.array([[1, 2], [100, 150], [127, 127], [60, 200], [127, 0], [90, 91], [130, 120], [110, 140]], np.uint8)
    for tc in (False, True):
        assert_rel(backend.kernels.matmul_mxfp4(x, blocks, scales, None, tc), ck.matmul_mxfp4(x, blocks, scales), 5e-5)


@cuda_test
def test_matmul_mxfp4_dequantizes_exactly(backend):
    """The tensor-core GEMM's MXFP4 -> bf16 decode (byte-permute tables and a bf16x2 scale
    multiply for scales >= 2): times the identity, every byte value under a spread of scales
    comes out exactly as the CPU dequantizes it."""
    rng = np.random.default_rng(5)
    blocks = np.concatenate([np.arange(256, dtype=np.uint8)] * 2)
    rng.shuffle(blocks)
    blocks = blocks.reshape(16, 2, 16)
    scales = np.array([0, 1, 2, 3, 60, 100, 126, 127, 128, 129, 150, 200, 240, 250, 251, 252] * 2, np.uint8)
    scales = scales[rng.permutation(32)].reshape(16, 2)
    eye = np.eye(64, dtype=np.float32)  # 64 rows: the tensor-core path
    got = backend.kernels.matmul_mxfp4(eye, blocks, scales, None, True)
    want = ck.matmul_mxfp4(eye, blocks, scales)
    normal = np.repeat(scales >= 2, 32, axis=1).T  # [k, n]: products that are normal bf16 numbers
    np.testing.assert_array_equal(got[normal], want[normal])
    np.testing.assert_allclose(got[~normal], want[~normal], rtol=0, atol=1e-37)  # subnormals may flush
    assert np.isfinite(want).all() and np.abs(want).max() > 1e38


# ------------------------------------------------------------------------ router + MoE
@cuda_test
@pytest.mark.parametrize("T,H,E,k", [(1, 2880, 32, 4), (7, 2880, 128, 4), (5, 64, 4, 2), (3, 96, 5, 3), (2, 40, 8, 8),
                                     (16, 100, 13, 3), (20, 64, 32, 4)])
@pytest.mark.parametrize("split", [False, True])
def test_router(backend, T, H, E, k, split):
    """split: the few-row router that spreads a row's experts over blocks (the last block to
    arrive picks the top k); it falls back to one block per row above 16 rows or 4 experts."""
    rng = np.random.default_rng(T + H + E)
    t = rng.standard_normal((T, H)).astype(np.float32)
    w = to_bf16((2 * rng.standard_normal((E, H)) / np.sqrt(H)).astype(np.float32))
    b = (0.1 * rng.standard_normal(E)).astype(np.float32)
    logits = (ck.matmul_bf16(t, w) + b).astype(np.float32)
    want_i, want_w = ck.router_topk_softmax(logits, k)
    got_i, got_w = backend.kernels.router(t, w, b, k, split)
    np.testing.assert_array_equal(got_i, want_i)
    assert_rel(got_w, want_w, 1e-5, "router weights")


@cuda_test
def test_router_ties_go_to_lower_id(backend):
    H, E = 32, 12
    t = np.zeros((2, H), np.float32)
    t[:, 0] = 1.0
    col = np.array([1, 3, 3, 2, 3, 0, 2, 2, 1, 3, 0, 0], np.float32)
    w = np.zeros((E, H), np.uint16)
    w[:, 0] = to_bf16(col)
    b = np.zeros(E, np.float32)
    idx, rw = backend.kernels.router(t, w, b, 6)
    np.testing.assert_array_equal(idx, backend.kernels.router(t, w, b, 6, True)[0])
    np.testing.assert_array_equal(idx[0], [1, 2, 4, 9, 3, 6])
    want_i, want_w = ck.router_topk_softmax(col[None, :].repeat(2, 0), 6)
    np.testing.assert_array_equal(idx, want_i)
    assert_rel(rw, want_w, 1e-6)


def _moe_reference(x, idx, rw, b1, s1, bias1, b2, s2, bias2, alpha=1.702, limit=7.0):
    """sum_j rw[t, j] * (W2[e] swiglu(W1[e] x[t] + b1[e]) + b2[e]), e = idx[t, j]: each expert's
    tokens in one product (the CPU kernels, rows independent)."""
    T, H = x.shape
    out = np.zeros((T, H), np.float32)
    for e in np.unique(idx):
        t, j = np.nonzero(idx == e)
        h = ck.matmul_mxfp4(np.ascontiguousarray(x[t]), b1[e], s1[e]) + bias1[e]
        a = ck.swiglu(h.astype(np.float32), alpha, limit)
        y = ck.matmul_mxfp4(np.ascontiguousarray(a, dtype=np.float32), b2[e], s2[e]) + bias2[e]
        np.add.at(out, t, rw[t, j][:, None] * y)
    return out


@cuda_test
@pytest.mark.parametrize("T,H,I,E,k", [(1, 64, 64, 4, 2), (5, 96, 64, 8, 4), (40, 64, 96, 5, 3), (70, 320, 64, 8, 4),
                                       (1, 2880, 64, 4, 2), (9, 2880, 96, 3, 2), gpu_only(3, 2880, 2880, 32, 4)])
@pytest.mark.parametrize("tc", [False, True])
def test_moe(backend, T, H, I, E, k, tc):
    _check_moe(backend, T, H, I, E, k, tc, 0)


@cuda_test
@pytest.mark.parametrize("T,H,I,E,k", [(70, 320, 64, 8, 4), (200, 64, 96, 4, 2), (12, 64, 64, 16, 4),
                                       gpu_only(1024, 2880, 2880, 32, 4)])
@pytest.mark.parametrize("tiles", [0, 1, 2, 3, 4])
def test_moe_tiles(backend, T, H, I, E, k, tiles):
    """The expert GEMMs with each tile shape (3: 128-pair tiles, several per busy expert). Auto
    takes 128 rows for (200, 4, 2) (100 pairs per expert), 64 for (70, 8, 4) (35), 32 for
    (12, 16, 4) (3)."""
    _check_moe(backend, T, H, I, E, k, True, tiles)


@cuda_test
def test_moe_gemv_one_part(backend):
    """The whole expert block on the decode GEMV with split=False (fp16 activations, a few 1e-4)."""
    _check_moe(backend, 5, 96, 64, 8, 4, False, 0, split=False)


def _check_moe(backend, T, H, I, E, k, tc, tiles, split=True):
    rng = np.random.default_rng(T * 31 + H + E)
    x = rng.standard_normal((T, H)).astype(np.float32)
    idx = np.stack([rng.choice(E, k, replace=False) for _ in range(T)]).astype(np.int32)
    rw = rng.dirichlet(np.ones(k), T).astype(np.float32)
    b1, s1 = mx_random(rng, E * 2 * I, H, 118, 124)
    b2, s2 = mx_random(rng, E * H, I, 118, 124)
    b1, s1 = b1.reshape(E, 2 * I, H // 32, 16), s1.reshape(E, 2 * I, H // 32)
    b2, s2 = b2.reshape(E, H, I // 32, 16), s2.reshape(E, H, I // 32)
    bias1 = (0.5 * rng.standard_normal((E, 2 * I))).astype(np.float32)
    bias2 = (0.05 * rng.standard_normal((E, H))).astype(np.float32)
    want = _moe_reference(x, idx, rw, b1, s1, bias1, b2, s2, bias2)
    got = backend.kernels.moe(x, idx, rw, b1, s1, bias1, b2, s2, bias2, 1.702, 7.0, tc, tiles, split)
    assert_rel(got, want, 5e-4 if not split else 1e-4 if tc else 2e-5, "moe")


@cuda_test
def test_zero_sized_inputs(backend):
    # No rows / no expert slots: nothing to compute, and nothing may read unset tile counts.
    rng = np.random.default_rng(4)
    H, I, E = 64, 64, 4
    b1, s1 = mx_random(rng, E * 2 * I, H)
    b2, s2 = mx_random(rng, E * H, I)
    b1, s1 = b1.reshape(E, 2 * I, H // 32, 16), s1.reshape(E, 2 * I, H // 32)
    b2, s2 = b2.reshape(E, H, I // 32, 16), s2.reshape(E, H, I // 32)
    bias1, bias2 = np.zeros((E, 2 * I), np.float32), np.zeros((E, H), np.float32)
    x = rng.standard_normal((3, H)).astype(np.float32)
    for tc in (False, True):
        out = backend.kernels.moe(x, np.zeros((3, 0), np.int32), np.zeros((3, 0), np.float32), b1, s1, bias1, b2, s2, bias2,
                       1.702, 7.0, tc)
        np.testing.assert_array_equal(out, np.zeros((3, H), np.float32))
        y = backend.kernels.matmul_mxfp4(np.zeros((0, H), np.float32), b2[0], s2[0], None, tc)
        assert y.shape == (0, H)
    k = rng.standard_normal((8, 2, 64)).astype(np.float32)
    out = backend.kernels.attention(np.zeros((0, 4 * 64), np.float32), k, k, np.zeros(0, np.int64), np.ones(4, np.float32),
                         0.125, 0)
    assert out.shape == (0, 4 * 64)


# --------------------------------------------------------------------- argmax, RNG fills
@cuda_test
@pytest.mark.parametrize("split", [True, False])
def test_argmax(backend, split):
    """split: a row over many blocks (ties across slices still go to the lower index)."""
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 201088)).astype(np.float32)
    logits[1, 7] = logits[1, 100000] = 50.0   # tie: lower index, in different slices
    logits[2, :] = 1.0                        # all equal
    logits[3, 5] = np.nan
    logits[3, 6] = 60.0
    logits[4, -1] = 99.0
    logits[6, :] = np.nan                     # nothing to pick: 0, as np.argmax
    logits[7, :100000] = np.nan
    logits[7, 150001] = logits[7, 150003] = 70.0
    got = backend.kernels.argmax(logits, split)
    assert list(got) == [int(np.argmax(logits[0])), 7, 0, 6, 201087, int(np.argmax(logits[5])), 0, 150001]
    # The maximum next to every quarter of a row (where the split kernel's slices meet: 4 of
    # them at this width) and at both ends.
    V = 3 * 4096 + 1
    pos = [0, V - 1] + [k * V // 4 + d for k in (1, 2, 3) for d in range(-3, 4)]
    x = rng.standard_normal((len(pos), V)).astype(np.float32)
    x[np.arange(len(pos)), pos] = 10.0
    assert list(backend.kernels.argmax(x, split)) == pos


@cuda_test
def test_device_random_fills(backend):
    n = 1 << 20
    v = from_bf16(backend.kernels.fill("normal_bf16", n, 0.5, 2.0, seed=3, stream=1))
    assert abs(v.mean() - 0.5) < 0.02 and abs(v.std() - 2.0) < 0.02
    f = backend.kernels.fill("normal_f32", n, -1.0, 0.1, seed=3, stream=2)
    assert abs(f.mean() + 1.0) < 0.002 and abs(f.std() - 0.1) < 0.002
    assert not np.array_equal(f, backend.kernels.fill("normal_f32", n, -1.0, 0.1, seed=4, stream=2))
    np.testing.assert_array_equal(f, backend.kernels.fill("normal_f32", n, -1.0, 0.1, seed=3, stream=2))
    b = backend.kernels.fill("bytes", n + 3, seed=1)
    assert abs(np.bincount(b, minlength=256) / len(b) - 1 / 256).max() < 1e-3
    s = backend.kernels.fill("scales", 1000, base=120, seed=1)
    assert set(np.unique(s)) == {119, 120, 121}


# ---------------------------------------------------------------------------- end to end
def _toks(n: int, seed: int, vocab: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


# The CUDA engine's default KV cache takes most of the free device memory, so a second model
# made while one is alive (or kept alive by a failed test's traceback) would find none left:
# every test model gets an explicit cap.
KV_CAP = 1 << 30

SMALL = dict(num_hidden_layers=4, hidden_size=320, intermediate_size=192, num_experts=8, experts_per_token=4,
             num_attention_heads=16, num_key_value_heads=2, head_dim=64, vocab_size=2000, sliding_window=16)
E2E_REL = 2e-3


def _pair(backend, cfg, seed=0, **kw):
    kw.setdefault("kv_cache_bytes", KV_CAP)
    cpu = gptoss.Model.synthetic(cfg, seed=seed, **kw)
    # Same host-generated weights on both devices: build the CUDA model from the same arrays.
    from gptoss.synthetic import synthetic_tensors

    arrays = dict(synthetic_tensors(cfg, seed=seed, layout="hf"))
    gpu = gptoss.Model("<synthetic>", device=backend.device, _config=cfg, _arrays=arrays, **kw)
    return cpu, gpu


@cuda_test
def test_window_layers_share_the_kv_budget(backend):
    """The device KV cache is one pool for both groups of layers, as on the CPU: a sequence that
    needs 32 full-attention blocks fits a 40-block budget, matches the CPU, and the cap holds."""
    block = 2 * 2 * 4 * 64 * 4  # one layer's K and V for 4 positions (tiny: 2 KV heads, head_dim 64)
    cfg = tiny_config("tiny")
    cpu, gpu = _pair(backend, cfg, seed=6, block_size=4, window_retain=0, max_chunk_tokens=8,
                     kv_cache_bytes=40 * block)
    toks = _toks(128, 6, cfg.vocab_size)
    sg, sc = gpu.new_sequence(), cpu.new_sequence()
    for i in range(0, len(toks), 8):
        sg.prefill(toks[i:i + 8])
        sc.prefill(toks[i:i + 8])
    assert gpu.kv_cache_stats() == cpu.kv_cache_stats()
    assert gpu.kv_cache_stats()["full_blocks_max"] == 40
    assert_rel(sg.decode(3), sc.decode(3), E2E_REL, "129 tokens in a 40-block budget")
    with pytest.raises(MemoryError, match="KV cache"):
        sg.prefill(_toks(24, 7, cfg.vocab_size))


@cuda_test
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS) + ["small"])
def test_forward_matches_cpu(backend, name):
    cfg = gptoss.config.preset("tiny", **SMALL) if name == "small" else tiny_config(name)
    cpu, gpu = _pair(backend, cfg, seed=11, block_size=4)
    toks = _toks(45, 1, cfg.vocab_size)  # > 8 rows: tensor-core paths; past every window
    assert_rel(gpu.forward(toks), cpu.forward(toks), E2E_REL, f"{name} forward")
    # Incremental decode (GEMV paths, split attention) after a short prefill.
    sc, sg = cpu.new_sequence(), gpu.new_sequence()
    assert_rel(sg.prefill(toks[:5]), sc.prefill(toks[:5]), E2E_REL, "prefill 5")
    for i, t in enumerate(toks[5:30]):
        assert_rel(sg.decode(t), sc.decode(t), E2E_REL, f"{name} decode {i}")
    assert sg.tokens == sc.tokens and len(sg) == len(sc) == 30


@cuda_test
def test_ragged_batch_and_chunks(backend):
    cfg = gptoss.config.preset("tiny", **SMALL)
    cpu, gpu = _pair(backend, cfg, seed=3, block_size=4, max_chunk_tokens=7, window_retain=3)
    prompts = [_toks(n, 10 + n, cfg.vocab_size) for n in (3, 19, 1, 11, 40)]
    sc = [cpu.new_sequence() for _ in prompts]
    sg = [gpu.new_sequence() for _ in prompts]
    for a, b in zip(gpu.step(list(zip(sg, prompts))), cpu.step(list(zip(sc, prompts)))):
        assert_rel(a, b, E2E_REL, "ragged prefill")
    for j in range(12):
        nxt = _toks(len(prompts), 100 + j, cfg.vocab_size)
        outs_g = gpu.step([(s, [t]) for s, t in zip(sg, nxt)])
        outs_c = cpu.step([(s, [t]) for s, t in zip(sc, nxt)])
        for a, b in zip(outs_g, outs_c):
            assert_rel(a, b, E2E_REL, f"ragged decode {j}")
    mixed = [(0, _toks(9, 7, 2000)), (1, [5]), (2, _toks(2, 8, 2000))]
    og = gpu.step([(sg[i], t) for i, t in mixed], all_logits=True)
    oc = cpu.step([(sc[i], t) for i, t in mixed], all_logits=True)
    assert [o.shape[0] for o in og] == [9, 1, 2]
    for a, b in zip(og, oc):
        assert_rel(a, b, E2E_REL, "mixed all_logits")
    assert gpu.kv_cache_stats()["full_blocks_used"] > 0


@cuda_test
def test_long_context_past_window_and_batch_sizes(backend):
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    cpu, gpu = _pair(backend, cfg, seed=5, block_size=16)
    toks = _toks(700, 2, cfg.vocab_size)
    sc, sg = cpu.new_sequence(), gpu.new_sequence()
    assert_rel(sg.prefill(toks[:600]), sc.prefill(toks[:600]), E2E_REL, "prefill 600 (two chunks)")
    for t in toks[600:620]:
        assert_rel(sg.decode(t), sc.decode(t), E2E_REL, "long decode")
    # Batches of 1..16 forks decoding together (GEMV and tensor-core thresholds, copy-on-write).
    for bsz in (2, 8, 9, 16):
        fc = [sc.fork() for _ in range(bsz)]
        fg = [sg.fork() for _ in range(bsz)]
        nxt = _toks(bsz, bsz, cfg.vocab_size)
        for a, b in zip(gpu.step([(s, [t]) for s, t in zip(fg, nxt)]), cpu.step([(s, [t]) for s, t in zip(fc, nxt)])):
            assert_rel(a, b, E2E_REL, f"batch {bsz}")
        for s in fc + fg:
            s.free()


@cuda_test
def test_fork_truncate_match_cpu(backend):
    cfg = tiny_config("tiny4")
    cpu, gpu = _pair(backend, cfg, seed=5, block_size=4, window_retain=3)
    prefix = _toks(13, 20, cfg.vocab_size)
    ac, ag = cpu.new_sequence(), gpu.new_sequence()
    ac.prefill(prefix)
    ag.prefill(prefix)
    bc, bg = ac.fork(), ag.fork()
    for t1, t2 in zip(_toks(6, 1, 1024), _toks(6, 2, 1024)):
        assert_rel(ag.decode(t1), ac.decode(t1), E2E_REL, "fork parent")
        assert_rel(bg.decode(t2), bc.decode(t2), E2E_REL, "fork child")
    for n in (17, 15, 9, 2, 0):
        assert ag.truncate(n) == ac.truncate(n), n
        assert len(ag) == len(ac) and ag.tokens == ac.tokens
    t = _toks(5, 9, 1024)
    assert_rel(ag.prefill(t), ac.prefill(t), E2E_REL, "after truncate")
    assert gpu.kv_cache_stats()["full_blocks_used"] == cpu.kv_cache_stats()["full_blocks_used"]
    assert gpu.kv_cache_stats()["window_blocks_used"] == cpu.kv_cache_stats()["window_blocks_used"]
    for s in (ac, ag, bc, bg):
        s.free()
    assert gpu.kv_cache_stats()["full_blocks_used"] == 0


@cuda_test
def test_cuda_graphs_replay_decode(backend, monkeypatch):
    """Decode steps replayed from captured graphs give exactly what eager launches give (same
    kernels, same launch shapes), across batch sizes and attention split counts that change
    as the context grows; prefill chunks never use graphs."""
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    cpu, gpu = _pair(backend, cfg, seed=8, block_size=4)
    from gptoss.synthetic import synthetic_tensors

    monkeypatch.setenv("GPTOSS_CUDA_GRAPHS", "0")
    eager = gptoss.Model("<synthetic>", device=backend.device, _config=cfg, block_size=4, kv_cache_bytes=KV_CAP,
                         _arrays=dict(synthetic_tensors(cfg, seed=8, layout="hf")))
    models = (gpu, eager, cpu)
    prompts = [_toks(n, 40 + n, cfg.vocab_size) for n in (140, 3, 17)]
    seqs = [[m.new_sequence() for _ in prompts] for m in models]
    for m, ss in zip(models, seqs):
        m.step(list(zip(ss, prompts)))
    assert gpu._engine.graph_stats()["launches"] == 0  # prefill is eager
    for j in range(15):
        nxt = _toks(3, 500 + j, cfg.vocab_size)
        live = [0, 1, 2] if j % 3 else [0, 2]  # batch 3 and batch 2 shapes
        outs = [m.step([(ss[i], [nxt[i]]) for i in live]) for m, ss in zip(models, seqs)]
        for a, b, c in zip(*outs):
            np.testing.assert_array_equal(a, b)
            assert_rel(a, c, E2E_REL, f"graph decode {j}")
    one = [m_seqs[1].decode(7) for m_seqs in seqs]  # batch 1
    np.testing.assert_array_equal(one[0], one[1])
    st = gpu._engine.graph_stats()
    assert st["launches"] == 16 and 3 <= st["captured"] <= st["launches"]
    assert eager._engine.graph_stats()["launches"] == 0
    # Greedy steps (argmax on the device) through graphs too.
    ids = [m._engine.step_argmax([ss[0].id], [np.array([5], np.int64)]) for m, ss in zip(models[:2], seqs[:2])]
    np.testing.assert_array_equal(ids[0], ids[1])
    assert gpu._engine.graph_stats()["launches"] == 17
    gpu._engine.set_cuda_graphs(False)
    np.testing.assert_array_equal(seqs[0][2].decode(9), seqs[1][2].decode(9))
    assert gpu._engine.graph_stats()["launches"] == 17 and gpu._engine.graph_stats()["cached"] == 0


@cuda_test
def test_bf16_activation_gemms(backend):
    """set_tc_split(False): tensor-core GEMMs on bf16 activations, close to (not equal to) the
    fp32 result; back on, exactly what it was."""
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    cpu, gpu = _pair(backend, cfg, seed=12)
    toks = _toks(40, 13, cfg.vocab_size)  # > 8 rows: the tensor-core paths
    want, exact = cpu.forward(toks), gpu.forward(toks)
    gpu._engine.set_tc_split(False)
    fast = gpu.forward(toks)
    err = float(np.abs(fast - want).max() / np.abs(want).max())
    # bf16 activations flip near-tied expert choices now and then: close, not fp32-close.
    assert err > 1e-6 and np.all(np.isfinite(fast))
    assert np.corrcoef(fast.ravel(), want.ravel())[0, 1] > 0.99
    assert np.mean(fast.argmax(-1) == want.argmax(-1)) > 0.8
    gpu._engine.set_tc_split(True)
    np.testing.assert_array_equal(gpu.forward(toks), exact)


@cuda_test
def test_gemm_tiles_in_the_engine(backend):
    """set_gemm_tiles forces one tensor-core tile shape for every GEMM of a step (dense and
    experts): each gives the CPU engine's logits; 0 goes back to the automatic choice."""
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    cpu, gpu = _pair(backend, cfg, seed=14)
    toks = _toks(150, 15, cfg.vocab_size)  # > 128 rows: two row tiles of 128 as well
    want = cpu.forward(toks)
    auto = gpu.forward(toks)
    assert_rel(auto, want, E2E_REL, "auto tiles")
    for tiles in (1, 2, 3, 4):
        gpu._engine.set_gemm_tiles(tiles)
        assert_rel(gpu.forward(toks), want, E2E_REL, f"tiles {tiles}")
    gpu._engine.set_gemm_tiles(0)
    np.testing.assert_array_equal(gpu.forward(toks), auto)
    with pytest.raises(ValueError, match="set_gemm_tiles"):
        gpu._engine.set_gemm_tiles(5)


@cuda_test
def test_programmatic_dependent_launch(backend):
    """set_pdl(True) (sm_90+): every kernel launched while its predecessor finishes, each waiting
    for it first. Same kernels, same order: bit-identical logits, greedy and sampled tokens and
    logprobs, eager and through graphs. (The emulator also fails any kernel so launched in which a
    thread never waits.)"""
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    models = [_pair(backend, cfg, seed=16)[1] for _ in range(3)]
    assert models[1]._engine.set_pdl(True) is True  # the emulator is an sm_90 by default
    # Without the L2 prefetch that the weight-streaming kernels issue before they wait (the
    # emulator checks each prefetched range lies in one device allocation).
    assert models[2]._engine.set_pdl(True, prefetch=False) is True
    toks = _toks(90, 17, cfg.vocab_size)  # tensor-core GEMMs and attention
    outs = []
    for m in models:
        s = m.new_sequence()
        r = [s.prefill(toks)]
        r += [s.decode(t) for t in (3, 5, 7)]  # graphs
        # 3 rows: the tensor-core GEMV and the grouped experts' GEMV (one row: fused QKV, direct pairs)
        others = [m.new_sequence() for _ in range(2)]
        for i, o in enumerate(others):
            o.prefill(toks[: 5 + i])
        for t in (4, 6):
            r += m.step([(s, [t]), (others[0], [t + 1]), (others[1], [t + 2])])
        for o in others:
            o.free()
        r.append(m._engine.step_argmax([s.id], [np.array([9], np.int64)]))
        r += list(m._engine.step_sample([s.id], [np.array([11], np.int64)], np.array([0.9], np.float32),
                                        np.array([40], np.int32), np.array([0.9], np.float32),
                                        np.array([0.0], np.float32), np.array([0.37], np.float32),
                                        np.array([cfg.vocab_size], np.int32), 5))
        r.append(m.forward(toks[:20]))
        outs.append(r)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)
    if backend.emu:  # the prefetching path ran, and only with prefetch on
        before = backend.module.emu_prefetch_count()
        models[2].forward(toks[:2])
        assert backend.module.emu_prefetch_count() == before
        models[1].forward(toks[:2])
        assert backend.module.emu_prefetch_count() > before
    assert models[1]._engine.set_pdl(False) is False
    np.testing.assert_array_equal(models[1].forward(toks[:20]), outs[0][-1])


@cuda_test
@pytest.mark.parametrize("kv_dtype", ["float32", "bfloat16"])
def test_fused_qkv_rope_matches_two_kernels(backend, kv_dtype, monkeypatch):
    """Decode steps (up to 2 rows) project QKV, rotate and store K/V in one kernel; the same
    steps through the separate QKV GEMV and RoPE kernels give the same logits (and 6-row steps,
    separate in both)."""
    monkeypatch.setenv("GPTOSS_KV_DTYPE", kv_dtype)
    cfg = tiny_config("tiny")
    models = [_pair(backend, cfg, seed=21, block_size=4)[1] for _ in range(2)]
    models[1]._engine.set_fuse_qkv_rope(False)
    outs = []
    for m in models:
        seqs = [m.new_sequence() for _ in range(6)]
        r = [q.prefill(_toks(5 + 3 * i, 22 + i, cfg.vocab_size)) for i, q in enumerate(seqs)]
        for step in range(3):  # batch 1 (one-row kernel), 2 rows (the 2-row kernel), then 6 rows
            r.append(seqs[0].decode(7 + step))
            r += m.step([(q, [5 + step + i]) for i, q in enumerate(seqs[:2])])
            r += m.step([(q, [3 + step + i]) for i, q in enumerate(seqs)])
        outs.append(r)
    for a, b in zip(*outs):
        assert_rel(a, b, 1e-6, "fused qkv + rope")


@cuda_test
def test_moe_gemv_tokens_switches_expert_path(backend):
    """set_moe_gemv_tokens(n): steps of up to n tokens run the experts on the GEMV, longer ones
    on the tensor-core GEMM; 0 (every step on the GEMM, batch 1 too) and 64 (prefill chunks and
    a 9-row step on the GEMV) both give the CPU's logits."""
    cfg = tiny_config("tiny")
    cpu, gpu = _pair(backend, cfg, seed=23)
    # The GEMV hands E2M1's 0.5 to the tensor cores as an fp16 subnormal; the engine probes at
    # start that they take it (else it keeps every step on the GEMM, and this fails to say so).
    assert gpu._engine.moe_gemv_available() is True
    # Default: the GEMV while a step's pairs average at most 8 per expert (8 E / k tokens, >= 8).
    assert gpu._engine.moe_gemv_tokens() == max(8, 8 * cfg.num_experts // cfg.experts_per_token)
    toks = _toks(40, 24, cfg.vocab_size)
    nxt = _toks(9, 25, cfg.vocab_size)
    for n in (0, 64):
        gpu._engine.set_moe_gemv_tokens(n)
        assert_rel(gpu.forward(toks), cpu.forward(toks), E2E_REL, f"gemv tokens {n}: prefill 40")
        sg, sc = gpu.new_sequence(), cpu.new_sequence()
        sg.prefill(toks[:6])
        sc.prefill(toks[:6])
        assert_rel(sg.decode(int(nxt[0])), sc.decode(int(nxt[0])), E2E_REL, f"gemv tokens {n}: decode")
        fg, fc = [sg.fork() for _ in nxt], [sc.fork() for _ in nxt]
        for a, b in zip(gpu.step([(s, [t]) for s, t in zip(fg, nxt)]), cpu.step([(s, [t]) for s, t in zip(fc, nxt)])):
            assert_rel(a, b, E2E_REL, f"gemv tokens {n}: 9 rows")
    assert gpu._engine.moe_gemv_tokens() == 64
    with pytest.raises(ValueError):
        gpu._engine.set_moe_gemv_tokens(-1)


@cuda_test
def test_profile_splits_steps_by_kernel_kind(backend):
    """set_profile: events between kernel groups (steps of up to 256 rows as fresh graphs, longer
    ones eagerly); the results are unchanged and every kind is counted once per layer and step."""
    cfg = gptoss.config.preset("tiny", **dict(SMALL, num_hidden_layers=2))
    models = [_pair(backend, cfg, seed=18, max_chunk_tokens=400)[1] for _ in range(2)]
    eng = models[1]._engine
    eng.set_profile(True)
    outs = []
    for m in models:
        s = m.new_sequence()
        outs.append([s.prefill(_toks(12, 19, cfg.vocab_size))] + [s.decode(t) for t in (4, 6, 8)])
        outs[-1].append(m.new_sequence().prefill(_toks(300, 20, cfg.vocab_size)))  # eager
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    prof = eng.profile()
    assert prof["steps"] == 5
    L = cfg.num_hidden_layers
    for kind in ("qkv", "attention out", "norm + router", "experts mlp1", "experts mlp2"):
        assert prof[kind][1] == 5 * L, (kind, prof)
    assert prof["rope + kv store"][1] == 2 * L  # decode steps do it inside the QKV kernel
    assert prof["combine + norm"][1] == 2 * L  # and inside the last block of mlp2
    assert prof["embedding + norm"][1] == 5 and prof["unembedding"][1] == 5
    assert prof["expert grouping"][1] == 2 * L  # the prefills; one-token steps need none
    assert all(ms >= 0 for k, (ms, n) in ((k, v) for k, v in prof.items() if k != "steps"))
    eng.set_profile(False)
    assert eng.profile() == {"steps": 0}


@cuda_test
def test_more_output_rows_than_the_logits_buffer(backend):
    """The logits buffer holds 256 rows: longer all-logits steps and bigger greedy batches compute
    the head in pieces."""
    cfg = tiny_config("tiny")
    cpu, gpu = _pair(backend, cfg, seed=6, max_chunk_tokens=400)
    toks = _toks(300, 8, cfg.vocab_size)
    assert_rel(gpu.forward(toks), cpu.forward(toks), E2E_REL, "300 rows of logits")
    base_g, base_c = gpu.new_sequence(), cpu.new_sequence()
    base_g.prefill(toks[:5])
    base_c.prefill(toks[:5])
    nxt = _toks(270, 9, cfg.vocab_size)
    fg = [base_g.fork() for _ in nxt]
    fc = [base_c.fork() for _ in nxt]
    got = gpu._engine.step_argmax([s.id for s in fg], [np.array([t], np.int64) for t in nxt])
    want = [int(np.argmax(o)) for o in cpu.step([(s, [t]) for s, t in zip(fc, nxt)])]
    assert np.mean(np.asarray(got) == np.asarray(want)) > 0.98  # near-ties may differ at ~1e-5
    assert list(got[:3]) == want[:3] and list(got[-3:]) == want[-3:]


@cuda_test
def test_generate_samples_on_device(backend):
    """generate / generate_batch draw on the device (same random stream as the host sampler, only
    token ids come back) and give the CPU's tokens, with penalties, logit bias and logprobs too."""
    cfg = tiny_config("tiny4")
    cpu, gpu = _pair(backend, cfg, seed=3)
    assert gpu.samples_on_device and not cpu.samples_on_device
    prompt = _toks(12, 5, cfg.vocab_size)
    cases = [dict(temperature=0.0), dict(temperature=0.9, top_k=40, top_p=0.95, seed=7),
             dict(temperature=1.3, min_p=0.05, seed=3), dict(temperature=0.7, seed=11)]
    before = gpu._engine.graph_stats()["launches"]
    for kw in cases:
        a, b = gpu.generate(prompt, max_tokens=10, **kw), cpu.generate(prompt, max_tokens=10, **kw)
        assert a.tokens == b.tokens, kw
    assert gpu._engine.graph_stats()["launches"] >= before + 4 * 9  # decode steps replayed graphs
    from gptoss.generate import generate_batch

    batch = [_toks(n, 30 + n, cfg.vocab_size) for n in (3, 9, 5)]
    ra = generate_batch(gpu, batch, temperature=0.8, top_p=0.9, seed=5, max_tokens=8)
    rb = generate_batch(cpu, batch, temperature=0.8, top_p=0.9, seed=5, max_tokens=8)
    assert [r.tokens for r in ra] == [r.tokens for r in rb]
    # Log-probabilities come from the device too.
    a = gpu.generate(prompt, max_tokens=6, temperature=0.8, logprobs=3, seed=2)
    b = cpu.generate(prompt, max_tokens=6, temperature=0.8, logprobs=3, seed=2)
    assert a.tokens == b.tokens and len(a.logprobs) == 6
    for x, y in zip(a.logprobs, b.logprobs):
        assert abs(x.logprob - y.logprob) < 1e-3 and [i for i, _ in x.top_logprobs] == [i for i, _ in y.top_logprobs]
        assert np.allclose([v for _, v in x.top_logprobs], [v for _, v in y.top_logprobs], atol=1e-3)
    # Penalties and logit bias are sparse edits on the device, replayed from graphs too (one per
    # power-of-two room for the entries); the log-probabilities still describe the raw logits.
    launches = gpu._engine.graph_stats()["launches"]
    for kw in (dict(temperature=0.8, repetition_penalty=1.3, logprobs=2, seed=1),
               dict(temperature=0.0, presence_penalty=1.5, frequency_penalty=0.7),
               dict(temperature=1.0, top_p=0.9, logit_bias={7: 5.0, 9: -100.0, 11: 2.5}, seed=4),
               dict(temperature=0.9, repetition_penalty=0.8, frequency_penalty=-0.5, logit_bias={3: 1.0}, seed=9)):
        a, b = gpu.generate(prompt, max_tokens=8, **kw), cpu.generate(prompt, max_tokens=8, **kw)
        assert a.tokens == b.tokens, kw
        if kw.get("logprobs"):
            assert len(a.logprobs) == 8 and len(a.logprobs[0].top_logprobs) == 2
            for x, y in zip(a.logprobs, b.logprobs):
                assert abs(x.logprob - y.logprob) < 1e-3
    assert gpu._engine.graph_stats()["launches"] >= launches + 4 * 7
    # Entries crossing a room boundary (64 -> 128) mid-generation: a second graph, same tokens.
    long_prompt = [int(t) for t in np.random.default_rng(8).permutation(cfg.vocab_size)[:60]]
    kw = dict(temperature=0.9, repetition_penalty=1.2, frequency_penalty=0.3, seed=12)
    launches = gpu._engine.graph_stats()["launches"]
    a, b = gpu.generate(long_prompt, max_tokens=12, **kw), cpu.generate(long_prompt, max_tokens=12, **kw)
    assert a.tokens == b.tokens
    assert gpu._engine.graph_stats()["launches"] >= launches + 11
    gpu._engine.set_cuda_graphs(False)  # and the same tokens eagerly
    kw = dict(temperature=0.9, repetition_penalty=0.8, frequency_penalty=-0.5, logit_bias={3: 1.0}, seed=9)
    assert gpu.generate(prompt, max_tokens=8, **kw).tokens == cpu.generate(prompt, max_tokens=8, **kw).tokens
    gpu._engine.set_cuda_graphs(True)
    ra = generate_batch(gpu, batch, temperature=0.8, presence_penalty=1.0, seed=3, max_tokens=6)
    rb = generate_batch(cpu, batch, temperature=0.8, presence_penalty=1.0, seed=3, max_tokens=6)
    assert [r.tokens for r in ra] == [r.tokens for r in rb]
    with pytest.raises(ValueError):
        gpu.generate(prompt, max_tokens=2, logit_bias={cfg.vocab_size + 5: 1.0})
    # Bad parameters are rejected before anything runs.
    s = gpu.new_sequence()
    bad = dict(temperature=1.0, top_k=0, top_p=1.5, min_p=0.0, u=0.5, vocab_limit=0)
    with pytest.raises(ValueError):
        gpu.step_sample([(s, [1, 2])], [bad])
    assert len(s) == 0
    with pytest.raises(RuntimeError):
        cpu.step_sample([(cpu.new_sequence(), [1])], [bad])


@cuda_test
def test_ctrl_c_stops_a_long_prefill(backend):
    cfg = tiny_config("tiny")
    cpu, gpu = _pair(backend, cfg, seed=4, max_chunk_tokens=2, max_context=65536)
    toks = _toks(3000 if backend.emu else 40000, 41, cfg.vocab_size)  # one-token chunks take seconds
    s = gpu.new_sequence()
    n = interrupt_prefill(s, toks, 0.3)
    assert_rel(s.decode(toks[n]), cpu.forward(toks[: n + 1])[-1], E2E_REL, "after the interrupt")


def test_models_fit_the_promised_gpus():
    """gpt-oss-120b fits one 80 GB GPU with a useful KV cache, gpt-oss-20b fits 16 GB: the CUDA
    engine's own allocation code, counting (no device needed)."""
    if not _emu_available() and not hasattr(core, "cuda_memory_plan"):
        pytest.skip("no CUDA backend or emulator in this build")
    from gptoss.model import cuda_memory_plan

    context = 512 << 20   # the CUDA context, cuBLAS-free: a generous allowance
    margin = 512 << 20    # what the engine leaves free (the CUDA runner's alloc_kv)
    for name, gpu_bytes, want_tokens in (("gpt-oss-120b", 80e9, 64 * 1024), ("gpt-oss-20b", 16 * 2**30, 16 * 1024)):
        plan = cuda_memory_plan(name)
        cfg = gptoss.config.preset(name)
        weights_on_disk = sum(_expected_tensor_bytes(cfg))
        assert abs(plan["weights"] - weights_on_disk) / weights_on_disk < 0.01, (name, plan, weights_on_disk)
        free_for_kv = gpu_bytes - plan["weights"] - plan["workspace"] - context - margin
        tokens = free_for_kv / plan["kv_bytes_per_token"]
        assert tokens >= want_tokens, (name, plan, tokens)
        # A token of context costs the full-attention layers' K and V (half the layers: the window
        # layers take their blocks from the same pool and keep only the last few hundred positions).
        kv_token = cfg.num_hidden_layers // 2 * 2 * cfg.num_key_value_heads * cfg.head_dim * 4
        assert plan["kv_bytes_per_token"] == kv_token
        win = cfg.sliding_window + 256 + 2048 + 2 * 16  # window + retain + one chunk + 2 blocks
        assert plan["kv_bytes_per_sequence_window"] == kv_token * win
        # bf16 KV halves the per-token cost.
        assert cuda_memory_plan(name, kv_dtype="bfloat16")["kv_bytes_per_token"] * 2 == plan["kv_bytes_per_token"]


def _expected_tensor_bytes(cfg):
    """Bytes of the checkpoint's tensors (bf16 matrices and vectors, MXFP4 blocks and scales)."""
    H, I, E, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size
    Q, KV = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = (2 * ((Q + 2 * KV) * H + H * Q + E * H)             # bf16 matrices
                 + E * 2 * I * H // 2 + E * 2 * I * H // 32          # mlp1 blocks + scales
                 + E * H * I // 2 + E * H * I // 32                   # mlp2 blocks + scales
                 + 4 * (2 * H + Q + 2 * KV + H + cfg.num_attention_heads + E + E * 2 * I + E * H))  # fp32 vectors
    yield cfg.num_hidden_layers * per_layer
    yield 2 * 2 * V * H + 4 * H


def _child_env(**extra: str) -> dict:
    """Environment for a Python subprocess that imports the same gptoss package as this one."""
    import sys

    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(gptoss.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root] + sys.path), **extra)


@pytest.mark.parametrize("env,error,match", [
    ({"GPTOSS_EMU_MEMORY_GIB": "0.002"}, "MemoryError", r"out of memory allocating [0-9.]+ (GiB|MiB|bytes) for .* free of [0-9.]+ MiB"),
    ({"GPTOSS_EMU_SM": "75"}, "RuntimeError", r"unsupported GPU .*sm_75.*8\.0"),
])
def test_device_memory_and_architecture_errors(env, error, match):
    """Out of device memory names the sizes; a pre-Ampere GPU is refused clearly (the emulator
    pretends, in a subprocess: its settings are read once per process)."""
    if not _emu_available():
        pytest.skip("built without the CUDA emulator")
    import subprocess
    import sys

    code = ("import gptoss\n"
            "try:\n"
            "    gptoss.Model.synthetic('tiny', device='cuda-emu', kv_cache_bytes=1 << 22)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, '|', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=_child_env(**env))
    assert r.returncode == 0, r.stderr[-2000:]
    kind, _, msg = r.stdout.partition(" | ")
    assert kind == error, r.stdout
    assert __import__("re").search(match, msg), msg


def test_gpu_benchmark_script_dry_run(tmp_path):
    """bench/bench_cuda.py and the table of bench/gpu_check.sh run end to end on the emulator
    (a tiny model), so a GPU lease never finds a broken script."""
    if not _emu_available():
        pytest.skip("built without the CUDA emulator")
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = _child_env()
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "bench_cuda.py"), "--device", "cuda-emu",
                        "--model", "tiny", "--quick", "--contexts", "40,72", "--batches", "2,17", "--kv-gib", "0.02",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    t = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_table.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert t.returncode == 0, t.stderr
    assert "ERROR" not in t.stdout, t.stdout
    for figure in ("prefill 40", "prefill 72 chunk 512", "prefill 72 bf16 act", "prefill 40 tiles 128x128",
                   "TFLOP/s", "decode b17 tiles 32x128", "decode b17 experts GEMV", "pdl=on", "pdl=on +prefetch", "qkv+rope unfused", "one-part act", "b1 experts mlp1", "b17 qkv", "p40 experts mlp1", "decode b1 ctx72", "graphs=on", "graphs=off", "top-p sampled", "decode b2 ctx40",
                   "device memory used", "copy bandwidth"):
        assert figure in t.stdout, (figure, t.stdout)
    assert "FAIL checks: bench/gpu_checks.py wrote no result" in t.stdout  # not run yet


def test_gpu_checks_rehearsal(tmp_path):
    """bench/gpu_checks.py (the first minute of bench/gpu_check.sh) passes every check on the
    emulator at small sizes, and its lines head the final table; on a machine without a GPU each
    check fails cleanly with its reason."""
    if not _emu_available():
        pytest.skip("built without the CUDA emulator")
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "bench", "gpu_checks.py")
    r = subprocess.run([sys.executable, script, "--device", "cuda-emu", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900, env=_child_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu_table.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    lines = t.stdout.splitlines()
    assert lines[0] == "-- checks --"
    names = ["subnormal probes", "arrival counters", "sampling compaction", "launch modes",
             "error: dense GEMV (1 row)", "error: dense tensor-core GEMV (8 rows)", "error: dense tensor-core GEMM (64 rows)",
             "error: experts GEMV (8 rows)", "error: experts GEMM (64 rows)", "kernel attributes"]
    assert len(lines) > len(names) and all(ln.startswith(f"PASS {n}: ") for ln, n in zip(lines[1:], names)), t.stdout
    if core is not None and getattr(core, "cuda_device_count", lambda: 0)() == 0:
        gpu = tmp_path / "gpu"
        r = subprocess.run([sys.executable, script, "--device", "cuda", "--out", str(gpu)],
                           capture_output=True, text=True, timeout=120, env=_child_env())
        assert r.returncode == 1, r.stdout + r.stderr
        fails = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL ")]
        assert len(fails) == len(names) and all("error:" in ln for ln in fails), r.stdout


@cuda_test
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_checkpoint_on_cuda(backend, make_checkpoint, layout):
    d = make_checkpoint("gqa4", 1, layout)
    cpu = gptoss.Model(d)
    gpu = gptoss.Model(d, device=backend.device, kv_cache_bytes=KV_CAP)
    toks = _toks(20, 4, cpu.config.vocab_size)
    assert_rel(gpu.forward(toks), cpu.forward(toks), E2E_REL, layout)


@cuda_test
def test_bf16_kv_cache(backend, monkeypatch):
    cfg = tiny_config("tiny4")
    cpu = gptoss.Model.synthetic(cfg, seed=2)
    from gptoss.synthetic import synthetic_tensors

    monkeypatch.setenv("GPTOSS_KV_DTYPE", "bfloat16")
    gpu = gptoss.Model("<synthetic>", device=backend.device, _config=cfg, kv_cache_bytes=KV_CAP,
                       _arrays=dict(synthetic_tensors(cfg, seed=2, layout="hf")))
    toks = _toks(40, 3, 1024)
    a, b = gpu.forward(toks), cpu.forward(toks)
    assert_rel(a, b, 5e-2, "bf16 KV cache")
    assert np.mean(a.argmax(-1) == b.argmax(-1)) > 0.9
    assert gpu._engine.memory_info()["kv_elem_bytes"] == 2


@cuda_test
def test_step_argmax_and_errors(backend):
    cfg = tiny_config("tiny")
    cpu, gpu = _pair(backend, cfg, seed=1, max_context=64, kv_cache_bytes=1 << 24)
    s = gpu.new_sequence()
    logits = s.prefill([1, 2, 3])
    s2 = s.fork()
    got = gpu._engine.step_argmax([s2.id], [np.array([4], np.int64)])
    ref = s.decode(4)
    assert int(got[0]) == int(np.argmax(ref))
    with pytest.raises(ValueError):
        s.decode(5000)
    with pytest.raises(ValueError):
        gpu.step([(s, [1]), (s, [2])])
    with pytest.raises(gptoss.ContextOverflowError):
        s.prefill(list(range(70)))
    assert len(s) == 4  # rejected calls change nothing
    assert np.all(np.isfinite(logits))
    with pytest.raises(ValueError):  # chunks can shrink, not grow past the buffers
        gpu._engine.set_max_chunk_tokens(100000)
    with pytest.raises(MemoryError):
        gptoss.Model.synthetic(cfg, seed=1, device=backend.device, kv_cache_bytes=1000)
    small = gptoss.Model.synthetic(cfg, seed=1, device=backend.device, kv_cache_bytes=2 * 2 * 2 * 2 * 16 * 64 * 4 * 2)
    q = small.new_sequence()
    with pytest.raises(MemoryError):
        q.prefill(list(range(100)))
    assert len(q) == 0


@cuda_test
def test_synthetic_on_device(backend):
    m = gptoss.Model.synthetic("tiny", seed=4, device=backend.device, kv_cache_bytes=KV_CAP)
    a = m.forward([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert a.shape == (10, 1024) and np.all(np.isfinite(a))
    assert 0.3 < float(a.std()) < 30
    b = gptoss.Model.synthetic("tiny", seed=4, device=backend.device, kv_cache_bytes=KV_CAP).forward(
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    np.testing.assert_array_equal(a, b)
    c = gptoss.Model.synthetic("tiny", seed=5, device=backend.device, kv_cache_bytes=KV_CAP).forward(
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert not np.allclose(a, c)
    info = m._engine.memory_info()
    assert info["weights"] > 0 and info["kv_cache"] > 0


# ------------------------------------------------------------------ device sampling
# cuda/sampling.cu against python/gptoss/sampling.py (steps 4-8, no penalties or bias), with the
# host's uniform draw u passed in. The device works in fp32 (sampling.py scales in float64), so
# exact token checks use u in the middle of a wide CDF interval, on rows whose kept set does not
# move when top_p / min_p move by 1e-5 (on a full vocabulary: moves by at most 3e-5 of mass, the
# nucleus boundary sits in a fine-grained tail there); the distribution tests sweep u over a grid.
from gptoss.sampling import Sampler, SamplingParams  # noqa: E402


def _sampler(T, k, p, mp, limit=0) -> Sampler:
    """The reference with the float32 parameters the device sees."""
    f = lambda v: float(np.float32(v))  # noqa: E731
    return Sampler(SamplingParams(temperature=f(T), top_k=int(k) or None, top_p=f(p), min_p=f(mp)),
                   vocab_limit=limit or None)


def _dev_sample(backend, logits, T, k, p, mp, u, limit=0) -> np.ndarray:
    """The device's draws, one block per row; the same draws when the candidates are first
    gathered over 3 slices of each row (as the engine does for few rows) is checked too."""
    R = logits.shape[0]
    col = lambda v, dt: np.ascontiguousarray(np.broadcast_to(np.asarray(v, dt), (R,)))  # noqa: E731
    args = (logits, col(T, np.float32), col(k, np.int32), col(p, np.float32), col(mp, np.float32),
            col(u, np.float32), limit)
    whole = backend.kernels.sample(*args)
    gathered = backend.kernels.sample(*args, 3)
    np.testing.assert_array_equal(gathered, whole)
    return whole


def _kept_bounds(x, T, k, p, mp, limit=0, eps=1e-5):
    """The reference's kept ids with top_p and min_p moved by eps (relative for min_p) towards
    fewer and towards more ids: fp32 rounding on the device stays between the two."""
    def kept(pp, mm):
        return set(np.flatnonzero(_sampler(T, k, pp, mm, limit).probs(x)))
    p32, m32 = float(np.float32(p)), float(np.float32(mp))
    if T == 0 or (p32 == 1.0 and m32 == 0.0):
        base = kept(p32, m32)
        return base, base
    lo = kept(p32 - eps if p32 < 1 else 1.0, min(m32 * (1 + eps), 1.0))
    hi = kept(min(p32 + eps, 1.0), m32 * (1 - eps))
    return lo, hi


def _stable(x, T, k, p, mp, limit=0, max_mass=0.0) -> bool:
    """At most max_mass of reference probability is on ids the device may keep or drop."""
    lo, hi = _kept_bounds(x, T, k, p, mp, limit)
    probs = _sampler(T, k, p, mp, limit).probs(x)
    return float(probs[sorted(hi - lo)].sum()) <= max_mass and (lo <= hi)


def _draw_stable(rng, make, row, limit=0, max_mass=0.0):
    """make(rng) until the row (T, k, p, mp) is unambiguous on it (see _stable)."""
    for _ in range(50):
        x = make(rng).astype(np.float32)
        if _stable(x, *row, limit, max_mass):
            return x
    raise AssertionError(f"could not draw an unambiguous row for {row}")


def _mid_u(rng, probs) -> float:
    """u in the middle of a kept token's CDF interval (ascending ids, as sampling.py accumulates),
    the token drawn by probability among those with intervals >= 4e-4 (else the widest)."""
    cdf = np.cumsum(probs)
    cdf /= cdf[-1]
    lo = np.concatenate(([0.0], cdf[:-1]))
    ok = np.flatnonzero(probs >= 4e-4)
    if ok.size == 0:
        ok = np.array([int(np.argmax(probs))])
    j = int(rng.choice(ok, p=probs[ok] / probs[ok].sum()))
    return float(np.float32((lo[j] + cdf[j]) / 2))


def _stable_rows(rng, V, rows, limit=0, scales=(0.5, 1.0, 3.0), max_mass=0.0):
    """Fresh logits [R, V] (float32, never zeros) and u [R] for per-row (T, k, p, mp), each row
    unambiguous for the device (see _stable)."""
    x = np.empty((len(rows), V), np.float32)
    u = np.empty(len(rows), np.float32)
    for r, row in enumerate(rows):
        x[r] = _draw_stable(rng, lambda g: g.standard_normal(V) * g.choice(scales) + g.standard_normal(), row,
                            limit, max_mass)
        u[r] = _mid_u(rng, _sampler(*row, limit).probs(x[r]))
    return x, u


def _check_rows(backend, x, rows, u, limit=0):
    T, k, p, mp = (np.array(c) for c in zip(*rows))
    got = _dev_sample(backend, x, T, k, p, mp, u, limit)
    want = [_sampler(*rows[r], limit).token_for(x[r], float(u[r])) for r in range(len(rows))]
    assert list(got) == want, [(r, rows[r], int(got[r]), want[r]) for r in range(len(rows)) if got[r] != want[r]]
    return got


_MODES = {  # per-row (temperature, top_k, top_p, min_p); V stands for the vocabulary size
    "temperature": [(0.3, 0, 1, 0), (0.7, 0, 1, 0), (1.0, 0, 1, 0), (1.5, 0, 1, 0), (2.5, 0, 1, 0), (0, 0, 1, 0),
                    (1.0, 0, 1, 0), (0.9, 0, 1, 0)],
    "top_k": [(1.0, 1, 1, 0), (1.0, 2, 1, 0), (0.8, 5, 1, 0), (1.0, 50, 1, 0), (1.3, "V-1", 1, 0), (1.0, "V", 1, 0),
              (1.0, "V+7", 1, 0), (0.5, 3, 1, 0)],
    "top_p": [(1.0, 0, 0.05, 0), (1.0, 0, 0.3, 0), (1.0, 0, 0.9, 0), (0.8, 0, 0.99, 0), (1.5, 0, 0.6, 0),
              (1.0, 0, 0.999, 0), (0.6, 0, 0.75, 0), (2.0, 0, 0.95, 0)],
    "min_p": [(1.0, 0, 1, 0.01), (1.0, 0, 1, 0.1), (1.0, 0, 1, 0.5), (1.0, 0, 1, 1.0), (2.0, 0, 1, 0.05),
              (0.7, 0, 1, 0.2), (1.0, 0, 1, 0.9), (1.2, 0, 1, 0.001)],
    "combined": [(1.0, 50, 0.9, 0.05), (0.7, 10, 0.5, 0), (1.3, 0, 0.8, 0.1), (0, 5, 0.5, 0.1), (1.0, 3, 1, 0.3),
                 (0.9, "V-1", 0.95, 0.01), (1.0, 200, 0.7, 0), (1.5, 1, 0.3, 0.5)],
    "tiny_temperature": [(1e-3, 0, 1, 0), (1e-6, 0, 1, 0), (1e-20, 0, 0.9, 0), (1e-38, 0, 1, 0), (1e-45, 5, 1, 0),
                         (1e-6, 0, 1, 0.5), (1e-30, 10, 0.5, 0), (1e-4, 0, 0.99, 0.01)],
}


def _mode_rows(mode: str, V: int):
    sizes = {"V": V, "V-1": V - 1, "V+7": V + 7}
    return [(T, sizes.get(k, k), p, mp) for T, k, p, mp in _MODES[mode]]


@pytest.mark.parametrize("V", [7, 1000, 4099])
@pytest.mark.parametrize("mode", [*_MODES, "vocab_limit"])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # sampling.py, tiny T
@cuda_test
def test_sample_matches_reference(backend, mode, V):
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{V}".encode()))
    limit = 0
    if mode == "vocab_limit":  # ids past the tokenizer's vocabulary are never drawn
        rows, limit = _mode_rows("combined", V), max(1, 2 * V // 3)
    else:
        rows = _mode_rows(mode, V)
    x, u = _stable_rows(rng, V, rows, limit)
    got = _check_rows(backend, x, rows, u, limit)
    if limit:
        assert np.all(got < limit)


@cuda_test
def test_sample_greedy(backend):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 1001)).astype(np.float32)
    x[1, 7] = x[1, 500] = 50.0    # tie: lower id
    x[2, :] = 1.5                 # all equal
    x[3, 4] = np.nan              # NaN is never the argmax
    x[3, 6] = 60.0
    x[4, 900] = 99.0              # beyond vocab_limit below: not eligible in the second call
    x[5, 3] = np.inf              # +inf wins, as np.argmax picks it
    T, k, p, mp = 0.0, 0, 1.0, 0.0
    got = _dev_sample(backend, x, T, k, p, mp, 0.5)
    want = [_sampler(T, k, p, mp).token_for(x[r], 0.5) for r in range(6)]
    assert list(got) == want and want[1:5] == [7, 0, 6, 900] and want[5] == 3
    assert list(got) == list(backend.kernels.argmax(x))
    got = _dev_sample(backend, x, T, k, p, mp, 0.5, limit=800)
    assert list(got) == [_sampler(T, k, p, mp, 800).token_for(x[r], 0.5) for r in range(6)] and got[4] != 900


@cuda_test
def test_sample_ties(backend):
    """Integer logits: top-k boundaries inside tie groups (lower ids kept), top-p over equal
    probabilities (lower ids first), min-p = 1 keeping exactly the maximal ties."""
    rng = np.random.default_rng(12)
    rows = [(1.0, 37, 1, 0), (0.5, 5, 1, 0), (1.0, 0, 0.3, 0), (1.0, 0, 1, 1.0), (0, 0, 1, 0), (1.0, 3, 0.7, 0.2),
            (1e-6, 0, 0.45, 0), (2.0, 100, 0.875, 0)]
    V = 1000
    x = np.stack([_draw_stable(rng, lambda g: g.integers(-4, 3, V) * 0.75 + 0.25, row) for row in rows])
    u = np.array([_mid_u(rng, _sampler(*row).probs(x[r])) for r, row in enumerate(rows)], np.float32)
    _check_rows(backend, x, rows, u)
    # Ties at the k-th logit: exactly the lowest ids of the tie group survive.
    y = rng.standard_normal(300).astype(np.float32) - 10
    y[[250, 40, 90, 10]] = 5.0
    grid = ((np.arange(64) + 0.5) / 64).astype(np.float32)
    got = _dev_sample(backend, np.tile(y, (64, 1)), 1.0, 3, 1.0, 0.0, grid)
    assert set(got) == {10, 40, 90}


@cuda_test
def test_sample_masked_ids(backend):
    """NaN and -inf are never drawn, nor ids at or past vocab_limit; nothing to draw gives -1."""
    rng = np.random.default_rng(13)
    V, n = 1000, 64
    y = (rng.standard_normal(V) * 2).astype(np.float32)
    y[rng.random(V) < 0.3] = np.nan
    y[rng.random(V) < 0.1] = -np.inf
    grid = ((np.arange(n) + 0.5) / n).astype(np.float32)
    for limit in (0, 600, 5000):
        got = _dev_sample(backend, np.tile(y, (n, 1)), 1.3, 0, 1.0, 0.0, grid, limit)
        assert np.all(np.isfinite(y[got])) and np.all(got < (limit or V))
        want = [_sampler(1.3, 0, 1.0, 0.0, limit).token_for(y, float(v)) for v in grid]
        assert np.mean(got == np.array(want)) > 0.95
    # +inf is not a finite logit: sampling never draws it (as sampling.py without top-k); greedy does.
    z = y.copy()
    z[5] = np.inf
    got = _dev_sample(backend, np.tile(z, (n, 1)), 1.0, 0, 1.0, 0.0, grid)
    assert 5 not in set(got)
    assert _dev_sample(backend, z[None], 0.0, 0, 1.0, 0.0, 0.3)[0] == 5
    bad = np.full((4, 9), np.nan, np.float32)
    bad[1] = -np.inf
    bad[2, ::2] = np.inf
    bad[3, 5] = 1.0  # the only finite id is past vocab_limit
    temps = [0.0, 1.0, 1.0, 0.7]
    assert list(_dev_sample(backend, bad, temps, 2, 0.9, 0.1, 0.5, limit=5)) == [-1, -1, -1, -1]
    for r in range(4):  # where sampling.py raises
        with pytest.raises(ValueError):
            _sampler(temps[r], 2, 0.9, 0.1, 5).token_for(bad[r], 0.5)


@cuda_test
def test_sample_argument_errors(backend):
    x = np.random.default_rng(14).standard_normal((2, 10)).astype(np.float32)
    ok = dict(T=1.0, k=0, p=1.0, mp=0.0, u=0.5)
    for key, value in [("T", -1.0), ("T", np.inf), ("T", np.nan), ("k", -1), ("p", 0.0), ("p", 1.5), ("mp", -0.1),
                       ("mp", 2.0), ("u", 1.0), ("u", -0.2)]:
        with pytest.raises(ValueError):
            _dev_sample(backend, x, **{**ok, key: value})
    with pytest.raises(ValueError):
        _dev_sample(backend, x, **ok, limit=-1)
    one, zero, half = np.ones(2, np.float32), np.zeros(2, np.float32), np.full(2, 0.5, np.float32)
    with pytest.raises(ValueError):  # logits not [R, V]
        backend.kernels.sample(x[0], one, np.zeros(2, np.int32), one, zero, half)
    with pytest.raises(ValueError):  # one temperature too many
        backend.kernels.sample(x, np.ones(3, np.float32), np.zeros(2, np.int32), one, zero, half)
    assert _dev_sample(backend, np.zeros((0, 10), np.float32), 1.0, 0, 1.0, 0.0, 0.5).shape == (0,)


@pytest.mark.parametrize("V,T,k,p,mp,n", [
    (1000, 0.8, 100, 0.9, 0.02, 512),
    (4099, 1.2, 0, 0.8, 0.0, 512),
    (4099, 0.7, 0, 1.0, 0.05, 512),
    (997, 1.0, 0, 1.0, 0.0, 512),
    gpu_only(201088, 0.6, 0, 0.8, 0.0, 2048),
    gpu_only(201088, 0.7, 50, 0.9, 0.01, 2048),
])
@cuda_test
def test_sample_distribution(backend, V, T, k, p, mp, n):
    """Many u on a regular grid: the device's draws follow the reference distribution."""
    rng = np.random.default_rng(zlib.crc32(repr((V, T, k, p, mp, n)).encode()))
    max_mass = 3e-5 if V > 10000 else 0.0  # a full vocabulary's nucleus ends in a fine-grained tail
    y = _draw_stable(rng, lambda g: g.standard_normal(V) * 2.5, (T, k, p, mp), 0, max_mass)
    ref = _sampler(T, k, p, mp)
    probs = ref.probs(y)
    lo, hi = _kept_bounds(y, T, k, p, mp)
    grid = ((np.arange(n) + 0.5) / n).astype(np.float32)
    got = np.concatenate([_dev_sample(backend, np.tile(y, (len(g), 1)), T, k, p, mp, g)
                          for g in np.array_split(grid, max(1, n * V // 2**27))])  # <= 512 MiB a call
    # sampling.py's inverse CDF (Sampler._pick) for every u at once; spot-checked against token_for.
    ids = np.flatnonzero(probs)
    cdf = np.cumsum(probs[ids])
    want = ids[np.minimum(np.searchsorted(cdf, grid * cdf[-1], side="right"), ids.size - 1)]
    assert all(ref.token_for(y, float(grid[j])) == want[j] for j in range(0, n, n // 16))
    assert set(got) <= hi                                              # the same kept set ...
    assert {i for i in lo if probs[i] * n >= 2} <= set(got)            # ... every likely id drawn
    assert np.mean(got != want) <= 0.01                                # the same inverse CDF
    emp = np.bincount(got, minlength=V) / n
    tv = 0.5 * float(np.abs(emp - probs).sum())
    assert tv <= 0.5 * len(hi) / n + 1e-3, tv                         # grid quantisation bound


@pytest.mark.parametrize("R,limits", [(4, (0, 200000)), gpu_only(128, (0,))])
@cuda_test
def test_sample_full_vocab(backend, R, limits):
    """Full gpt-oss vocabulary rows (201088; 128 rows = a decode batch), mixed parameters per
    row, a NaN sprinkle, a vocab_limit; the same call twice gives the same tokens."""
    rng = np.random.default_rng(15 + R)
    cycle = [(0, 0, 1, 0), (1.0, 0, 1, 0), (1.0, 50, 0.9, 0), (0.8, 0, 0.95, 0), (1.0, 0, 1, 0.05),
             (0.6, 1000, 1, 0), (1.2, 40, 0.8, 0.02), (1e-6, 0, 0.9, 0)]
    rows = [cycle[r % len(cycle)] for r in range(R)]
    for limit in limits:
        x, u = _stable_rows(rng, 201088, rows, limit, scales=(2.0, 3.0), max_mass=3e-5)
        x[:, rng.integers(0, 201088, 100)] = np.nan
        got = _check_rows(backend, x, rows, u, limit)
        np.testing.assert_array_equal(got, _dev_sample(backend, x, *map(np.array, zip(*rows)), u, limit))


# ---------------------------------------------------------------- device logprobs
# cuda/sampling.cu's logprobs_rows against Sampler._with_logprobs (log_softmax of the raw logits,
# the chosen token's log-probability and the n most likely ids). Where the two differ by design:
# the device counts NaN as -inf (the reference's max and sum turn NaN, so it sees NaN -> -inf
# here), a row with every id masked gives -inf / -1 (the reference: NaN), a negative token gives
# -inf (the reference indexes from the end), and among equal values at the n-th place the device
# keeps the lower ids (the reference's argpartition picks any).
def _lp_ok(got: float, want: float) -> bool:
    if np.isnan(want) or np.isinf(want):
        return bool(np.isnan(got)) if np.isnan(want) else got == want
    return abs(float(got) - want) <= 1e-5 * max(1.0, abs(want)) + 1e-6


def _check_logprobs(backend, x, token, n, limit=0):
    """The device's logprobs of rows x against the reference, row by row; returns them."""
    R, V = x.shape
    token = np.asarray(token, np.int32)
    chosen, ids, lps = backend.kernels.logprobs(x, token, n, limit)
    assert chosen.shape == (R,) and ids.shape == lps.shape == (R, n)
    lim = min(limit or V, V)
    k = min(n, lim)
    for r in range(R):
        y = np.where(np.isnan(x[r]), -np.inf, x[r])
        ref = Sampler(SamplingParams(logprobs=n), vocab_limit=limit or None)._with_logprobs(int(token[r]), y)
        assert _lp_ok(chosen[r], ref.logprob), (r, chosen[r], ref.logprob)
        assert len(ref.top_logprobs) == k
        for j, (i, v) in enumerate(ref.top_logprobs):
            assert _lp_ok(lps[r, j], v), (r, j, lps[r, j], v)
            if ids[r, j] != i:  # only within a tie (the reference orders a tie group arbitrarily at its end)
                a, b = float(y[ids[r, j]]), float(y[i])
                assert a == b or abs(a - b) <= 1e-6 * abs(b), (r, j, int(ids[r, j]), i)
        # The device's own contract: value descending, then id ascending, exactly.
        order = np.lexsort((np.arange(lim), -y[:lim].astype(np.float64)))[:k]
        assert list(ids[r, :k]) == list(order), r
        assert np.all(ids[r, k:] == -1) and np.all(lps[r, k:] == -np.inf)
    return chosen, ids, lps


@pytest.mark.parametrize("V", [7, 1000, 4099])
@pytest.mark.parametrize("n", [0, 1, 5, 20])
@cuda_test
def test_logprobs_matches_reference(backend, V, n):
    rng = np.random.default_rng(zlib.crc32(f"lp/{V}/{n}".encode()))
    scales = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0])
    x = (rng.standard_normal((8, V)) * scales[:, None] + rng.standard_normal((8, 1)) * 5).astype(np.float32)
    x[7, rng.integers(0, V)] += 40.0  # one id with almost all the mass: its logprob is ~ -1e-17
    _check_logprobs(backend, x, rng.integers(0, V, 8), n)


@cuda_test
def test_logprobs_ties(backend):
    """Repeated values: equal logprobs in id order, the lower ids kept at the n-th place."""
    rng = np.random.default_rng(21)
    V = 1000
    x = (rng.integers(-4, 3, (6, V)) * 0.75 + 0.25).astype(np.float32)
    x[1] = 1.5                                  # all equal: ids 0..n-1
    x[2, [700, 30, 400, 2, 999]] = 9.0          # a tie at the top, straddling n = 3
    x[3, ::7] = 4.0                             # a tie group far larger than n
    x[4, [5, 6]] = [0.0, -0.0]                  # +0 and -0 are equal
    x[4, 7:] = -5.0
    x[5, 10:30] = 2.0                           # n = 20 exactly fills the tie group
    x[5, 30:40] = 2.0
    for n in (1, 3, 5, 20):
        _, ids, _ = _check_logprobs(backend, x, rng.integers(0, V, 6), n)
        assert list(ids[1]) == list(range(n))
        assert list(ids[2, :min(n, 5)]) == [2, 30, 400, 700, 999][:n]
        assert list(ids[3]) == list(range(0, 7 * n, 7))
    # A small odd row with a tie over the whole row but one id.
    y = np.full((2, 7), -3.0, np.float32)
    y[0, 4] = 2.0
    _check_logprobs(backend, y, [4, 6], 20)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # sampling.py, +inf
@cuda_test
def test_logprobs_masked(backend):
    """NaN and -inf: -inf logprobs, listed after every finite id; nothing finite: -inf and -1."""
    rng = np.random.default_rng(22)
    V = 1000
    x = (rng.standard_normal((5, V)) * 2).astype(np.float32)
    x[0, rng.random(V) < 0.3] = np.nan
    x[0, rng.random(V) < 0.2] = -np.inf
    x[1, :] = -np.inf
    x[1, [3, 500, 998]] = [1.0, np.nan, 2.0]    # 2 finite ids: the rest of the top n is -inf
    x[2, ::2] = np.nan
    x[3, :] = np.nan                            # every id masked
    x[4, :] = -np.inf
    tok = np.array([int(np.flatnonzero(np.isnan(x[0]))[0]), 500, 3, 1, 2], np.int32)  # NaN token: -inf
    for n in (0, 5, 20):
        chosen, ids, lps = backend.kernels.logprobs(x, tok, n)
        _check_logprobs(backend, x[:3], tok[:3], n)
        assert chosen[0] == -np.inf and chosen[1] == -np.inf
        assert list(chosen[3:]) == [-np.inf] * 2 and np.all(ids[3:] == -1) and np.all(lps[3:] == -np.inf)
        if n >= 2:
            assert list(ids[1, :2]) == [998, 3] and np.all(lps[1, 2:] == -np.inf)
    # A negative token is outside the vocabulary (the reference would index from the end).
    chosen, _, _ = backend.kernels.logprobs(x[2:3], np.array([-1], np.int32), 0)
    assert chosen[0] == -np.inf
    # +inf: NaN logprobs, as the reference's lse is NaN; it still ranks first.
    z = x[2:3].copy()
    z[0, 9] = np.inf
    chosen, ids, lps = _check_logprobs(backend, z, [9], 3)
    assert np.isnan(chosen[0]) and ids[0, 0] == 9 and np.all(np.isnan(lps))


@pytest.mark.parametrize("V", [7, 1000, 4099])
@cuda_test
def test_logprobs_vocab_limit(backend, V):
    """Ids at or past vocab_limit are not in the softmax: a token there gets -inf."""
    rng = np.random.default_rng(zlib.crc32(f"lp-limit/{V}".encode()))
    x = (rng.standard_normal((4, V)) * 3).astype(np.float32)
    x[:, V - 1] = 50.0  # past every limit below but V: would be the top id
    for limit in (max(1, 2 * V // 3), 3, V + 5):
        tok = np.array([0, limit - 1, min(limit, V - 1), V - 1], np.int32)
        for n in (0, 5, 20):
            chosen, ids, _ = _check_logprobs(backend, x, tok, n, limit)
            if limit < V:
                assert chosen[3] == -np.inf and np.all(ids < limit)


@pytest.mark.parametrize("R,n", [(1, 20), (8, 5), gpu_only(128, 20)])
@cuda_test
def test_logprobs_full_vocab(backend, R, n):
    """gpt-oss rows (201088 ids) with a vocab_limit as its tokenizer's."""
    rng = np.random.default_rng(23 + R)
    V = 201088
    x = (rng.standard_normal((R, V)) * rng.uniform(1, 4, (R, 1))).astype(np.float32)
    tok = rng.integers(0, V, R)
    tok[0] = int(np.argmax(x[0]))
    _check_logprobs(backend, x, tok, n)
    _check_logprobs(backend, x[:2], tok[:2], n, limit=200000)


@pytest.mark.parametrize("n,V", [(20, 2**18 + 3), (7, 2**20 + 5)])
@cuda_test
def test_logprobs_many_candidates(backend, n, V):
    """Over 4096 ids reach the threshold (the n-th best of the 1024 threads' maxima): the
    kernel's fallback of n passes. Needs over 4096 / n ids per thread: V > 2^18 for n = 20."""
    rng = np.random.default_rng(24)
    x = (rng.standard_normal((2, V)) - 20).astype(np.float32)
    t = ((np.arange(V) // 4) % 1024).astype(np.float32)  # the thread of each id (aligned rows)
    own = t < n                                         # n threads: values just below their own max
    x[0, own] = 10 + 0.01 * t[own] - 0.001 * rng.random(int(own.sum())).astype(np.float32)
    x[1] = x[0]
    x[1, own] = np.round(x[1, own], 1)                  # and with ties
    _check_logprobs(backend, x[:1], [5], n)
    _check_logprobs(backend, x[1:], [5], n)


@cuda_test
def test_logprobs_argument_errors(backend):
    x = np.random.default_rng(25).standard_normal((2, 10)).astype(np.float32)
    tok = np.zeros(2, np.int32)
    for n in (-1, 21):
        with pytest.raises(ValueError):
            backend.kernels.logprobs(x, tok, n)
    with pytest.raises(ValueError):
        backend.kernels.logprobs(x, tok, 3, -1)
    with pytest.raises(ValueError):  # logits not [R, V]
        backend.kernels.logprobs(x[0], tok, 3)
    with pytest.raises(ValueError):  # one token too many
        backend.kernels.logprobs(x, np.zeros(3, np.int32), 3)
    chosen, ids, lps = backend.kernels.logprobs(np.zeros((0, 10), np.float32), np.zeros(0, np.int32), 4)
    assert chosen.shape == (0,) and ids.shape == lps.shape == (0, 4)
