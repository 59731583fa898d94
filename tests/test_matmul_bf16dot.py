"""The bf16 dot-product GEMM (precision="bf16", AVX512_BF16) against numpy references.

The reference of the bf16 path rounds x to bf16 (nearest even) and multiplies in float64; the
kernel then differs only by its fp32 accumulation. The tolerance is calibrated, not guessed: twice
the error of the same products summed by numpy in float32 one k after the other, measured on the
same inputs. Each test also checks that the bf16 path was
really taken (the result is far closer to the rounded-x reference than to the exact one).
Skipped, with the reason, on CPUs without AVX512_BF16.
"""

import os

import numpy as np
import pytest

from gptoss import _core
from test_matmul import bf16_bits, bf16_to_f64, dequant_mxfp4, rand_bf16, rand_mxfp4, rand_x

K_ = _core.kernels

pytestmark = pytest.mark.skipif(not K_.bf16_dot_available(),
                                reason="this CPU has no AVX512_BF16 (or GPTOSS_SIMD lowers the SIMD level): "
                                       "the bf16 dot-product path cannot run here")


def x_bf16(x):
    return bf16_to_f64(bf16_bits(x)).reshape(x.shape)


def fp32_sequential(xr, w64, b):
    """The same products summed in float32, one k after the other (the plainest fp32 order)."""
    x32, w32 = xr.astype(np.float32), w64.astype(np.float32)
    acc = np.zeros((x32.shape[0], w32.shape[0]), np.float32)
    for k in range(x32.shape[1]):
        acc += x32[:, k:k + 1] * w32[None, :, k]
    return (acc + np.float32(b)).astype(np.float64)


def check_bf16_path(y, x, w64, bias64=None):
    """y against the rounded-x reference, to a multiple of numpy's own fp32 error."""
    xr = x_bf16(x)
    b = 0.0 if bias64 is None else bias64[None, :]
    ref = xr @ w64.T + b
    scale = np.abs(xr) @ np.abs(w64).T + np.abs(ref) + 1e-30
    err = np.abs(y.astype(np.float64) - ref) / scale
    tol = max(2 * float((np.abs(fp32_sequential(xr, w64, b) - ref) / scale).max()), 2 ** -24)
    assert np.all(np.isfinite(y))
    assert err.max() <= tol, f"max rel err {err.max():.3g} > {tol:.3g} (2 x a sequential fp32 sum's)"
    # The activations really were rounded: the exact-x reference is much further away.
    exact = x.astype(np.float64) @ w64.T + b
    if x.shape[1] > 1 and np.any(x_bf16(x) != x):
        assert (np.abs(y - exact) / scale).max() > 8 * err.max()


SHAPES = [(9, 64, 13), (16, 17, 5), (17, 96, 31), (33, 1, 3), (100, 300, 29), (64, 2880, 40),
          (600, 96, 7), (40, 131, 97)]


@pytest.mark.parametrize("T,K,N", SHAPES)
def test_bf16_weights(T, K, N):
    rng = np.random.default_rng(10 * T + K + N)
    x = rand_x(rng, T, K)
    w = rand_bf16(rng, (N, K))
    b = rand_bf16(rng, (N,))
    check_bf16_path(K_.matmul_bf16(x, w, b, precision="bf16"), x, bf16_to_f64(w), bf16_to_f64(b))
    check_bf16_path(K_.matmul_bf16(x, w, precision="bf16"), x, bf16_to_f64(w))


def test_bf16_strided():
    rng = np.random.default_rng(5)
    T, K, N = 40, 201, 37
    xb = rand_x(rng, T, K + 24)
    wb = rand_bf16(rng, (N, K + 41))
    x, w = xb[:, 8:8 + K], wb[:, 3:3 + K]
    y = K_.matmul_bf16(x, w, None, precision="bf16")
    check_bf16_path(y, np.ascontiguousarray(x), bf16_to_f64(np.ascontiguousarray(w)))


@pytest.mark.parametrize("T,K,N", [(9, 32, 13), (17, 64, 4), (33, 96, 31), (100, 320, 97), (64, 2880, 9),
                                   (530, 64, 5)])
def test_mxfp4(T, K, N):
    rng = np.random.default_rng(3 * T + K + N)
    x = rand_x(rng, T, K)
    blocks, scales = rand_mxfp4(rng, N, K, 2, 252)  # the whole range that is exact in bf16
    w64 = dequant_mxfp4(blocks, scales)
    # keep the products within fp32 range: rescale each row's inputs by its largest scale
    x = (x * np.float32(2.0 ** -20)).astype(np.float32)
    b = rand_bf16(rng, (N,))
    y = K_.matmul_mxfp4(x, blocks, scales, b, precision="bf16")
    if np.all(np.isfinite(x_bf16(x) @ w64.T)):
        check_bf16_path(y, x, w64, bf16_to_f64(b))


