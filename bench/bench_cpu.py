"""CPU decode / prefill benchmark on a full-size synthetic checkpoint, against the machine's limits.

    python bench/bench_cpu.py [--checkpoint DIR] [--preset gpt-oss-20b] [--decode 32] [--prompt 512]

Without --checkpoint it writes a random checkpoint in the real layout (13.8 GB for 20b, 65 GB for
120b) to /tmp/gptoss-bench-<preset> once and reuses it (it checks the free disk space first;
--workdir puts it elsewhere; delete the folder to reclaim the space). Random weights cost exactly the bytes and FLOPs
of real ones. Reports, in one run:
  - memory read bandwidth (all threads, 1 GiB streaming sum) and fp32 FMA peak;
  - batch-1 decode tokens/s, the bytes one decode step must read, and the fraction of the
    measured bandwidth that reaches (the roofline for decode);
  - prefill tokens/s for a --prompt-token prompt, its GFLOP/s and the fraction of peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np

import gptoss
from gptoss import _core
from gptoss.config import ModelConfig, preset


def decode_bytes(c: ModelConfig, context: int) -> int:
    """Bytes one batch-1 decode step must read: the active weights as stored plus the KV cache."""
    H, I, E, k = c.hidden_size, c.intermediate_size, c.num_experts, c.experts_per_token
    Q, KV = c.q_dim, c.kv_dim
    attn = 2 * (H * (Q + 2 * KV) + (Q + 2 * KV)) + 2 * (Q * H + H) + 2 * c.num_attention_heads
    norms = 2 * 2 * H
    router = 2 * (E * H + E)
    mlp1 = 2 * I * H // 32 * 17 + 2 * 2 * I  # blocks + scales + bias, per expert
    mlp2 = H * I // 32 * 17 + 2 * H
    per_layer = attn + norms + router + k * (mlp1 + mlp2)
    kv = 0
    for layer in range(c.num_hidden_layers):
        keys = min(context, c.sliding_window) if c.is_sliding(layer) else context
        kv += 2 * keys * KV * 4  # fp32 K and V
    return c.num_hidden_layers * per_layer + kv + 2 * H * c.vocab_size + 2 * H  # + unembedding, embedding row


def prefill_flops(c: ModelConfig, n: int) -> float:
    """FLOPs of a prefill of n tokens (logits for the last token only)."""
    H, I, k = c.hidden_size, c.intermediate_size, c.experts_per_token
    Q, KV = c.q_dim, c.kv_dim
    dense = H * (Q + 2 * KV) + Q * H + c.num_experts * H + k * (2 * I * H + H * I)
    f = 2.0 * dense * n * c.num_hidden_layers
    for layer in range(c.num_hidden_layers):  # QK^T and PV over the keys each query sees
        keys = sum(min(i + 1, c.sliding_window) if c.is_sliding(layer) else i + 1 for i in range(n))
        f += 2 * 2 * c.num_attention_heads * c.head_dim * keys
    return f + 2.0 * H * c.vocab_size


def timed_decode(seq, logits: np.ndarray, n: int) -> tuple[np.ndarray, list[float]]:
    """n greedy decode steps on seq; returns the last logits and each step's seconds."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        logits = seq.decode(int(np.argmax(logits)))
        times.append(time.perf_counter() - t0)
    return logits, times


def batched_decode_tok_s(m, bsz: int, rng, c: ModelConfig) -> float:
    """Total tok/s of greedy decode steps over bsz forks of one 32-token prompt (median of 4
    steps after a warm-up)."""
    root = m.new_sequence()
    root.prefill([int(t) for t in rng.integers(0, c.vocab_size, 32)])
    seqs = [root.fork() for _ in range(bsz)]
    nxt = [int(t) for t in rng.integers(0, c.vocab_size, bsz)]
    bt = []
    for i in range(5):  # the first step is a warm-up
        t0 = time.perf_counter()
        outs = m.step([(q, [tok]) for q, tok in zip(seqs, nxt)])
        if i:
            bt.append(time.perf_counter() - t0)
        nxt = [int(np.argmax(o)) for o in outs]
    for q in seqs:
        q.free()
    root.free()
    return bsz / statistics.median(bt)


