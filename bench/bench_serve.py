"""Any OpenAI-compatible server under concurrent streams: output tokens/s, time to first token and
inter-token latency (p50, p99).

    python bench/bench_serve.py --base-url http://127.0.0.1:8000 --model NAME --concurrency 1,8,32

For each concurrency N, N client streams run at once, each sending its next request as soon as
its last one ended, until --requests-per-stream requests per stream are done. Every request
streams (SSE) a random prompt of --prompt-tokens (words that tokenize about one token each) and
asks for --max-tokens tokens. The default endpoint is /v1/completions (raw text: the same work on
every server, no chat template); --endpoint chat uses /v1/chat/completions. Run it against
`gptoss serve` and against llama.cpp's `llama-server` (bench/llamacpp.md) on the same checkpoint.
Timings are the client's: what a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import httpx2 as httpx

WORDS = ("the of and to in is was for on that with as by at from it his an were are which this be or "
         "has had not first one their its new after but who they been have her she two").split()


def pct(xs: list, q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def one(client: httpx.AsyncClient, args, rng: random.Random, out: dict) -> None:
    prompt = " ".join(rng.choice(WORDS) for _ in range(args.prompt_tokens))
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": 1.0, "stream": True,
            "stream_options": {"include_usage": True}, "seed": rng.randrange(1 << 30)}
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    if args.ignore_eos:
        body["ignore_eos"] = True  # llama-server: generate exactly max_tokens
    t0 = time.perf_counter()
    last, n, usage = None, 0, None
    async with client.stream("POST", args.base_url + path, json=body, headers=args.headers) as r:
        if r.status_code != 200:
            out["errors"].append(r.status_code)
            await r.aread()
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            usage = ch.get("usage") or usage
            choices = ch.get("choices") or []
            if not choices:
                continue
            c = choices[0]
            piece = c.get("text") if "text" in c else (c.get("delta") or {}).get("content")
            reasoning = (c.get("delta") or {}).get("reasoning_content") or (c.get("delta") or {}).get("reasoning")
            if not piece and not reasoning:
                continue
            now = time.perf_counter()
            if last is None:
                out["ttft"].append(now - t0)
            else:
                out["itl"].append(now - last)
            last = now
            n += 1
    # A chunk may carry several tokens: count tokens from the usage the server reports.
    out["chunks"] += n
    out["tokens"] += usage["completion_tokens"] if usage and usage.get("completion_tokens") else n
    if usage and usage.get("prompt_tokens"):
        out["prompt_tokens"].append(usage["prompt_tokens"])
    out["done"] += 1


async def run_level(args, conc: int) -> dict:
    out = {"ttft": [], "itl": [], "chunks": 0, "tokens": 0, "prompt_tokens": [], "done": 0, "errors": []}
    rng = random.Random(conc)
    limits = httpx.Limits(max_connections=conc + 8, max_keepalive_connections=conc + 8)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        async def stream() -> None:
            for _ in range(args.requests_per_stream):
                await one(client, args, rng, out)

        t0 = time.perf_counter()
        await asyncio.gather(*(stream() for _ in range(conc)))
        wall = time.perf_counter() - t0
    return dict(concurrency=conc, requests=out["done"], errors=out["errors"], wall_s=wall,
                output_tokens=out["tokens"], mean_prompt_tokens=statistics.fmean(out["prompt_tokens"] or [0]),
                tokens_per_chunk=out["tokens"] / max(out["chunks"], 1),
                output_tok_s=out["tokens"] / wall, ttft_p50=pct(out["ttft"], 50), ttft_p99=pct(out["ttft"], 99),
                itl_p50=pct(out["itl"], 50), itl_p99=pct(out["itl"], 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    ap.add_argument("--model", required=True, help="the served model name")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated (default 1,8,32)")
    ap.add_argument("--requests-per-stream", type=int, default=2, help="default 2")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="default 128")
    ap.add_argument("--max-tokens", type=int, default=64, help="default 64")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos (llama-server's extension)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    args.base_url = args.base_url.rstrip("/")
    args.headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    results = []
    for conc in [int(c) for c in args.concurrency.split(",") if c]:
        r = asyncio.run(run_level(args, conc))
        results.append(r)
        print(f"concurrency {conc:3d}: {r['output_tok_s']:8.2f} output tok/s  TTFT p50 {r['ttft_p50']:.3f} s "
              f"p99 {r['ttft_p99']:.3f} s  ITL p50 {r['itl_p50'] * 1e3:.1f} ms p99 {r['itl_p99'] * 1e3:.1f} ms  "
              f"({r['requests']} requests of {r['mean_prompt_tokens']:.0f} prompt tokens, {r['output_tokens']} "
              f"tokens, {r['tokens_per_chunk']:.2f} per chunk, "
              f"{len(r['errors'])} errors, {r['wall_s']:.1f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
