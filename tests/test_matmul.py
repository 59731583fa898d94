"""CPU matmul kernels (gptoss._core.kernels.matmul_*) against independent numpy references.

The references here are written from the spec (section 4 for MXFP4), in float64, without
using the C++ `_ref` oracles; the `_ref` oracles are checked against them too.

Every SIMD path is exercised: the kernels re-read GPTOSS_SIMD from the environment on every call,
so the `simd` fixture sets os.environ and restores it afterwards. Paths the CPU lacks are skipped
(a request above the CPU's level is clamped to what it has).
"""

import os

import numpy as np
import pytest

from gptoss import _core

K_ = _core.kernels

E2M1 = np.array([+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64)

LEVELS = ["avx512", "avx2", "scalar"]
RANK = {"scalar": 0, "avx2": 1, "avx512": 2}


def _cpu_level():
    old = os.environ.pop("GPTOSS_SIMD", None)
    try:
        return K_.simd_level()
    finally:
        if old is not None:
            os.environ["GPTOSS_SIMD"] = old


CPU_LEVEL = _cpu_level()


@pytest.fixture(params=LEVELS)
def simd(request):
    level = request.param
    if RANK[level] > RANK[CPU_LEVEL]:
        pytest.skip(f"CPU has no {level}")
    old = os.environ.get("GPTOSS_SIMD")
    os.environ["GPTOSS_SIMD"] = level
    assert K_.simd_level() == level
    yield level
    if old is None:
        del os.environ["GPTOSS_SIMD"]
    else:
        os.environ["GPTOSS_SIMD"] = old


# ---- independent references ---------------------------------------------------------------

def bf16_bits(a, rng=None):
    """float array -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_to_f64(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def dequant_mxfp4(blocks, scales):
    """blocks [N, K/32, 16] u8, scales [N, K/32] u8 -> float64 [N, K] (spec section 4)."""
    n, nb, _ = blocks.shape
    lo = blocks & 0x0F                      # element 2j
    hi = blocks >> 4                        # element 2j + 1
    vals = np.empty((n, nb, 32), dtype=np.float64)
    vals[:, :, 0::2] = E2M1[lo]
    vals[:, :, 1::2] = E2M1[hi]
    vals = np.ldexp(vals, scales.astype(np.int64)[:, :, None] - 127)
    return vals.reshape(n, nb * 32)


def ref_linear(x, w64, bias_bits):
    y = x.astype(np.float64) @ w64.T
    if bias_bits is not None:
        y = y + bf16_to_f64(bias_bits)[None, :]
    return y


def assert_close(y, ref, x, w64, rtol=1e-5):
    """Error relative to the magnitude of the terms summed (|x| @ |w|^T), per output."""
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    scale = np.abs(x.astype(np.float64)) @ np.abs(w64).T + np.abs(ref) + 1e-30
    err = np.abs(y.astype(np.float64) - ref) / scale
    assert np.all(np.isfinite(y))
    assert err.max() <= rtol, f"max rel err {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


def rand_x(rng, t, k):
    return rng.standard_normal((t, k)).astype(np.float32)


def rand_bf16(rng, shape, scale=0.5):
    w = bf16_bits(rng.standard_normal(shape) * scale)
    # never exactly zero, so every element matters
    w[w == 0] = 0x3F80
    w[w == 0x8000] = 0x3F80
    return w


def rand_mxfp4(rng, n, k, lo=118, hi=124):
    blocks = rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8)
    scales = rng.integers(lo, hi + 1, (n, k // 32), dtype=np.uint8)
    return blocks, scales


# ---- bf16 ------------------------------------------------------------------------------------

T_VALUES = [1, 2, 3, 4, 5, 7, 13, 17, 33, 64, 130]


@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("K,N", [(32, 13), (64, 4), (96, 31), (320, 97), (17, 5), (1, 3),
                                 (300, 29), (15, 1)])
def test_bf16(simd, T, K, N):
    rng = np.random.default_rng(1000 * T + 7 * K + N)
    x = rand_x(rng, T, K)
    w = rand_bf16(rng, (N, K))
    b = rand_bf16(rng, (N,))
    w64 = bf16_to_f64(w)
    y = K_.matmul_bf16(x, w, b)
    assert_close(y, ref_linear(x, w64, b), x, w64)
    y = K_.matmul_bf16(x, w)  # no bias
    assert_close(y, ref_linear(x, w64, None), x, w64)


@pytest.mark.parametrize("T", [1, 3, 40])
def test_bf16_strided(simd, T):
    """x and w with a row stride larger than K (views into wider arrays)."""
    rng = np.random.default_rng(5)
    K, N = 200, 37
    xb = rand_x(rng, T, K + 24)
    wb = rand_bf16(rng, (N, K + 40))
    x, w = xb[:, 8:8 + K], wb[:, 3:3 + K]
    w64 = bf16_to_f64(np.ascontiguousarray(w))
    y = K_.matmul_bf16(x, w, None)
    assert_close(y, ref_linear(x, w64, None), x, w64)


def test_bf16_large_rows(simd):
    """Wide N spread over threads, K = 2880 (the model width)."""
    rng = np.random.default_rng(11)
    x = rand_x(rng, 2, 2880)
    w = rand_bf16(rng, (1001, 2880), 0.05)
    b = rand_bf16(rng, (1001,))
    w64 = bf16_to_f64(w)
    assert_close(K_.matmul_bf16(x, w, b), ref_linear(x, w64, b), x, w64)
    x = rand_x(rng, 33, 2880)
    assert_close(K_.matmul_bf16(x, w, b), ref_linear(x, w64, b), x, w64)


def test_bf16_many_tokens(simd):
    """T above the GEMM token chunk (512), so several packing passes run."""
    if simd == "scalar":
        pytest.skip("slow on the scalar path")
    rng = np.random.default_rng(12)
    x = rand_x(rng, 1100, 96)
    w = rand_bf16(rng, (50, 96))
    b = rand_bf16(rng, (50,))
    w64 = bf16_to_f64(w)
    assert_close(K_.matmul_bf16(x, w, b), ref_linear(x, w64, b), x, w64)


# ---- MXFP4 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
@pytest.mark.parametrize("K,N", [(32, 13), (64, 4), (96, 31), (320, 97), (2880, 9)])
def test_mxfp4(simd, T, K, N):
    rng = np.random.default_rng(2000 * T + 7 * K + N)
    x = rand_x(rng, T, K)
    blocks, scales = rand_mxfp4(rng, N, K)
    b = rand_bf16(rng, (N,))
    w64 = dequant_mxfp4(blocks, scales)
    y = K_.matmul_mxfp4(x, blocks, scales, b)
    assert_close(y, ref_linear(x, w64, b), x, w64)
    y = K_.matmul_mxfp4(x, blocks, scales)
    assert_close(y, ref_linear(x, w64, None), x, w64)


@pytest.mark.parametrize("T", [1, 2, 5, 64])
def test_mxfp4_extreme_scales(simd, T):
    """Scale bytes 100..140: results span 2^-27 .. 2^13 per block."""
    rng = np.random.default_rng(31 + T)
    K, N = 320, 23
    x = rand_x(rng, T, K)
    blocks, scales = rand_mxfp4(rng, N, K, 100, 140)
    w64 = dequant_mxfp4(blocks, scales)
    y = K_.matmul_mxfp4(x, blocks, scales, None)
    assert_close(y, ref_linear(x, w64, None), x, w64)


@pytest.mark.parametrize("T", [1, 6])
def test_mxfp4_every_nibble(simd, T):
    """Each weight row is one E2M1 code repeated: checks the table and nibble order exactly."""
    K = 64
    rows = []
    for lo in range(16):
        for hi in (0, 5, 15):
            rows.append(np.full((K // 32, 16), lo | (hi << 4), dtype=np.uint8))
    blocks = np.stack(rows)
    N = blocks.shape[0]
    scales = np.full((N, K // 32), 127, dtype=np.uint8)
    x = np.zeros((T, K), dtype=np.float32)
    x[:, 0::2] = 1.0      # picks the low nibbles (even elements)
    x[:, 1::2] = 1000.0   # picks the high nibbles (odd elements)
    y = K_.matmul_mxfp4(x, blocks, scales)
    for i in range(N):
        lo, hi = (i // 3), (0, 5, 15)[i % 3]
        expect = K // 2 * (E2M1[lo] * 1.0 + E2M1[hi] * 1000.0)
        assert np.all(y[:, i] == np.float32(expect)), (i, y[:, i], expect)


def test_mxfp4_model_shape(simd):
    """A slice of the real expert shapes (K = 2880) on the decode and the grouped-token paths."""
    rng = np.random.default_rng(77)
    K, N = 2880, 130
    blocks, scales = rand_mxfp4(rng, N, K)
    b = rand_bf16(rng, (N,))
    w64 = dequant_mxfp4(blocks, scales)
    for T in (1, 4, 37):
        x = rand_x(rng, T, K)
        assert_close(K_.matmul_mxfp4(x, blocks, scales, b), ref_linear(x, w64, b), x, w64)


# ---- the C++ oracles ---------------------------------------------------------------------------

def test_ref_oracles():
    rng = np.random.default_rng(3)
    x = rand_x(rng, 3, 96)
    w = rand_bf16(rng, (7, 96))
    b = rand_bf16(rng, (7,))
    w64 = bf16_to_f64(w)
    assert_close(K_.matmul_bf16_ref(x, w, b), ref_linear(x, w64, b), x, w64, rtol=1e-7)
    blocks, scales = rand_mxfp4(rng, 7, 96, 100, 140)
    w64 = dequant_mxfp4(blocks, scales)
    assert_close(K_.matmul_mxfp4_ref(x, blocks, scales, b), ref_linear(x, w64, b), x, w64,
                 rtol=1e-7)


# ---- SIMD selection and argument checking ------------------------------------------------------

def test_simd_level_env():
    assert CPU_LEVEL in LEVELS
    old = os.environ.get("GPTOSS_SIMD")
    try:
        os.environ["GPTOSS_SIMD"] = "scalar"
        assert K_.simd_level() == "scalar"
        os.environ["GPTOSS_SIMD"] = "avx2"
        assert K_.simd_level() == ("avx2" if RANK[CPU_LEVEL] >= 1 else "scalar")
        os.environ["GPTOSS_SIMD"] = "avx512"   # never above what the CPU has
        assert K_.simd_level() == CPU_LEVEL
        os.environ["GPTOSS_SIMD"] = "bogus"    # ignored
        assert K_.simd_level() == CPU_LEVEL
    finally:
        if old is None:
            os.environ.pop("GPTOSS_SIMD", None)
        else:
            os.environ["GPTOSS_SIMD"] = old


def test_empty_shapes():
    x = np.ones((0, 64), np.float32)
    w = np.ones((5, 64), np.uint16)
    assert K_.matmul_bf16(x, w).shape == (0, 5)
    x = np.ones((2, 64), np.float32)
    assert K_.matmul_bf16(x, np.ones((0, 64), np.uint16)).shape == (2, 0)
    b = bf16_bits(np.array([1.5, -2.0, 3.0], np.float32))
    y = K_.matmul_bf16(np.ones((2, 0), np.float32), np.ones((3, 0), np.uint16), b)
    assert np.array_equal(y, np.array([[1.5, -2.0, 3.0]] * 2, np.float32))


def _bf16_args():
    return np.ones((2, 64), np.float32), np.ones((3, 64), np.uint16), np.ones(3, np.uint16)


@pytest.mark.parametrize("case", [
    "x_dtype", "x_ndim", "w_dtype", "k_mismatch", "bias_shape", "bias_dtype", "x_not_array",
    "x_col_stride", "w_col_stride", "x_byteswapped",
])
def test_bf16_bad_args(case):
    x, w, b = _bf16_args()
    if case == "x_dtype":
        x = x.astype(np.float64)
    elif case == "x_ndim":
        x = x[0]
    elif case == "w_dtype":
        w = w.astype(np.int32)
    elif case == "k_mismatch":
        w = np.ones((3, 63), np.uint16)
    elif case == "bias_shape":
        b = np.ones(4, np.uint16)
    elif case == "bias_dtype":
        b = np.ones(3, np.float32)
    elif case == "x_not_array":
        x = [[1.0] * 64] * 2
    elif case == "x_col_stride":
        x = np.ones((2, 128), np.float32)[:, ::2]
    elif case == "w_col_stride":
        w = np.ones((3, 128), np.uint16)[:, ::2]
    elif case == "x_byteswapped":
        x = x.astype(">f4")
    with pytest.raises(ValueError):
        K_.matmul_bf16(x, w, b)
    with pytest.raises(ValueError):
        K_.matmul_bf16_ref(x, w, b)


@pytest.mark.parametrize("case", [
    "k_not_32", "blocks_shape", "blocks_last", "scales_shape", "scales_dtype", "blocks_noncontig",
    "bias_shape",
])
def test_mxfp4_bad_args(case):
    rng = np.random.default_rng(0)
    x = rand_x(rng, 2, 64)
    blocks, scales = rand_mxfp4(rng, 5, 64)
    b = np.ones(5, np.uint16)
    if case == "k_not_32":
        x = rand_x(rng, 2, 48)
    elif case == "blocks_shape":
        blocks = blocks[:, :1]
    elif case == "blocks_last":
        blocks = np.ones((5, 2, 8), np.uint8)
    elif case == "scales_shape":
        scales = scales[:4]
    elif case == "scales_dtype":
        scales = scales.astype(np.int16)
    elif case == "blocks_noncontig":
        blocks = np.ones((10, 2, 16), np.uint8)[::2]
    elif case == "bias_shape":
        b = np.ones(6, np.uint16)
    with pytest.raises(ValueError):
        K_.matmul_mxfp4(x, blocks, scales, b)
    with pytest.raises(ValueError):
        K_.matmul_mxfp4_ref(x, blocks, scales, b)


def test_deterministic():
    """Same inputs, same outputs (static partitioning, no racy reductions)."""
    rng = np.random.default_rng(9)
    x = rand_x(rng, 70, 320)
    blocks, scales = rand_mxfp4(rng, 300, 320)
    y0 = K_.matmul_mxfp4(x, blocks, scales)
    for _ in range(3):
        assert np.array_equal(K_.matmul_mxfp4(x, blocks, scales), y0)


def test_concurrent_callers():
    """Several Python threads (GIL released) calling at once: per-caller buffers, same results."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(21)
    K, N = 320, 61
    blocks, scales = rand_mxfp4(rng, N, K)
    w = rand_bf16(rng, (N, K))
    xs = [rand_x(rng, t, K) for t in (1, 3, 40, 70, 1, 64)]
    expect = [(K_.matmul_mxfp4(x, blocks, scales), K_.matmul_bf16(x, w)) for x in xs]

    def run(i):
        x = xs[i % len(xs)]
        return i % len(xs), K_.matmul_mxfp4(x, blocks, scales), K_.matmul_bf16(x, w)

    with ThreadPoolExecutor(4) as ex:
        for i, ym, yb in ex.map(run, range(48)):
            assert np.array_equal(ym, expect[i][0])
            assert np.array_equal(yb, expect[i][1])
