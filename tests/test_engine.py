"""Sequences, the paged KV cache and batching: every path must give the logits of one full
forward pass (which test_forward_reference.py checks against transformers)."""

from __future__ import annotations

import numpy as np
import pytest

import gptoss
from conftest import interrupt_prefill, tiny_config

TOL = dict(rtol=0, atol=2e-5)


def _toks(n: int, seed: int, vocab: int = 1024) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, n)]


@pytest.fixture(scope="module")
def model():
    # block_size 4 and a small retention margin so that paging and window release are exercised.
    return gptoss.Model.synthetic(tiny_config("tiny4"), seed=5, block_size=4, window_retain=3)


def test_forward_shape_and_rows(model):
    toks = _toks(30, 0)
    full = model.forward(toks)
    assert full.shape == (30, 1024) and full.dtype == np.float32
    # Row t only depends on tokens[:t+1].
    np.testing.assert_allclose(model.forward(toks[:17]), full[:17], **TOL)


def test_incremental_decode_matches_forward(model):
    toks = _toks(40, 1)
    full = model.forward(toks)
    s = model.new_sequence()
    rows = [s.prefill(toks[:7])]
    rows += [s.decode(t) for t in toks[7:]]
    np.testing.assert_allclose(np.stack(rows), full[6:], **TOL)
    assert len(s) == 40 and s.tokens == toks
    s.free()


def test_prefill_in_pieces_and_chunks():
    toks = _toks(45, 2)
    m = gptoss.Model.synthetic(tiny_config("tiny"), seed=6, block_size=4, max_chunk_tokens=7)
    ref = gptoss.Model.synthetic(tiny_config("tiny"), seed=6, block_size=16, max_chunk_tokens=512).forward(toks)
    np.testing.assert_allclose(m.forward(toks), ref, **TOL)  # chunked all-logits
    s = m.new_sequence()
    s.prefill(toks[:10])
    np.testing.assert_allclose(s.prefill(toks[10:31], all_logits=True), ref[10:31], **TOL)
    np.testing.assert_allclose(s.prefill(toks[31:]), ref[-1], **TOL)


def test_ragged_batch_matches_one_at_a_time(model):
    prompts = [_toks(n, 10 + n) for n in (3, 19, 1, 11)]
    singles = [model.forward(p) for p in prompts]
    seqs = [model.new_sequence() for _ in prompts]
    outs = model.step(list(zip(seqs, prompts)))
    for o, ref in zip(outs, singles):
        np.testing.assert_allclose(o, ref[-1], **TOL)
    # Then several decode steps for all at once, with different next tokens.
    nxt = [_toks(6, 100 + i) for i in range(len(prompts))]
    for j in range(6):
        outs = model.step([(s, [n[j]]) for s, n in zip(seqs, nxt)])
        for i, o in enumerate(outs):
            ref = model.forward(prompts[i] + nxt[i][: j + 1])[-1]
            np.testing.assert_allclose(o, ref, **TOL)
    # Mixed: one sequence prefills a long run while others decode, all-logits rows in order.
    outs = model.step([(seqs[0], _toks(9, 7)), (seqs[1], [5]), (seqs[2], _toks(2, 8))], all_logits=True)
    assert [o.shape[0] for o in outs] == [9, 1, 2]
    np.testing.assert_allclose(outs[1][0], model.forward(prompts[1] + nxt[1] + [5])[-1], **TOL)
    for s in seqs:
        s.free()


def test_fork_matches_unforked_twin(model):
    prefix = _toks(13, 20)
    a = model.new_sequence()
    a.prefill(prefix)
    b = a.fork()
    assert b.tokens == prefix and len(b) == 13
    ta, tb = _toks(9, 21), _toks(9, 22)
    la = [a.decode(t) for t in ta]
    lb = [b.decode(t) for t in tb]
    np.testing.assert_allclose(np.stack(la), model.forward(prefix + ta)[13:], **TOL)
    np.testing.assert_allclose(np.stack(lb), model.forward(prefix + tb)[13:], **TOL)
    # Forking a sequence mid-block and freeing the parent leaves the child intact.
    c = a.fork()
    a.free()
    np.testing.assert_allclose(c.decode(3), model.forward(prefix + ta + [3])[-1], **TOL)
    b.free()
    c.free()


