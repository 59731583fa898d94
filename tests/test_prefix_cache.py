"""The prefix cache: sequences started with `new_sequence(prefix=...)` reuse the KV blocks of
earlier sequences, exactly (token for token along the chain of blocks), and every path gives
the logits of a cold run. The pool's counters show nothing leaks and eviction makes room."""

from __future__ import annotations

import random

import numpy as np
import pytest

import gptoss
from conftest import tiny_config
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401

TOL = dict(rtol=0, atol=2e-5)
# The CUDA kernels sum in other orders than the CPU's (tests/test_cuda.py bounds them against the
# CPU); a wrong block would be off by O(1), so this still tells hits from misses.
EMU_TOL = dict(rtol=0, atol=2e-4)
BACKENDS = ["cpu", pytest.param("cuda-emu", marks=pytest.mark.slow)]


def _toks(n: int, rng: np.random.Generator, vocab: int = 1024) -> list[int]:
    return [int(t) for t in rng.integers(0, vocab, n)]


def _model(device: str = "cpu", **kw) -> gptoss.Model:
    if device == "cuda-emu":
        core = pytest.importorskip("gptoss._core")
        if not hasattr(core, "cuda_emu"):
            pytest.skip("no CUDA emulator in this build")
    kw.setdefault("block_size", 4)
    kw.setdefault("window_retain", 2)
    kw.setdefault("kv_cache_bytes", 8 << 20)  # the CUDA default would take most of the device
    return gptoss.Model.synthetic(tiny_config("tiny"), seed=3, device=device, **kw)


