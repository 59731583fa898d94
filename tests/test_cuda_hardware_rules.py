"""CUDA backend: the hardware's rules that the emulator used to be blind to, each with a test that
fails when the code breaks the rule (on a real GPU the same tests run on the hardware itself):

  * global memory across blocks: a block's stores reach another block only through a fence, and
    a fence covers only the stores that a barrier ordered before it (the "last block merges"
    pattern, cuda/common.cuh last_block_arrives). The emulator interleaves blocks (holding the
    first ones at their atomics) and keeps a block's stores private until it fences or exits;
  * tensor cores align the addends of an MMA to the largest one and truncate: the 2-8 row GEMV
    must stay at fp32 accuracy under that arithmetic (the emulator's "hardware" MMA mode);
  * fp16 subnormals in either MMA operand, which the experts' decode GEMV needs (a GPU that
    flushes them gets the tensor-core GEMM instead: the emulator's flush modes);
  * the 48 KiB shared-memory default counts static shared memory too;
  * arrival counters are left at zero by every step.
Events recorded while a graph is captured, and the legacy stream's ordering, are covered by the
engine tests of test_cuda.py (profile, and every engine test: a counter zeroed on the legacy
stream would be read as garbage by the engine's non-blocking stream).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gptoss
from test_cuda import BACKENDS, KV_CAP, Backend, _child_env, from_bf16, mx_random, to_bf16

try:
    from gptoss import _core as core
except ImportError:  # pragma: no cover
    core = None


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return Backend(request.param)


@pytest.fixture
def hardware_mma(backend):
    """On the emulator, MMAs truncate as tensor cores do for the test's duration."""
    if not backend.emu:
        yield
        return
    old = backend.module.emu_set_mma_mode("hardware")
    try:
        yield
    finally:
        backend.module.emu_set_mma_mode(old)


# ------------------------------------------------------------------ memory across blocks
@pytest.mark.parametrize("blocks", [1, 3, 8, 40])
def test_last_block_merge_pattern(backend, blocks):
    """last_block_arrives: the last block sees every block's stores. The two ways of getting it
    wrong (no barrier between the other threads' stores and thread 0's fence; no fence) give the
    last block stale partials on the emulator, as they may on a GPU."""
    k = backend.kernels
    want = blocks * 256 * (blocks * 256 - 1) / 2
    assert k.merge_pattern(0, blocks) == want
    if backend.emu and blocks >= 3:
        held, private = backend.module.emu_held_count(), backend.module.emu_private_page_count()
        assert k.merge_pattern(1, blocks) != want, "a fence without a barrier before it went unnoticed"
        assert k.merge_pattern(2, blocks) != want, "a missing fence went unnoticed"
        assert backend.module.emu_held_count() > held and backend.module.emu_private_page_count() > private


def test_emulator_interleaves_the_engines_merges(backend):
    """The split sampling kernels and the engine's other merges run under the model: blocks are
    held at their arrivals and stores stay private until fenced, and the draws still agree."""
    if not backend.emu:
        pytest.skip("emulator counters")
    rng = np.random.default_rng(7)
    R, V = 8, 3000
    x = (rng.standard_normal((R, V)) * 2).astype(np.float32)
    col = lambda v, dt: np.full(R, v, dt)  # noqa: E731
    args = (x, col(0.9, np.float32), col(0, np.int32), col(0.95, np.float32), col(0.0, np.float32),
            (rng.random(R) * 0.999).astype(np.float32), 0)
    held = backend.module.emu_held_count()
    whole = backend.kernels.sample(*args)
    for splits in (3, 7):
        np.testing.assert_array_equal(backend.kernels.sample(*args, splits), whole)
    assert backend.module.emu_held_count() > held


def test_arrival_counters_stay_zero(backend):
    """After graph-replayed greedy and sampled decode steps at batch 1 and 3 (split attention,
    router, mlp2 combine, argmax and sampling slices all merge), every counter is back at zero."""
    cfg = gptoss.config.preset("tiny")
    m = gptoss.Model.synthetic(cfg, seed=2, device=backend.device, kv_cache_bytes=KV_CAP)
    eng = m._engine
    rng = np.random.default_rng(3)
    for B in (1, 3):
        seqs = [m.new_sequence() for _ in range(B)]
        for s in seqs:
            s.prefill(rng.integers(0, cfg.vocab_size, 70).astype(np.int64))
        ids, toks = [s.id for s in seqs], [1] * B
        for i in range(4):
            one = [np.array([t], np.int64) for t in toks]
            if i % 2:
                toks = list(eng.step_argmax(ids, one))
            else:
                f = lambda v, dt: np.full(B, v, dt)  # noqa: E731
                toks = list(eng.step_sample(ids, one, f(0.9, np.float32), f(0, np.int32), f(0.9, np.float32),
                                            f(0.0, np.float32), f(0.5, np.float32), f(0, np.int32)))
    n, nonzero = eng.arrival_counters()
    assert n > 0 and nonzero == 0
    assert eng.graph_stats()["launches"] >= 6