@pytest.mark.parametrize("T", [9, 40])
def test_mxfp4_model_scales(T):
    """Scale bytes of real checkpoints (2^-10 .. 2^-3): the common case."""
    rng = np.random.default_rng(T)
    K, N = 2880, 70
    x = rand_x(rng, T, K)
    blocks, scales = rand_mxfp4(rng, N, K, 117, 124)
    check_bf16_path(K_.matmul_mxfp4(x, blocks, scales, precision="bf16"), x, dequant_mxfp4(blocks, scales))


def test_mxfp4_every_nibble():
    K, T = 64, 12
    rows = [np.full((K // 32, 16), lo | (hi << 4), dtype=np.uint8) for lo in range(16) for hi in (0, 5, 15)]
    blocks = np.stack(rows)
    N = blocks.shape[0]
    scales = np.full((N, K // 32), 127, dtype=np.uint8)
    x = np.zeros((T, K), dtype=np.float32)
    x[:, 0::2] = 1.0     # exact in bf16
    x[:, 1::2] = 1024.0
    y = K_.matmul_mxfp4(x, blocks, scales, precision="bf16")
    ref = x.astype(np.float64) @ dequant_mxfp4(blocks, scales).T
    assert np.array_equal(y, ref.astype(np.float32))


@pytest.mark.parametrize("bad", [0, 1])
def test_mxfp4_subnormal_scales_take_the_fp32_path(bad):
    """A scale byte below 2 gives values bf16 dot products read as zero: that matrix computes in
    fp32, exactly as precision='fp32' does."""
    rng = np.random.default_rng(bad)
    T, K, N = 40, 96, 11
    x = rand_x(rng, T, K)
    blocks, scales = rand_mxfp4(rng, N, K, 118, 124)
    scales[3, 1] = bad
    y = K_.matmul_mxfp4(x, blocks, scales, precision="bf16")
    assert np.array_equal(y, K_.matmul_mxfp4(x, blocks, scales, precision="fp32"))


def test_few_tokens_round_the_activations_too():
    """Steps of a few tokens (decode) use the same bf16 activations: the dense GEMV is the fp32
    one on rounded inputs; the MXFP4 one runs on bf16 dot products in one pass over the weights.
    A row computes the same products whatever the size of its step."""
    rng = np.random.default_rng(9)
    w = rand_bf16(rng, (50, 300))
    blocks, scales = rand_mxfp4(rng, 50, 320)
    w64 = dequant_mxfp4(blocks, scales)
    for T in (1, 2, 4, 5, 8):
        x = rand_x(rng, T, 300)
        y = K_.matmul_bf16(x, w, precision="bf16")
        assert np.array_equal(y, K_.matmul_bf16(x_bf16(x).astype(np.float32), w))
        big = np.concatenate([x, rand_x(rng, 40, 300)])  # the same rows in a GEMM step
        np.testing.assert_allclose(K_.matmul_bf16(big, w, precision="bf16")[:T], y, rtol=2e-5, atol=2e-5)
        x = rand_x(rng, T, 320)
        b = rand_bf16(rng, (50,))
        y = K_.matmul_mxfp4(x, blocks, scales, b, precision="bf16")
        check_bf16_path(y, x, w64, bf16_to_f64(b))
        big = np.concatenate([x, rand_x(rng, 40, 320)])
        np.testing.assert_allclose(K_.matmul_mxfp4(big, blocks, scales, b, precision="bf16")[:T], y,
                                   rtol=2e-5, atol=2e-5)


def test_lower_simd_level_turns_it_off():
    rng = np.random.default_rng(4)
    x, w = rand_x(rng, 40, 64), rand_bf16(rng, (9, 64))
    old = os.environ.get("GPTOSS_SIMD")
    os.environ["GPTOSS_SIMD"] = "avx2"
    try:
        assert not K_.bf16_dot_available()
        assert np.array_equal(K_.matmul_bf16(x, w, precision="bf16"), K_.matmul_bf16(x, w))
    finally:
        if old is None:
            del os.environ["GPTOSS_SIMD"]
        else:
            os.environ["GPTOSS_SIMD"] = old
    assert K_.bf16_dot_available()


def test_bad_precision():
    x, w = np.ones((2, 64), np.float32), np.ones((3, 64), np.uint16)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        K_.matmul_bf16(x, w, precision="fp16")
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        K_.matmul_mxfp4(x, np.ones((3, 2, 16), np.uint8), np.ones((3, 2), np.uint8), precision="")


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
@pytest.mark.parametrize("K,N,lo,hi", [(32, 13, 2, 252), (2880, 6, 117, 124), (96, 2, 2, 20), (64, 9, 230, 252)])
def test_mxfp4_gemv_one_pass(T, K, N, lo, hi):
    """The few-token MXFP4 kernel (bf16 weights looked up with the scale in their exponent) over
    every scale byte that is exact in bf16, rows in groups and alone."""
    rng = np.random.default_rng(100 * T + K + N)
    blocks, scales = rand_mxfp4(rng, N, K, lo, hi)
    w64 = dequant_mxfp4(blocks, scales)
    x = (rand_x(rng, T, K) * np.float32(2.0 ** ((127 - hi) // 2))).astype(np.float32)
    y = K_.matmul_mxfp4(x, blocks, scales, None, precision="bf16")
    check_bf16_path(y, x, w64)
