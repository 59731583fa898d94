"""The continuous-batching engine (python/gptoss/llm_engine.py) under offered load.

    python bench/bench_scheduler.py overhead                 # the scheduler alone, no model
    python bench/bench_scheduler.py load [--checkpoint DIR]  # synthetic full-size 20b by default

overhead: a runner that returns at once, so only the engine's own work is timed: per step at
batch 1 and per sequence at batch 64 (goals: <= 50 us and <= 5 us, so that it never holds back a
GPU decoding at ~1 ms a step).

load (all on one model, in one run):
  - concurrency 1, 4, 8, 16, 32 (--concurrency): that many streams at once, each request with a
    prompt of --prompt-min..--prompt-max random tokens and --new-min..--new-max new tokens; a new
    request starts as soon as one ends. Aggregate output tokens/s, time to first token and
    inter-token latency (p50, p99);
  - the largest concurrency's streams all decoding in the engine, against a static batch of that
    size stepped by hand (Model.step + argmax) in the same run (goal: >= 90%);
  - a long prompt arriving while 8 streams decode: their inter-token p99 before and during it,
    against the time of one prefill chunk;
  - a 10-turn chat through the prefix cache: prompt tokens computed per turn vs the prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from gptoss.config import preset
from gptoss.llm_engine import LLMEngine
from gptoss.request import Request
from gptoss.sampling import Sample, SamplingParams


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# ---------------------------------------------------------------------------- overhead
class _NullSeq:
    def __len__(self):
        return 0

    def free(self):
        pass


class NullModel:
    """Enough of a model for the engine (gptoss.runner.StepModel, less the steps: NullRunner runs
    them): gpt-oss-20b's shape, sequences that hold nothing, an endless KV cache."""

    max_context = 1 << 30
    block_size, window_retain, max_chunk_tokens = 16, 256, 2048
    device, samples_on_device = "cpu", False
    config = preset("gpt-oss-20b")

    def new_sequence(self, prefix=None):
        return _NullSeq()

    def kv_cache_stats(self):
        return dict(full_blocks_max=1 << 40, full_blocks_used=0, window_blocks_used=0)


class NullRunner:
    def execute(self, items):
        return [Sample(7) if it.sample else None for it in items]