# ------------------------------------------------------------------ tensor-core arithmetic
@pytest.mark.parametrize("K", [2880, 4096])
@pytest.mark.parametrize("M", [3, 8])
@pytest.mark.parametrize("inputs", ["random", "same-sign"])
def test_dense_gemv_on_truncating_tensor_cores(backend, hardware_mma, K, M, inputs):
    """The 2-8 row tensor-core GEMV (three exact bf16 parts of the activations) keeps fp32
    accuracy, 5e-6 of the largest output against float64, when each MMA truncates its sum: each
    32-k step starts from a zero accumulator and is added in fp32. "same-sign" makes every
    product of a row positive, so truncation errors all go one way (one accumulator over the row
    drifts by ~1e-5 there)."""
    rng = np.random.default_rng(K + M + len(inputs))
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((96, K)) / np.sqrt(K)
    if inputs == "same-sign":
        w = np.abs(w) * np.sign(x[M - 1])
    wb = to_bf16(w.astype(np.float32))
    want = x.astype(np.float64) @ from_bf16(wb).reshape(wb.shape).astype(np.float64).T
    got = backend.kernels.matmul_bf16(x, wb, None, 3)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err <= 5e-6, f"rel {err:.3g}"


def test_hardware_mma_mode_truncates(backend):
    """The emulator's hardware-like MMA: the tensor-core GEMM, which keeps one accumulator over
    the whole of K, drifts on same-sign products there and not with exact MMAs."""
    if not backend.emu:
        pytest.skip("an emulator mode")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 2880)).astype(np.float32)
    wb = to_bf16((np.abs(rng.standard_normal((64, 2880))) * np.sign(x[0]) / 50).astype(np.float32))
    want = x.astype(np.float64) @ from_bf16(wb).reshape(wb.shape).astype(np.float64).T
    errs = {}
    for mode in ("exact", "hardware"):
        old = backend.module.emu_set_mma_mode(mode)
        try:
            got = backend.kernels.matmul_bf16(x, wb, None, 2)
        finally:
            backend.module.emu_set_mma_mode(old)
        errs[mode] = float(np.abs(got - want).max() / np.abs(want).max())
    assert errs["exact"] < 3e-6 < 1e-5 < errs["hardware"], errs
    with pytest.raises(ValueError):
        backend.module.emu_set_mma_mode("fast")


# ------------------------------------------------------------------ fp16 subnormals
def test_subnormal_probe_both_operands(backend):
    a, b = backend.kernels.subnormal_probe()
    if backend.emu:
        assert (a, b) == (2.0 ** -11, 2.0 ** -11)
    m = gptoss.Model.synthetic("tiny", device=backend.device, kv_cache_bytes=KV_CAP)
    assert m._engine.moe_gemv_available() == (a == b == 2.0 ** -11)


@pytest.mark.parametrize("flush,probe", [("flush_a", (0.0, 2.0 ** -11)), ("flush_b", (2.0 ** -11, 0.0))])
def test_engine_falls_back_when_either_operand_flushes(flush, probe):
    """A GPU whose tensor cores flush fp16 subnormals in A, or only in B (the lo parts of the
    activations), gets the experts on the tensor-core GEMM (the probe is cached per process)."""
    if core is None or not hasattr(core, "cuda_emu"):
        pytest.skip("built without the CUDA emulator")
    code = ("import gptoss, gptoss._core as c; p = c.cuda_emu.cuda_kernels.subnormal_probe(); "
            "m = gptoss.Model.synthetic('tiny', device='cuda-emu', kv_cache_bytes=1 << 28); "
            "e = m._engine; print(p[0], p[1], e.moe_gemv_available(), e.moe_gemv_tokens())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=_child_env(GPTOSS_EMU_MMA=flush))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b, avail, tokens = r.stdout.split()
    assert (float(a), float(b)) == probe
    assert avail == "False" and tokens == "0"
    assert "flushes fp16 subnormal" in r.stderr


# ------------------------------------------------------------------ shared memory
@pytest.mark.parametrize("dynamic", [1024, 48 * 1024 - 512, 48 * 1024, 100 * 1024])
def test_shared_memory_optin_counts_static(backend, dynamic):
    """A kernel with 1 KiB of static shared memory: its dynamic limit is set for whatever it
    takes (at 48 KiB - 512 the two together are already over the 48 KiB default)."""
    assert backend.kernels.shared_memory_optin(dynamic) == 256 * 2 + dynamic // 4


def test_kernel_attributes(backend):
    attrs = backend.kernels.kernel_attributes()
    names = {a["name"] for a in attrs}
    assert len(attrs) >= 60 and len(names) == len(attrs)
    for want in ("sample_compact_kernel", "gemv_mma_kernel<EPI_STORE, true>", "subnormal_probe_kernel"):
        assert want in names
    for a in attrs:
        assert 0 < a["launch_threads"] <= a["max_threads"], a
        assert a["local_bytes"] >= 0 and a["regs"] >= 0
    mx = mx_random(np.random.default_rng(0), 64, 64)
    backend.kernels.matmul_mxfp4(np.ones((64, 64), np.float32), *mx, None, True)  # the GEMM has run
    st = {a["name"]: a["static_shared_bytes"] for a in backend.kernels.kernel_attributes()}
    assert any(v > 0 for n, v in st.items() if n.startswith("tc_gemm_kernel"))