def _sized(device: str, blocks: int, **kw) -> gptoss.Model:
    """A model whose KV cache holds exactly `blocks` blocks."""
    probe = _model(device, kv_cache_bytes=1 << 20)
    per_block = -(-(1 << 20) // probe.kv_cache_stats()["full_blocks_max"])
    m = _model(device, kv_cache_bytes=blocks * per_block, **kw)
    assert m.kv_cache_stats()["full_blocks_max"] == blocks
    return m


def _run(m: gptoss.Model, prompt: list[int]) -> tuple[np.ndarray, int]:
    s = m.new_sequence(prefix=prompt)
    reused = len(s)
    assert s.tokens == prompt[:reused]
    out = s.prefill(prompt[reused:])
    s.free()
    return out, reused


def _cold(m: gptoss.Model, prompt: list[int]) -> np.ndarray:
    s = m.new_sequence()
    out = s.prefill(prompt)
    s.free()
    return out


@pytest.mark.parametrize("device", BACKENDS)
def test_hit_is_bitwise_a_cold_run_with_the_same_steps(device):
    rng = np.random.default_rng(0)
    m = _model(device)
    p = _toks(37, rng)
    s = m.new_sequence()
    s.prefill(p[:24])
    s.free()
    out, reused = _run(m, p)
    assert reused == 24
    cold = _model(device, prefix_cache=False)
    c = cold.new_sequence()
    c.prefill(p[:24])
    np.testing.assert_array_equal(out, c.prefill(p[24:]))
    np.testing.assert_allclose(out, _cold(cold, p), **(TOL if device == "cpu" else EMU_TOL))
    assert cold.new_sequence(prefix=p).tokens == []  # off: nothing is reused


def test_reuse_extends_to_the_first_differing_token():
    rng = np.random.default_rng(1)
    m = _model()
    a = _toks(49, rng)  # 12 blocks of 4 and one token (only whole blocks are cached)
    _run(m, a)
    for cut in (0, 1, 3, 4, 21, 33, 47):  # inside blocks and at their boundaries
        b = a[:cut] + _toks(9, rng)
        if b[cut] == a[cut]:
            continue
        out, reused = _run(m, b)
        assert reused == cut, cut
        np.testing.assert_allclose(out, _cold(m, b), **TOL)
    out, reused = _run(m, a)  # the same prompt again: everything but the last token
    assert reused == 48
    np.testing.assert_allclose(out, _cold(m, a), **TOL)
    st = m.prefix_cache_stats()
    assert st["hit_tokens"] >= 21 + 33 + 47 + 48 and st["query_tokens"] > st["hit_tokens"]


def test_conversation_turn_reuses_up_to_the_dropped_analysis(tokenizer):  # noqa: F811
    from gptoss import harmony
    from gptoss.chat import build_messages
    from gptoss.config import preset
    from gptoss.generate import common_prefix

    m = gptoss.Model.synthetic(preset("tiny", vocab_size=201088), seed=4, block_size=16)
    turn1 = build_messages([{"role": "user", "content": "What is the capital of France? Think first."}])
    p1 = harmony.render(turn1, for_completion=True, tokenizer=tokenizer)
    reply = tokenizer.encode("<|channel|>analysis<|message|>The user asks a capital. It is Paris, clearly; "
                             "answer briefly.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>",
                             allowed_special="all")
    s = m.new_sequence(prefix=p1)
    s.prefill(p1[len(s):] + reply[:-1])  # the reply as the model wrote it (<|return|> is not fed)
    s.free()
    msgs = harmony.parse(reply, role="assistant", tokenizer=tokenizer)
    turn2 = build_messages([{"role": "user", "content": "What is the capital of France? Think first."},
                            *msgs, {"role": "user", "content": "And of Italy?"}])
    p2 = harmony.render(turn2, for_completion=True, tokenizer=tokenizer)
    want = common_prefix(p1 + reply[:-1], p2)  # harmony drops the analysis: they differ there
    assert want >= len(p1) - 2
    out, reused = _run(m, p2)
    assert reused == want
    np.testing.assert_allclose(out, _cold(m, p2), **TOL)


def test_shared_system_prompt_and_n_samples():
    rng = np.random.default_rng(2)
    m = _model()
    system = _toks(30, rng)
    first = system + _toks(5, rng)
    _run(m, first)
    for _ in range(3):  # other users, same system prompt
        q = system + _toks(6, rng)
        out, reused = _run(m, q)
        assert reused >= 30 and (reused == 30 or q[30] == first[30])
        np.testing.assert_allclose(out, _cold(m, q), **TOL)
    # n samples of one prompt, all alive at once: each holds all but the last token.
    p = _toks(25, rng)
    _run(m, p)
    seqs = [m.new_sequence(prefix=p) for _ in range(4)]
    assert [len(s) for s in seqs] == [24] * 4
    outs = m.step([(s, p[24:]) for s in seqs])
    for o in outs:
        np.testing.assert_allclose(o, outs[0], **TOL)
    nxt = [3, 8, 1, 9]
    outs = m.step([(s, [t]) for s, t in zip(seqs, nxt)])  # they diverge: copy-on-write
    for o, t in zip(outs, nxt):
        np.testing.assert_allclose(o, _cold(m, p + [t]), **TOL)
    for s in seqs:
        s.free()


def test_cached_blocks_are_never_written_in_place():
    rng = np.random.default_rng(3)
    m = _model()
    a = _toks(40, rng)
    _run(m, a)
    b = m.new_sequence(prefix=a[:18] + [7, 7])  # ends inside a cached block
    assert len(b) == 18
    b.prefill([7, 7] + _toks(10, rng))  # writes into a copy of that block
    out, reused = _run(m, a)  # the cached blocks still hold a's keys and values
    assert reused == 39
    np.testing.assert_allclose(out, _cold(m, a), **TOL)
    b.free()


def test_window_layers_need_their_recent_blocks():
    rng = np.random.default_rng(4)
    # Window 8, retention 2, blocks of 4: a sequence releases its window blocks as it grows,
    # and they stay cached only while the pool has room.
    m = _sized("cpu", 48)
    a = _toks(70, rng)
    out, reused = _run(m, a)
    assert reused == 0
    out, reused = _run(m, a)
    assert reused == 68  # 17 whole blocks
    np.testing.assert_allclose(out, _cold(m, a), **TOL)
    m.clear_prefix_cache()
    s = m.new_sequence()
    s.prefill(a[:40])
    for t in a[40:70]:  # 17 full blocks held; the early window blocks released (kept)
        s.decode(t)
    for _ in range(3):  # room for these comes from the oldest kept blocks: those window blocks
        other = m.new_sequence()
        other.prefill(_toks(20, rng))
        other.free()
    # a's first 44 tokens are all in full blocks that s holds, but the window blocks the next
    # position needs are gone: the engine continues from where they exist, here the start.
    b = a[:44] + [1, 2, 3]
    out, reused = _run(m, b)
    assert reused < 36
    np.testing.assert_allclose(out, _cold(m, b), **TOL)
    s.free()


@pytest.mark.parametrize("device", BACKENDS)
def test_eviction_makes_room_least_recently_used_first(device):
    rng = np.random.default_rng(5)
    # 24 blocks in all; each 20-token sequence takes 5 full and up to 5 window blocks.
    m = _sized(device, 24)
    prompts = [_toks(20, rng) for _ in range(6)]
    for p in prompts:  # far more than fits: earlier prefixes are given up, nothing fails
        out, _ = _run(m, p)
        np.testing.assert_allclose(out, _cold(m, p), **(TOL if device == "cpu" else EMU_TOL))
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0
    assert m.prefix_cache_stats()["kept_blocks"] <= 24
    _, reused = _run(m, prompts[-1])
    assert reused == 19  # the latest is cached
    _, reused = _run(m, prompts[0])
    assert reused == 0  # the first was evicted
    # A sequence that needs the whole pool still runs (every cached block is given up).
    s = m.new_sequence()
    s.prefill(_toks(44, rng))
    s.free()
    m.clear_prefix_cache()
    assert m.prefix_cache_stats()["kept_blocks"] == 0
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0


@pytest.mark.parametrize("device", BACKENDS)
def test_random_operations_match_cold_runs_and_leak_nothing(device):
    seed = random.randrange(1 << 30)
    rng = np.random.default_rng(seed)
    tol = TOL if device == "cpu" else EMU_TOL
    m = _sized(device, 40)
    ref = _model(device, prefix_cache=False)
    base = [_toks(int(rng.integers(5, 30)), rng) for _ in range(4)]
    live: list[tuple[gptoss.Sequence, list[int]]] = []
    steps = 40 if device == "cpu" else 12
    for _ in range(steps):
        op = rng.integers(0, 6)
        if op <= 1 or not live:  # a new prompt sharing a random prefix of an earlier one
            b = base[int(rng.integers(0, len(base)))]
            p = b[: int(rng.integers(0, len(b) + 1))] + _toks(int(rng.integers(1, 8)), rng)
            try:
                s = m.new_sequence(prefix=p)
                out = s.prefill(p[len(s):])
            except MemoryError:
                s.free()
                continue
            np.testing.assert_allclose(out, _cold(ref, p), **tol, err_msg=f"seed {seed}")
            live.append((s, p))
            base.append(p)
        elif op == 2:  # decode
            s, p = live[int(rng.integers(0, len(live)))]
            t = int(rng.integers(0, 1024))
            try:
                out = s.decode(t)
            except MemoryError:
                continue
            p.append(t)
            np.testing.assert_allclose(out, _cold(ref, p), **tol, err_msg=f"seed {seed}")
        elif op == 3:  # free
            s, _ = live.pop(int(rng.integers(0, len(live))))
            s.free()
        elif op == 4:  # fork
            s, p = live[int(rng.integers(0, len(live)))]
            live.append((s.fork(), list(p)))
        else:  # rewind
            s, p = live[int(rng.integers(0, len(live)))]
            n = int(rng.integers(0, len(p) + 1))
            if s.truncate(n):
                del p[n:]
        for s, p in live:
            assert s.tokens == p
    for s, _ in live:
        s.free()
    m.clear_prefix_cache()
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0, seed
    assert m.prefix_cache_stats()["kept_blocks"] == 0
