"""Continuous batching (scheduler.py, llm_engine.py): requests that arrive at different times,
with different lengths and seeds, batched with each other, preempted and resumed, or cancelled,
produce exactly the tokens each produces alone, and leave the KV cache as they found it."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import numpy as np
import pytest

import gptoss
from conftest import tiny_config
from gptoss.errors import CapacityError, ContextOverflowError
from gptoss.llm_engine import LLMEngine
from gptoss.request import FinishReason, Request
from gptoss.runner import EngineRunner
from gptoss.sampling import SamplingParams

BACKENDS = ["cpu", pytest.param("cuda-emu", marks=pytest.mark.slow)]


def _model(device="cpu", **kw):
    if device == "cuda-emu":
        core = pytest.importorskip("gptoss._core")
        if not hasattr(core, "cuda_emu"):
            pytest.skip("no CUDA emulator in this build")
    kw.setdefault("kv_cache_bytes", 8 << 20)
    kw.setdefault("block_size", 4)
    kw.setdefault("window_retain", 2)
    return gptoss.Model.synthetic(tiny_config("tiny"), seed=11, device=device, **kw)


def _toks(n, rng):
    return [int(t) for t in rng.integers(0, 1024, n)]


def _params(i, greedy):
    if greedy:
        return SamplingParams(temperature=0, max_tokens=6 + i % 5, stop_token_ids=())
    return SamplingParams(temperature=1.0, top_p=0.95, seed=100 + i, max_tokens=6 + i % 5,
                          stop_token_ids=(), logprobs=2 if i % 3 == 0 else None)


def _collect(stream):
    """(all tokens, the last output with every chunk's logprobs gathered into it)."""
    toks, lps, last = [], [], None
    for out in stream:
        toks += out.tokens
        lps += out.logprobs or []
        last = out
    if last is not None and last.logprobs is not None:
        last.logprobs = lps
    return toks, last


def _alone(m, prompt, params):
    with LLMEngine(m) as eng:
        return _collect(eng.submit(Request(prompt, params)))


@pytest.mark.parametrize("device", BACKENDS)
@pytest.mark.parametrize("greedy", [True, False])
def test_concurrent_requests_match_each_alone(device, greedy):
    rng = np.random.default_rng(0 if greedy else 1)
    m = _model(device, max_chunk_tokens=24)  # several chunks per long prompt
    n = 7 if device == "cpu" else 4
    prompts = [_toks(int(rng.integers(1, 60)), rng) for _ in range(n)]
    m.clear_prefix_cache()
    want = [_alone(m, p, _params(i, greedy)) for i, p in enumerate(prompts)]
    m.clear_prefix_cache()
    with LLMEngine(m, max_step_tokens=24) as eng:
        streams = []
        for i, p in enumerate(prompts):  # staggered arrivals while others run
            streams.append(eng.submit(Request(p, _params(i, greedy))))
            time.sleep(float(rng.uniform(0, 0.01)))
        got = [_collect(s) for s in streams]
    for (wt, wl), (gt, gl), p in zip(want, got, prompts):
        assert gt == wt
        assert gl.finish_reason == FinishReason.LENGTH and gl.usage.prompt_tokens == len(p)
        if wl.logprobs is not None:
            assert [s.token for s in gl.logprobs] == gt


def test_preemption_under_a_tiny_kv_cache_keeps_every_request_exact():
    rng = np.random.default_rng(2)
    big = _model()
    small = _model(kv_cache_bytes=60 * 4096)  # 60 blocks of 4 positions (both groups)
    assert small.kv_cache_stats()["full_blocks_max"] == 60
    prompts = [_toks(int(rng.integers(10, 40)), rng) for _ in range(8)]
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=24, stop_token_ids=()) for i in range(8)]
    want = [_alone(big, p, q)[0] for p, q in zip(prompts, params)]
    with LLMEngine(small) as eng:
        # All in the same step: together they need more blocks than there are.
        streams = eng.submit_many([Request(p, q) for p, q in zip(prompts, params)])
        got = [_collect(s)[0] for s in streams]
        assert eng.scheduler.num_preemptions > 0  # the budget forced some
    assert got == want
    small.clear_prefix_cache()
    st = small.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0


@pytest.mark.parametrize("device", BACKENDS)
def test_cancellation_at_random_points_leaks_nothing(device):
    seed = random.randrange(1 << 30)
    rng = np.random.default_rng(seed)
    m = _model(device, max_chunk_tokens=16)
    keep = _toks(30, rng)
    want, _ = _alone(m, keep, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=()))
    m.clear_prefix_cache()
    with LLMEngine(m, max_step_tokens=16) as eng:
        survivor = eng.submit(Request(keep, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=())))
        victims = [eng.submit(Request(_toks(int(rng.integers(1, 80)), rng),
                                      SamplingParams(seed=i, max_tokens=40, stop_token_ids=())))
                   for i in range(6 if device == "cpu" else 3)]
        for v in victims:  # some mid-prefill, some mid-decode, some before they start
            time.sleep(float(rng.uniform(0, 0.02 if device == "cpu" else 0.2)))
            v.cancel()
        outs = [_collect(v)[1] for v in victims]
        assert _collect(survivor)[0] == want, seed
    assert all(o.finished and o.finish_reason in (FinishReason.CANCELLED, FinishReason.LENGTH) for o in outs)
    m.clear_prefix_cache()
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0, seed
    assert m.prefix_cache_stats()["kept_blocks"] == 0