def test_truncate_rewinds(model):
    toks = _toks(30, 30)
    s = model.new_sequence()
    s.prefill(toks)
    # Within the retention margin of the window layers: works, and continues exactly.
    assert s.truncate(28)
    assert len(s) == 28 and s.tokens == toks[:28]
    np.testing.assert_allclose(s.decode(9), model.forward(toks[:28] + [9])[-1], **TOL)
    # Far back: the window layers no longer hold what is needed; nothing changes.
    assert not s.truncate(5)
    assert len(s) == 29
    with pytest.raises(ValueError):
        s.truncate(100)
    s.free()
    with pytest.raises(ValueError):
        s.decode(1)


def test_window_layers_release_blocks():
    m = gptoss.Model.synthetic(tiny_config("tiny"), seed=1, block_size=4, window_retain=0)
    s = m.new_sequence()
    s.prefill(_toks(64, 3))
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 16  # every position of the full-attention layer
    assert st["window_blocks_used"] <= (8 + 4) // 4 + 1  # window 8 plus the partial block
    s.free()
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0


def test_window_layers_share_the_kv_budget():
    # Both groups of layers draw blocks from one budget: a long sequence's full-attention layer
    # can use nearly all of it, its window layer keeping only the last few positions. (Two pools
    # of 20 blocks each, as before, would stop this sequence at 80 tokens.)
    block = 2 * 2 * 4 * 64 * 4  # K and V, 2 KV heads, 4 positions, head_dim 64, fp32: one layer
    kw = dict(seed=6, block_size=4, window_retain=0, max_chunk_tokens=8)
    toks = _toks(128, 6)
    want = gptoss.Model.synthetic("tiny", **kw).forward(toks + [3])[-1]
    m = gptoss.Model.synthetic("tiny", kv_cache_bytes=40 * block, **kw)
    s = m.new_sequence()
    for i in range(0, len(toks), 8):
        s.prefill(toks[i:i + 8])
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 32 and st["full_blocks_max"] == st["window_blocks_max"] == 40
    assert st["window_blocks_used"] <= 3
    np.testing.assert_allclose(s.decode(3), want, **TOL)
    # The budget is still a cap, for both groups together.
    with pytest.raises(MemoryError, match="KV cache"):
        s.prefill(_toks(24, 7))
    assert len(s) == 129


def test_sequences_are_freed_when_collected():
    m = gptoss.Model.synthetic("tiny", seed=2)
    for _ in range(3):
        s = m.new_sequence()
        s.prefill(_toks(20, 4))
        del s
    assert m.kv_cache_stats()["full_blocks_used"] == 0


def test_kv_cache_full_is_a_clean_error():
    m = gptoss.Model.synthetic("tiny", seed=3, block_size=4, kv_cache_bytes=40_000)
    s = m.new_sequence()
    with pytest.raises(MemoryError, match="KV cache"):
        s.prefill(_toks(200, 5))
    assert len(s) == 0  # nothing changed
    s.prefill(_toks(4, 5))  # still usable for what fits
    assert len(s) == 4


def test_concurrent_threads_match_sequential():
    # A server drives one model from several threads: steps are serialised by the engine.
    import threading

    m = gptoss.Model.synthetic(tiny_config("tiny"), seed=12, block_size=4)
    prompts = [_toks(9 + i, 200 + i) for i in range(6)]
    want = [m.forward(p + [7, 8, 9])[-1] for p in prompts]
    got: dict = {}

    def worker(i: int) -> None:
        s = m.new_sequence()
        s.prefill(prompts[i])
        for t in (7, 8):
            s.decode(t)
        got[i] = s.decode(9)
        s.free()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(prompts)):
        np.testing.assert_allclose(got[i], want[i], **TOL)
    assert m.kv_cache_stats()["full_blocks_used"] == 0


def test_int8_decode_is_close_and_prefill_exact():
    from gptoss import _core

    if _core.kernels.simd_level() != "avx512":
        pytest.skip("int8 decode needs AVX-512")
    cfg = tiny_config("tiny4")
    exact = gptoss.Model.synthetic(cfg, seed=21)
    fast = gptoss.Model.synthetic(cfg, seed=21, int8_decode=True)
    assert fast.int8_decode_active and not exact.int8_decode_active
    toks = _toks(40, 23)
    # Steps longer than 8 tokens (prefill) use the exact bf16 weights.
    np.testing.assert_array_equal(fast.forward(toks), exact.forward(toks))
    s_fast, s_exact = fast.new_sequence(), exact.new_sequence()
    s_fast.prefill(toks[:20])
    s_exact.prefill(toks[:20])
    for t in toks[20:]:
        a, b = s_fast.decode(t), s_exact.decode(t)
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert 0 < rel < 3e-2, rel  # approximate, but close (hidden 64: few weights per dot)