def compare_precisions(models: dict, prompts: list[int], batches: list[int], rng, c: ModelConfig) -> dict:
    """Prefill of each prompt length and batched greedy decode with each model, alternating
    (model order, then reversed) so that a drift of the machine hits both alike."""
    pre: dict = {str(n): {p: [] for p in models} for n in prompts}
    for n in prompts:
        toks = [int(t) for t in rng.integers(0, c.vocab_size, n)]
        for order in (list(models), list(models)[::-1]):
            for p in order:
                s = models[p].new_sequence()
                t0 = time.perf_counter()
                s.prefill(toks)
                pre[str(n)][p].append(time.perf_counter() - t0)
                s.free()
    prefill = {n: {p: {"s": min(v), "tok_s": int(n) / min(v), "GFLOPs": prefill_flops(c, int(n)) / min(v) / 1e9}
                   for p, v in row.items()} for n, row in pre.items()}
    dec: dict = {}
    for b in batches:
        dec[str(b)] = {}
        for p, mod in models.items():
            dec[str(b)][p] = batched_decode_tok_s(mod, b, rng, c)
    return {"prefill": prefill, "decode_batch": dec}


def proc_status() -> dict[str, float]:
    """RSS figures of this process in GB (VmHWM = peak RSS; RssAnon = private memory)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024 / 1e9
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint directory (default: a synthetic one, written once)")
    ap.add_argument("--workdir", default="/tmp",
                    help="where the synthetic checkpoint is written without --checkpoint (default: /tmp)")
    ap.add_argument("--preset", default="gpt-oss-20b")
    ap.add_argument("--decode", type=int, default=32, help="decode steps to time")
    ap.add_argument("--prompt", type=int, default=512, help="prefill length to time")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=lambda v: [int(x) for x in v.split(",") if x], default=[8, 32],
                    help="batched-decode sizes, comma-separated (empty to skip)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--precision", type=lambda v: [x for x in v.split(",") if x], default=["fp32"],
                    help="Model(precision=...) of the main run (the first); with two (fp32,bf16) also a "
                         "side-by-side table: prefill of each --compare-prompts length and batched decode "
                         "at each --batch size, the models alternating")
    ap.add_argument("--compare-prompts", type=lambda v: [int(x) for x in v.split(",") if x], default=[512, 2048])
    ap.add_argument("--int8-decode", action="store_true",
                    help="also time batch-1 decode with Model(..., int8_decode=True), alternating with the exact model")
    args = ap.parse_args()

    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = os.path.join(args.workdir, f"gptoss-bench-{args.preset}")
        if not os.path.exists(os.path.join(ckpt, "config.json")):
            from gptoss.synthetic import checkpoint_bytes, write_checkpoint

            need = checkpoint_bytes(preset(args.preset), "hf")
            os.makedirs(ckpt, exist_ok=True)
            free = shutil.disk_usage(ckpt).free
            if free < need * 1.02:
                os.rmdir(ckpt)
                print(f"error: the synthetic {args.preset} checkpoint needs {need / 1e9:.1f} GB but "
                      f"{args.workdir} has {free / 1e9:.1f} GB free: free some space, pass "
                      "--workdir DIR on a larger disk, or --checkpoint DIR", file=sys.stderr)
                return 1
            print(f"writing synthetic {args.preset} ({need / 1e9:.1f} GB) to {ckpt} ...", file=sys.stderr)
            write_checkpoint(preset(args.preset), ckpt, seed=0, layout="hf", progress=True)

    info = gptoss.build_info()
    # This machine's bandwidth drifts (a shared host): sample it before, between and after the
    # timed phases and use the median of the samples.
    bw_samples = [_core.measure_read_bandwidth(1 << 30, 3)]
    peak = _core.measure_peak_gflops()
    peak_bf16 = _core.measure_peak_gflops_bf16()

    t0 = time.time()
    ctx_max = max(4096, args.prompt + 64, *(p + 64 for p in args.compare_prompts))
    m = gptoss.Model(ckpt, max_context=ctx_max, threads=args.threads, progress=True, precision=args.precision[0])
    load_s = time.time() - t0
    mem_load = proc_status()
    ckpt_bytes = sum(os.path.getsize(os.path.join(m.checkpoint_dir, f))
                     for f in os.listdir(m.checkpoint_dir) if f.endswith(".safetensors"))
    c = m.config
    rng = np.random.default_rng(0)

    # Decode: a short prompt, then timed single-token steps (greedy).
    s = m.new_sequence()
    logits = s.prefill([int(t) for t in rng.integers(0, c.vocab_size, 16)])
    logits, _ = timed_decode(s, logits, 2)  # warm-up
    logits, times = timed_decode(s, logits, args.decode)
    ctx = len(s)
    s.free()
    step = statistics.median(times)
    nbytes = decode_bytes(c, ctx)
    dec_tps = 1.0 / step
    bw_samples.append(_core.measure_read_bandwidth(1 << 30, 3))

    # Prefill, then decode again at the end of that longer context.
    prompt = [int(t) for t in rng.integers(0, c.vocab_size, args.prompt)]
    s = m.new_sequence()
    t = time.perf_counter()
    logits = s.prefill(prompt)
    pf_s = time.perf_counter() - t
    pf_tps = args.prompt / pf_s
    gflops = prefill_flops(c, args.prompt) / pf_s / 1e9
    logits, long_times = timed_decode(s, logits, max(4, args.decode // 4))
    long_ctx = len(s)
    s.free()
    long_step = statistics.median(long_times)
    long_bytes = decode_bytes(c, long_ctx)

    bw_samples.append(_core.measure_read_bandwidth(1 << 30, 3))
    bw = statistics.median(bw_samples)
    dec_frac = nbytes / step / 1e9 / bw

    # Batched decode: forks of one prompt, one token each per step.
    batch_res = {}
    for bsz in args.batch:
        batch_res[bsz] = batched_decode_tok_s(m, bsz, rng, c)

    mem_end = proc_status()  # before a second model maps the checkpoint again

    # Precisions side by side: one model each (the checkpoint's pages are shared), alternating.
    prec_res = None
    if len(args.precision) > 1:
        models = {args.precision[0]: m}
        for p in args.precision[1:]:
            models[p] = gptoss.Model(ckpt, max_context=ctx_max, threads=args.threads, precision=p)
        prec_res = compare_precisions(models, args.compare_prompts, args.batch, rng, c)
        for p in args.precision[1:]:
            del models[p]

    # Opt-in int8 decode, timed in alternation with the exact model (the bandwidth drifts).
    int8_res = None
    if args.int8_decode:
        m8 = gptoss.Model(ckpt, max_context=max(4096, args.prompt + 64), threads=args.threads, int8_decode=True)
        if m8.int8_decode_active:
            pair = {}
            for name, mod in (("exact", m), ("int8", m8)):
                q = mod.new_sequence()
                lg = q.prefill([int(t) for t in rng.integers(0, c.vocab_size, 16)])
                pair[name] = [q, lg, []]
            for _ in range(3):
                for name in ("exact", "int8"):
                    q, lg, ts = pair[name]
                    pair[name][1], more = timed_decode(q, lg, max(4, args.decode // 3))
                    ts.extend(more)
            int8_res = {name: 1.0 / statistics.median(v[2]) for name, v in pair.items()}
            for v in pair.values():
                v[0].free()
        del m8

    res = dict(
        checkpoint_GB=ckpt_bytes / 1e9, rss_after_load=mem_load, rss_at_end=mem_end,
        checkpoint=ckpt, layers=c.num_hidden_layers, experts=c.num_experts, simd=info["simd"],
        threads=info["openmp_threads"], read_bandwidth_GBps=bw, read_bandwidth_samples_GBps=bw_samples, peak_fp32_GFLOPs=peak, load_s=load_s,
        decode_tok_s=dec_tps, decode_step_ms_median=step * 1e3, decode_step_ms_min=min(times) * 1e3,
        decode_bytes_per_token=nbytes, decode_roofline_tok_s=bw * 1e9 / nbytes, decode_fraction_of_bandwidth=dec_frac,
        prefill_tokens=args.prompt, prefill_s=pf_s, prefill_tok_s=pf_tps, prefill_GFLOPs=gflops,
        prefill_fraction_of_peak=gflops / peak,
        decode_long_context=long_ctx, decode_long_tok_s=1.0 / long_step,
        decode_long_fraction_of_bandwidth=long_bytes / long_step / 1e9 / bw,
        decode_batch_tok_s={str(k): v for k, v in batch_res.items()},
        int8_decode_vs_exact_tok_s=int8_res, peak_bf16_GFLOPs=peak_bf16, precision=args.precision[0],
        precisions=prec_res,
    )
    print(f"\ngptoss CPU benchmark: {args.preset if not args.checkpoint else ckpt} "
          f"({c.num_hidden_layers} layers, {c.num_experts} experts), {info['simd']}, {info['openmp_threads']} threads")
    print(f"  machine: read bandwidth {bw:.1f} GB/s (median of {', '.join(f'{b:.1f}' for b in bw_samples)}), "
          f"fp32 FMA peak {peak:.0f} GFLOP/s; load {load_s:.1f} s")
    print(f"  memory: checkpoint {ckpt_bytes / 1e9:.2f} GB; after load RSS {mem_load['VmRSS']:.2f} GB "
          f"(private {mem_load['RssAnon']:.2f} GB); peak RSS over the run {mem_end['VmHWM']:.2f} GB "
          f"(private {mem_end['RssAnon']:.2f} GB, mapped file {mem_end['RssFile']:.2f} GB)")
    print(f"  decode  (batch 1, ctx {ctx}): {dec_tps:.2f} tok/s  ({step * 1e3:.0f} ms/step median, "
          f"{min(times) * 1e3:.0f} best); {nbytes / 1e9:.3f} GB/token -> {nbytes / step / 1e9:.1f} GB/s = "
          f"{100 * dec_frac:.0f}% of bandwidth (roofline {bw * 1e9 / nbytes:.2f} tok/s)")
    print(f"  prefill ({args.prompt} tokens): {pf_tps:.1f} tok/s ({pf_s:.1f} s), {gflops:.0f} GFLOP/s = "
          f"{100 * gflops / peak:.0f}% of fp32 peak")
    print(f"  decode  (batch 1, ctx {long_ctx}): {1.0 / long_step:.2f} tok/s  ({long_step * 1e3:.0f} ms/step); "
          f"{long_bytes / 1e9:.3f} GB/token = {100 * long_bytes / long_step / 1e9 / bw:.0f}% of bandwidth")
    for bsz, tps in batch_res.items():
        print(f"  decode  (batch {bsz}, ctx ~34): {tps:.1f} tok/s total ({tps / bsz:.2f} per sequence)")
    if prec_res:
        print(f"  precisions side by side (fp32 FMA peak {peak:.0f}, bf16 dot-product peak {peak_bf16:.0f} GFLOP/s):")
        for n in args.compare_prompts:
            row = prec_res["prefill"][str(n)]
            print(f"    prefill {n}: " + "; ".join(
                f"{p} {r['tok_s']:.1f} tok/s ({r['GFLOPs']:.0f} GFLOP/s = {100 * r['GFLOPs'] / peak:.0f}% of fp32 peak"
                + (f", {100 * r['GFLOPs'] / peak_bf16:.0f}% of bf16 peak" if peak_bf16 and p == "bf16" else "") + ")"
                for p, r in row.items()))
        for b in args.batch:
            row = prec_res["decode_batch"][str(b)]
            print(f"    decode batch {b}: " + "; ".join(f"{p} {v:.1f} tok/s" for p, v in row.items()))
    if int8_res:
        print(f"  decode  (batch 1, int8_decode=True, alternating with the exact model): {int8_res['int8']:.2f} tok/s "
              f"vs {int8_res['exact']:.2f} exact")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