def test_breaking_out_of_a_stream_cancels_it():
    m = _model()
    with LLMEngine(m) as eng:
        s = eng.submit(Request([1, 2, 3], SamplingParams(max_tokens=500, stop_token_ids=())))
        for out in s:
            break
        deadline = time.time() + 10
        while eng.num_unfinished() and time.time() < deadline:
            time.sleep(0.01)
        assert eng.num_unfinished() == 0
    st = m.kv_cache_stats()
    assert st["full_blocks_used"] == 0


def test_bad_requests_are_refused_before_they_are_queued():
    m = _model(kv_cache_bytes=40 * 4096)
    with LLMEngine(m) as eng:
        with pytest.raises(ValueError, match="empty prompt"):
            eng.submit(Request([]))
        with pytest.raises(ValueError, match="out of range"):
            eng.submit(Request([1, 5000]))
        with pytest.raises(ValueError, match="max_tokens"):
            eng.submit(Request([1], SamplingParams(max_tokens=0)))
        with pytest.raises(ContextOverflowError, match="context"):
            eng.submit(Request([1] * (m.max_context + 1)))
        with pytest.raises(CapacityError, match="kv_cache_bytes"):
            eng.submit(Request([1] * 200))  # 50 blocks of full layers alone: never fits in 40
        with pytest.raises(ValueError, match="tokenizer"):
            eng.submit(Request([1], SamplingParams(stop=["x"])))
        assert eng.num_unfinished() == 0 and not eng.scheduler.has_work()
        toks, last = _collect(eng.submit(Request([1, 2], SamplingParams(max_tokens=3))))
        assert len(toks) == 3  # still serving


def test_usage_reports_prefix_cache_hits():
    rng = np.random.default_rng(3)
    m = _model()
    system = _toks(41, rng)
    with LLMEngine(m) as eng:
        _, first = _collect(eng.submit(Request(system + [1, 2], SamplingParams(max_tokens=2))))
        _, second = _collect(eng.submit(Request(system + [3, 4], SamplingParams(max_tokens=2))))
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == 41  # the whole shared system prompt


def test_stop_rules_and_text():
    from fixtures_vocab import o200k_vocab_file  # noqa: F401
    tok_mod = pytest.importorskip("gptoss.tokenizer")
    del tok_mod
    m = _model()
    with LLMEngine(m) as eng:
        # A stop token ends the request and is reported, never fed back.
        greedy = _collect(eng.submit(Request([5, 6, 7], SamplingParams(temperature=0, max_tokens=8,
                                                                       stop_token_ids=()))))[0]
        stop_at = greedy[3]
        toks, last = _collect(eng.submit(Request([5, 6, 7], SamplingParams(temperature=0, max_tokens=8,
                                                                           stop_token_ids=(stop_at,)))))
        first = greedy.index(stop_at)
        assert toks == greedy[:first + 1] and last.finish_reason == FinishReason.STOP
        assert last.stop_reason == stop_at


def test_async_streams_from_an_event_loop():
    m = _model()
    rng = np.random.default_rng(4)
    prompts = [_toks(int(rng.integers(1, 30)), rng) for _ in range(5)]
    want = [_alone(m, p, SamplingParams(seed=i, max_tokens=24, stop_token_ids=()))[0] for i, p in enumerate(prompts)]

    stepping, beat_in_step, waited = threading.Event(), threading.Event(), []

    class WaitsForTheLoop(EngineRunner):
        # Each step waits until the event loop has run during it: a step run on the loop would
        # wait in vain.
        def execute(self, items):
            beat_in_step.clear()
            stepping.set()
            waited.append(beat_in_step.wait(10))
            stepping.clear()
            return super().execute(items)

    async def main():
        eng = LLMEngine(m, runner=WaitsForTheLoop(m))
        done = asyncio.Event()

        async def heartbeat():
            while not done.is_set():
                if stepping.is_set():
                    beat_in_step.set()
                await asyncio.sleep(0.001)

        async def one(i, p):
            toks = []
            async for out in eng.submit_async(Request(p, SamplingParams(seed=i, max_tokens=24, stop_token_ids=()))):
                toks += out.tokens
            return toks

        hb = asyncio.create_task(heartbeat())
        got = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        done.set()
        await hb
        eng.close()
        return got

    assert asyncio.run(main()) == want
    assert len(waited) >= 24 and all(waited)  # the loop ran during every step
    with pytest.raises(TypeError, match="async for"):
        async def wrong():
            eng = LLMEngine(m)
            s = eng.submit_async(Request([1], SamplingParams(max_tokens=1)))
            try:
                list(s)
            finally:
                eng.close()
        asyncio.run(wrong())


def test_many_threads_submit_at_once():
    m = _model()
    rng = np.random.default_rng(5)
    prompts = [_toks(int(rng.integers(1, 20)), rng) for _ in range(12)]
    want = [_alone(m, p, SamplingParams(temperature=0, max_tokens=5, stop_token_ids=()))[0] for p in prompts]
    got = [None] * len(prompts)
    with LLMEngine(m, max_num_seqs=4) as eng:  # more requests than may run at once
        def worker(i):
            got[i] = _collect(eng.submit(Request(prompts[i], SamplingParams(temperature=0, max_tokens=5,
                                                                            stop_token_ids=()))))[0]
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert got == want