def test_model_generate_greedy_matches_forward(model):
    prompt = _toks(6, 40)
    res = model.generate(prompt, max_tokens=5, temperature=0)
    seq = list(prompt)
    for _ in range(5):
        seq.append(int(np.argmax(model.forward(seq)[-1])))
    assert res.tokens == seq[len(prompt):]
    assert res.finish_reason == "length" and res.usage.completion_tokens == 5


def test_ctrl_c_stops_a_long_prefill_between_chunks():
    # 40000 one-token chunks take seconds; the interrupt comes after 0.2 s.
    m = gptoss.Model.synthetic(tiny_config("tiny"), seed=4, max_chunk_tokens=2, max_context=65536)
    toks = _toks(40000, 41)
    s = m.new_sequence()
    n = interrupt_prefill(s, toks, 0.2)
    np.testing.assert_allclose(s.decode(toks[n]), m.forward(toks[: n + 1])[-1], **TOL)


def test_one_engine_class_for_every_backend():
    """The CPU and the (emulated) CUDA engines are one _core.Engine on different runners, and say
    what they can do; a device option or a device-side step on the CPU is a clear error that
    changes nothing."""
    from gptoss import _core as core

    cfg = tiny_config("tiny")
    cpu = gptoss.Model.synthetic(cfg, seed=3)
    e = cpu._engine
    assert type(e) is core.Engine and e.backend == "cpu" and not e.samples_on_device
    assert e.precision == "fp32" and not cpu.samples_on_device
    s = cpu.new_sequence()
    s.prefill(_toks(5, 30))
    before = (e.length(s._sid()), e.kv_stats())
    calls = {"set_tc_split": (False,), "set_cuda_graphs": (True,), "set_profile": (True,), "profile": (),
             "graph_stats": (), "memory_info": (), "synchronize": (), "set_gemm_tiles": (1,), "set_pdl": (True,),
             "set_moe_gemv_tokens": (4,), "moe_gemv_tokens": (), "set_fuse_qkv_rope": (False,),
             "arrival_counters": (), "device_name": (), "moe_gemv_available": ()}
    for name, args in calls.items():
        with pytest.raises(ValueError, match=f"{name}: this engine runs on the cpu"):
            getattr(e, name)(*args)
    one = np.ones(1, np.float32)
    with pytest.raises(ValueError, match="returns logits only"):
        e.step_argmax([s._sid()], [np.array([3], np.int64)])
    with pytest.raises(ValueError, match="returns logits only"):
        e.step_sample([s._sid()], [np.array([3], np.int64)], one, np.zeros(1, np.int32), one, one * 0,
                      one * 0.5, np.zeros(1, np.int32))
    assert (e.length(s._sid()), e.kv_stats()) == before
    if not gptoss.build_info()["cuda_emu"]:
        pytest.skip("this build has no CUDA emulator")
    emu = gptoss.Model.synthetic(cfg, seed=3, device="cuda-emu")
    d = emu._engine
    assert type(d) is core.Engine and d.backend == "cuda_emu" and d.samples_on_device
    assert d.precision == "fp32" and d.int8_decode is False
    d.set_tc_split(False)
    assert d.precision == "bf16"
    d.set_tc_split(True)
    assert set(d.graph_stats()) == {"captured", "launches", "cached"}


def test_sequence_calls_do_not_wait_on_the_gil_of_a_long_step():
    # A multi-chunk step takes the GIL between chunks (to poll Ctrl-C) while it holds the engine
    # lock; a call from another thread must let go of the GIL while it waits for that lock.
    import threading

    m = gptoss.Model.synthetic(tiny_config("tiny"), seed=4, max_chunk_tokens=2)
    e = m._engine
    other = m.new_sequence()
    other.prefill(_toks(3, 40))
    s = m.new_sequence()
    toks = _toks(400, 41)
    done = threading.Event()

    def prefill() -> None:
        s.prefill(toks)
        done.set()

    t = threading.Thread(target=prefill)
    t.start()
    calls = 0
    while not done.is_set() and calls < 20000:
        e.length(other._sid())
        e.kv_stats()
        e.has_sequence(other._sid())
        calls += 1
    t.join(timeout=120)
    assert not t.is_alive(), "the step and the sequence calls deadlocked"
    assert len(s) == 400 and calls > 0