def overhead(steps: int) -> dict:
    res = {}
    for batch in (1, 64):
        eng = LLMEngine(NullModel(), runner=NullRunner())
        n = max(10, steps // batch) if batch > 1 else steps
        p = SamplingParams(temperature=0, max_tokens=n, stop_token_ids=())
        t0 = time.perf_counter()
        streams = eng.submit_many([Request([1, 2, 3], p) for _ in range(batch)])
        for s in streams:
            for _ in s:
                pass
        wall = time.perf_counter() - t0
        st = eng.stats
        eng.close()
        per_step = st.loop_seconds / st.steps
        # wall: everything per step, the client threads reading their streams included (the GIL)
        res[f"batch{batch}"] = dict(steps=st.steps, us_per_step=per_step * 1e6, us_per_seq=per_step / batch * 1e6,
                                    wall_us_per_step=wall / st.steps * 1e6)
        print(f"batch {batch:3d}: {st.steps} steps, engine work {per_step * 1e6:7.1f} us per step, "
              f"{per_step / batch * 1e6:5.2f} us per sequence (wall with the stream readers: "
              f"{wall / st.steps * 1e6:7.1f} us per step, {wall / st.steps / batch * 1e6:5.2f} us per sequence)")
    return res


# ---------------------------------------------------------------------------- load
def offered_load(m, conc: int, n_requests: int, args, rng) -> dict:
    eng = LLMEngine(m, max_num_seqs=max(conc, 1))
    ttft, itl, lock = [], [], threading.Lock()
    out_tokens = 0

    def one(i):
        nonlocal out_tokens
        plen = int(rng.integers(args.prompt_min, args.prompt_max + 1))
        new = int(rng.integers(args.new_min, args.new_max + 1))
        prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, plen)]
        t0 = time.perf_counter()
        last = None
        mine = []
        for out in eng.submit(Request(prompt, SamplingParams(seed=i, max_tokens=new, stop_token_ids=()))):
            now = time.perf_counter()
            if out.tokens:
                mine.append(now - (last if last is not None else t0))
                last = now
        with lock:
            ttft.append(mine[0])
            itl.extend(mine[1:])
            out_tokens += len(mine)

    todo = list(range(n_requests))
    tl = threading.Lock()

    def worker():
        while True:
            with tl:
                if not todo:
                    return
                i = todo.pop()
            one(i)

    t0 = time.perf_counter()
    ws = [threading.Thread(target=worker) for _ in range(conc)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    wall = time.perf_counter() - t0
    eng.close()
    r = dict(concurrency=conc, requests=n_requests, output_tok_s=out_tokens / wall, ttft_p50=pct(ttft, 50),
             ttft_p99=pct(ttft, 99), itl_p50=pct(itl, 50), itl_p99=pct(itl, 99), preemptions=eng.scheduler.num_preemptions)
    print(f"  concurrency {conc:3d}: {r['output_tok_s']:7.2f} output tok/s, TTFT p50 {r['ttft_p50']:.2f} s p99 "
          f"{r['ttft_p99']:.2f} s, ITL p50 {r['itl_p50'] * 1e3:.0f} ms p99 {r['itl_p99'] * 1e3:.0f} ms")
    return r


def static_batch(m, batch: int, steps: int, rng) -> float:
    seqs = [m.new_sequence() for _ in range(batch)]
    outs = m.step([(s, [int(t) for t in rng.integers(0, m.config.vocab_size, 64)]) for s in seqs])
    t0 = time.perf_counter()
    for _ in range(steps):
        outs = m.step([(s, [int(np.argmax(o))]) for s, o in zip(seqs, outs)])
    dt = time.perf_counter() - t0
    for s in seqs:
        s.free()
    return batch * steps / dt


def steady_decode(m, batch: int, new_tokens: int, rng) -> float:
    """Output tok/s of the engine while `batch` streams all decode (the window between the last
    first token and the first last token): what a static batch's step loop is compared with."""
    eng = LLMEngine(m, max_num_seqs=batch)
    stamps: list[list[float]] = [[] for _ in range(batch)]

    def one(i):
        prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, 64)]
        for out in eng.submit(Request(prompt, SamplingParams(seed=i, max_tokens=new_tokens, stop_token_ids=()))):
            if out.tokens:
                stamps[i].append(time.perf_counter())

    ts = [threading.Thread(target=one, args=(i,)) for i in range(batch)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    eng.close()
    lo = max(s[0] for s in stamps)
    hi = min(s[-1] for s in stamps)
    n = sum(sum(1 for x in s if lo < x <= hi) for s in stamps)
    return n / (hi - lo)


def long_prompt_interference(m, args, rng) -> dict:
    eng = LLMEngine(m)
    gaps: dict[int, list] = {}
    marks = {}
    stop = threading.Event()

    def stream(i):
        prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, 64)]
        last = None
        for out in eng.submit(Request(prompt, SamplingParams(seed=i, max_tokens=10 ** 6, stop_token_ids=()))):
            now = time.perf_counter()
            if last is not None:
                gaps.setdefault(i, []).append((now, now - last))
            last = now
            if stop.is_set():
                break

    ts = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    time.sleep(args.settle)
    marks["long_start"] = time.perf_counter()
    long_prompt = [int(t) for t in rng.integers(0, m.config.vocab_size, args.long_prompt)]
    first = None
    for out in eng.submit(Request(long_prompt, SamplingParams(seed=99, max_tokens=1))):
        if out.tokens and first is None:
            first = time.perf_counter()
    marks["long_end"] = first
    time.sleep(1.0)
    stop.set()
    for t in ts:
        t.join()
    eng.close()
    before = [g for v in gaps.values() for (t, g) in v if t < marks["long_start"]]
    during = [g for v in gaps.values() for (t, g) in v if marks["long_start"] <= t <= marks["long_end"]]
    r = dict(itl_p99_before=pct(before, 99), itl_p99_during=pct(during, 99), itl_max_during=max(during or [0]),
             long_prefill_s=marks["long_end"] - marks["long_start"], chunk_tokens=m.max_chunk_tokens)
    print(f"  8 decoding streams, a {args.long_prompt}-token prompt arrives: ITL p99 {r['itl_p99_before'] * 1e3:.0f} ms "
          f"before, {r['itl_p99_during'] * 1e3:.0f} ms during (max {r['itl_max_during'] * 1e3:.0f} ms); the prompt "
          f"took {r['long_prefill_s']:.1f} s in chunks of {m.max_chunk_tokens}")
    return r


def multi_turn(m, rng, turns: int = 10) -> list:
    eng = LLMEngine(m)
    history: list[int] = [int(t) for t in rng.integers(0, m.config.vocab_size, 200)]  # "system prompt"
    rows = []
    for turn in range(turns):
        history += [int(t) for t in rng.integers(0, m.config.vocab_size, 30)]  # the user's message
        reply, last = [], None
        for out in eng.submit(Request(list(history), SamplingParams(seed=turn, max_tokens=40, stop_token_ids=()))):
            reply += out.tokens
            last = out
        rows.append(dict(turn=turn + 1, prompt=len(history), computed=len(history) - last.usage.cached_tokens))
        history += reply
    eng.close()
    print("  10-turn chat, prompt tokens computed / prompt length per turn: "
          + ", ".join(f"{r['computed']}/{r['prompt']}" for r in rows))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["overhead", "load"])
    ap.add_argument("--steps", type=int, default=20000, help="overhead: steps at batch 1 (default 20000)")
    ap.add_argument("--checkpoint", help="load: checkpoint folder (default: the synthetic 20b of bench_cpu.py)")
    ap.add_argument("--workdir", default="/tmp", help="where bench_cpu.py keeps its synthetic checkpoint")
    ap.add_argument("--concurrency", default="1,4,8,16,32", help="load: comma-separated (default 1,4,8,16,32)")
    ap.add_argument("--requests-per-stream", type=float, default=1.5,
                    help="load: requests per concurrent stream (default 1.5)")
    ap.add_argument("--prompt-min", type=int, default=64)
    ap.add_argument("--prompt-max", type=int, default=2048)
    ap.add_argument("--new-min", type=int, default=128)
    ap.add_argument("--new-max", type=int, default=256)
    ap.add_argument("--long-prompt", type=int, default=2048)
    ap.add_argument("--steady-tokens", type=int, default=24, help="decode steps of the steady-state comparison")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds the 8 streams decode before the long prompt")
    ap.add_argument("--parts", default="sweep,steady,interference,multiturn",
                    help="load: which parts to run, comma-separated (default: all four, in one process)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.what == "overhead":
        res = overhead(args.steps)
    else:
        import gptoss

        ckpt = args.checkpoint or os.path.join(args.workdir, "gptoss-bench-gpt-oss-20b")
        if not os.path.exists(os.path.join(ckpt, "config.json")):
            print(f"error: no checkpoint at {ckpt}: run bench/bench_cpu.py once (it writes it) or pass "
                  "--checkpoint", file=sys.stderr)
            return 1
        m = gptoss.Model(ckpt, threads=args.threads, progress=True)
        rng = np.random.default_rng(0)
        conc = [int(c) for c in args.concurrency.split(",") if c]
        parts = set(args.parts.split(","))
        res = {}
        if "sweep" in parts:
            res["load"] = []
            print("offered load:")
            for c in conc:
                m.clear_prefix_cache()
                res["load"].append(offered_load(m, c, max(1, int(round(c * args.requests_per_stream))), args, rng))
        if "steady" in parts:
            b = max(conc)
            m.clear_prefix_cache()
            eng_tps = steady_decode(m, b, args.steady_tokens, rng)
            static_tps = static_batch(m, b, args.steady_tokens, rng)
            res["steady"] = {"batch": b, "engine_tok_s": eng_tps, "static_tok_s": static_tps}
            print(f"  {b} streams all decoding: the engine {eng_tps:.2f} tok/s, a static batch of {b} stepped by "
                  f"hand (Model.step + argmax) {static_tps:.2f} tok/s: {eng_tps / static_tps:.1%}")
        if "interference" in parts:
            m.clear_prefix_cache()
            res["interference"] = long_prompt_interference(m, args, rng)
        if "multiturn" in parts:
            m.clear_prefix_cache()
            res["multi_turn"] = multi_turn(m, rng)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
