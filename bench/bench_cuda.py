"""CUDA benchmark on full-size synthetic gpt-oss models generated directly on the device.

    python bench/bench_cuda.py --model gpt-oss-20b [--out DIR] [--quick]

Measures: device copy bandwidth and (through PyTorch, when present) the bf16 matmul peak;
prefill tok/s and model TFLOP/s for 1k and 8k prompts (also in 512-token chunks, on bf16
activations, and with each tensor-core tile shape forced); batch-1 decode tok/s at 1k and 8k context (and at 1k with CUDA graphs off, to show the launch overhead, and with one-part activations in the decode GEMVs); decode throughput at batch 8/32/64/128 (1k-token context shared by forks,
copy-on-write; at 32 and 64 also with the experts on the decode GEMV); peak device memory. Each decode figure comes with the bytes one step reads
(weights of the experts actually used, attention, router, unembedding, KV cache) and the
fraction of the measured copy bandwidth that this represents (roofline). Greedy decoding
(argmax on the device). Prints JSON lines while running and writes them to DIR/bench_<model>.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

import gptoss
from gptoss import _core as core


def expected_unique(E: int, k: int, B: int) -> float:
    """Expected number of distinct experts used by B tokens choosing k of E each (uniform)."""
    return E * (1.0 - (1.0 - k / E) ** B)


def step_bytes(cfg, B: int, ctx: int, kv_elem: int) -> float:
    H, I, E, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token
    Q = cfg.num_attention_heads * cfg.head_dim
    KV = cfg.num_key_value_heads * cfg.head_dim
    attn = 2 * ((Q + 2 * KV) * H + H * Q) + 4 * (Q + 2 * KV + H + cfg.num_attention_heads)
    router = 2 * E * H + 4 * E
    expert = (2 * I * H + H * I) * (17 / 32) + 4 * (2 * I + H)  # MXFP4 blocks + scales, fp32 biases
    per_layer = attn + router + expected_unique(E, k, B) * expert + 4 * 2 * H
    kv = 0.0
    for layer in range(cfg.num_hidden_layers):
        keys = min(ctx, cfg.sliding_window) if cfg.is_sliding(layer) else ctx
        kv += B * keys * 2 * KV * kv_elem
    return cfg.num_hidden_layers * per_layer + 2 * cfg.vocab_size * H + B * 2 * H + kv


TILES = ((1, "64x64"), (2, "64x128"), (3, "128x128"), (4, "32x128"))  # set_gemm_tiles


def kind_bytes(cfg, B: int, ctx: int, kv_elem: int) -> dict[str, float]:
    """Bytes one decode step of B rows reads, per kernel kind of Engine.profile (all layers)."""
    H, I, E, k, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token, cfg.num_hidden_layers
    Q = cfg.num_attention_heads * cfg.head_dim
    KV = cfg.num_key_value_heads * cfg.head_dim
    used = expected_unique(E, k, B)
    n_win = sum(1 for layer in range(L) if cfg.is_sliding(layer))
    return {
        "qkv": L * ((Q + 2 * KV) * H * 2 + (Q + 2 * KV) * 4),
        "attention out": L * (H * Q * 2 + H * 4),
        "norm + router": L * (E * H * 2 + E * 4),
        "experts mlp1": L * used * (2 * I * H * 17 / 32 + 2 * I * 4),
        "experts mlp2": L * used * (H * I * 17 / 32 + H * 4),
        "attention (full)": (L - n_win) * B * ctx * 2 * KV * kv_elem,
        "attention (window)": n_win * B * min(ctx, cfg.sliding_window) * 2 * KV * kv_elem,
        "unembedding": cfg.vocab_size * H * 2,
    }


def kind_flops(cfg, n: int) -> dict[str, float]:
    """Model FLOPs of an n-token prefill per kernel kind of Engine.profile."""
    H, I, k, L = cfg.hidden_size, cfg.intermediate_size, cfg.experts_per_token, cfg.num_hidden_layers
    Q = cfg.num_attention_heads * cfg.head_dim
    KV = cfg.num_key_value_heads * cfg.head_dim
    n_win = sum(1 for layer in range(L) if cfg.is_sliding(layer))
    w = min(n, cfg.sliding_window)
    return {
        "qkv": 2 * n * L * (Q + 2 * KV) * H,
        "attention out": 2 * n * L * H * Q,
        "experts mlp1": 2 * n * L * k * 2 * I * H,
        "experts mlp2": 2 * n * L * k * I * H,
        "attention (full)": 4 * Q * (L - n_win) * n * (n + 1) / 2,
        "attention (window)": 4 * Q * n_win * (w * (w + 1) / 2 + (n - w) * cfg.sliding_window),
    }


def prefill_flops(cfg, n: int) -> float:
    """Model FLOPs of an n-token prefill: the GEMMs of every token (experts: the k used), QK^T and
    PV over the causal (or 128-token window) keys, and the unembedding of the last row."""
    H, I, E, k = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token
    Q = cfg.num_attention_heads * cfg.head_dim
    KV = cfg.num_key_value_heads * cfg.head_dim
    per_token = 2 * ((Q + 2 * KV) * H + H * Q + E * H + k * 3 * I * H)
    full = n * (n + 1) / 2
    w = min(n, cfg.sliding_window)
    window = w * (w + 1) / 2 + (n - w) * cfg.sliding_window
    attn = sum(4 * Q * (window if cfg.is_sliding(layer) else full) for layer in range(cfg.num_hidden_layers))
    return n * cfg.num_hidden_layers * per_token + attn + 2 * cfg.vocab_size * H


def measured_peak_tflops() -> float | None:
    """Dense bf16 matmul rate through PyTorch (cuBLAS) on this GPU, if torch with CUDA is there:
    the yardstick for the prefill figures (the GPU machine's image has it; nothing is installed)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        rate = 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12
        del a, b
        torch.cuda.empty_cache()
        return rate
    except Exception:  # no torch, no CUDA build of it, or no memory: the figure is optional
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt-oss-20b")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--kv-gib", type=float, default=24.0, help="KV cache cap in GiB")
    ap.add_argument("--batches", default="8,32,64,128")
    ap.add_argument("--contexts", default="1024,8192", help="prompt lengths for prefill / decode context")
    ap.add_argument("--device", default="cuda", help="cuda, or cuda-emu for a dry run of this script "
                    "(with --model tiny --quick --contexts 64,128 --batches 2,4)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    out = open(os.path.join(args.out, f"bench_{args.model}.jsonl"), "w")

    def emit(**kw):
        kw["model"] = args.model
        line = json.dumps(kw)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    backend = core.cuda_emu if args.device == "cuda-emu" else core
    k = backend.cuda_kernels
    bw = k.copy_bandwidth((2 << 30) if args.device == "cuda" else (1 << 20), 5)
    emit(what="copy_bandwidth", gbps=round(bw, 1), device=backend.cuda_device_description(0))
    peak = measured_peak_tflops() if args.device == "cuda" else None
    if peak:
        emit(what="matmul_peak", tflops=round(peak, 1), how="torch bf16 8192^3")

    t0 = time.time()
    ctxs = [int(c) for c in args.contexts.split(",") if c]
    m_chunk = 2048
    m = gptoss.Model.synthetic(args.model, seed=0, device=args.device, kv_cache_bytes=int(args.kv_gib * (1 << 30)),
                               max_context=max(16384, 2 * max(ctxs)), max_chunk_tokens=m_chunk)
    eng = m._engine
    eng.synchronize()
    info = eng.memory_info()
    emit(what="load", seconds=round(time.time() - t0, 2), weights_gib=round(info["weights"] / 2**30, 2),
         kv_gib=round(info["kv_cache"] / 2**30, 2), workspace_gib=round(info["workspace"] / 2**30, 2),
         moe_gemv=eng.moe_gemv_available())
    cfg = m.config
    kv_elem = int(info["kv_elem_bytes"])
    rng = np.random.default_rng(0)
    V = cfg.vocab_size

    def prompt(n):
        return rng.integers(0, V, n).astype(np.int64)

    def greedy(seqs, toks):
        return eng.step_argmax([s.id for s in seqs], [np.array([t], np.int64) for t in toks])

    def timed_greedy(seqs, toks, n: int):
        """n greedy steps of seqs: (the last tokens, seconds per step)."""
        eng.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            toks = list(greedy(seqs, toks))
        eng.synchronize()
        return toks, (time.perf_counter() - t) / n

    # warm-up (module loading, first launches)
    w = m.new_sequence()
    w.prefill(prompt(64))
    for _ in range(3):
        greedy([w], [1])
    w.free()
    eng.synchronize()

    @contextlib.contextmanager
    def side_by_side(section: str, undo):
        """An optional comparison: a failure in it is reported as an error line (in the table too)
        and the benchmark goes on with the defaults restored."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            emit(what="error", section=section, error=f"{type(e).__name__}: {e}"[:600])
        finally:
            undo()

    def emit_profile(step: str, prof: dict, by: dict, fl: dict):
        """One line per kernel kind: device time per step, its share, and the bandwidth (by: bytes
        per step) or the model TFLOP/s (fl: FLOPs per step) it reaches."""
        steps = max(1, prof.pop("steps"))
        total = sum(ms for ms, _ in prof.values()) / steps
        for kind, (ms, _) in sorted(prof.items(), key=lambda kv: -kv[1][0]):
            us = ms / steps * 1e3
            gbps = by[kind] / (us * 1e-6) / 1e9 if kind in by and us > 0 else None
            tflops = fl[kind] / (us * 1e-6) / 1e12 if kind in fl and us > 0 else None
            emit(what="profile", step=step, kind=kind, us_per_step=round(us, 1),
                 share=round(ms / steps / total, 3) if total > 0 else None,
                 gbps=round(gbps, 1) if gbps else None, bw_frac=round(gbps / bw, 3) if gbps else None,
                 tflops=round(tflops, 1) if tflops else None,
                 peak_frac=round(tflops / peak, 3) if tflops and peak else None)

    def profiled(section: str, seqs, toks, n: int, B: int, ctx: int):
        """Device time per kernel kind over n greedy steps of B rows at context ctx."""
        with side_by_side(section, lambda: eng.set_profile(False)):
            eng.set_profile(True)
            timed_greedy(seqs, toks, n)
            emit_profile(f"b{B}", eng.profile(), kind_bytes(cfg, B, ctx, kv_elem), {})

    def timed_prefill(n: int):
        """(sequence, seconds) of one n-token prompt on a fresh sequence."""
        s = m.new_sequence()
        p = prompt(n)
        eng.synchronize()
        t = time.perf_counter()
        eng.step_argmax([s.id], [p])
        eng.synchronize()
        return s, time.perf_counter() - t

    def emit_prefill(what: str, n: int, dt: float, **kw):
        tf = prefill_flops(cfg, n) / dt / 1e12
        emit(what=what, tokens=n, seconds=round(dt, 3), tok_s=round(n / dt, 1), tflops=round(tf, 1),
             peak_frac=round(tf / peak, 3) if peak else None, **kw)

    results = {}
    seqs = {}
    for n in ctxs:
        seqs[n], dt = timed_prefill(n)
        results[f"prefill_{n}"] = n / dt
        emit_prefill("prefill", n, dt)

    # The same prompts in 512-token chunks (the CPU's default) against the default 2048, then with
    # tensor-core GEMMs and attention on plain bf16 operands (one MMA, flips some expert choices)
    # instead of hi/lo.
    for what, setup, undo in (("prefill_chunk512", lambda: eng.set_max_chunk_tokens(512),
                               lambda: eng.set_max_chunk_tokens(m_chunk)),
                              ("prefill_bf16", lambda: eng.set_tc_split(False), lambda: eng.set_tc_split(True))):
        with side_by_side(what, undo):
            setup()
            for n in ctxs:
                s, dt = timed_prefill(n)
                emit_prefill(what, n, dt)
                s.free()
    # Where a prefill's time goes (eager steps, an event between kernel groups).
    with side_by_side("profile prefill", lambda: eng.set_profile(False)):
        eng.set_profile(True)
        s, _ = timed_prefill(ctxs[0])
        s.free()
        emit_profile(f"p{ctxs[0]}", eng.profile(), {}, kind_flops(cfg, ctxs[0]))
    # Each tensor-core tile shape forced (auto picks per GEMM): which one the defaults should favour.
    with side_by_side("prefill_tiles", lambda: eng.set_gemm_tiles(0)):
        for tiles, name in TILES:
            eng.set_gemm_tiles(tiles)
            s, dt = timed_prefill(ctxs[0])
            emit_prefill("prefill_tiles", ctxs[0], dt, tiles=name)
            s.free()

    steps = 8 if args.quick else 48
    for ctx in ctxs:
        s = seqs[ctx]
        toks = list(greedy([s], [1]))  # captures this context's graph outside the timing
        toks, dt = timed_greedy([s], toks, steps)
        by = step_bytes(cfg, 1, ctx + steps // 2, kv_elem)
        frac = by / dt / (bw * 1e9)
        results[f"decode1_{ctx}"] = (1 / dt, frac)
        emit(what="decode", batch=1, context=ctx, ms_per_step=round(dt * 1e3, 3), tok_s=round(1 / dt, 1),
             gb_per_step=round(by / 1e9, 3), roofline_frac=round(frac, 3))
    profiled("profile b1", [seqs[ctxs[0]]], [1], steps // 2, 1, ctxs[0] + steps)
    # Launch overhead: the same batch-1 decode at 1k with the CUDA graphs off, then on again.
    c0 = ctxs[0]
    s = seqs[c0]
    for graphs in (False, True):
        eng.set_cuda_graphs(graphs)
        toks, dt = timed_greedy([s], list(greedy([s], [1])), steps)
        emit(what="decode_graphs", graphs=graphs, batch=1, context=c0 + steps, ms_per_step=round(dt * 1e3, 3),
             tok_s=round(1 / dt, 1))
    # Programmatic dependent launch (sm_90+; off by default until measured): on with the weight
    # kernels prefetching into L2 before they wait, on without, then off again.
    with side_by_side("decode_pdl", lambda: eng.set_pdl(False)):
        for pdl, prefetch in ((True, True), (True, False), (False, False)):
            used = eng.set_pdl(pdl, prefetch)
            toks, dt = timed_greedy([s], list(greedy([s], [1])), steps)
            emit(what="decode_pdl", pdl=used, prefetch=used and prefetch, batch=1, context=c0 + steps,
                 ms_per_step=round(dt * 1e3, 3), tok_s=round(1 / dt, 1))
    # QKV, RoPE and the KV store as two kernels instead of one (the fused kernel is the default).
    with side_by_side("decode_unfused", lambda: eng.set_fuse_qkv_rope(True)):
        eng.set_fuse_qkv_rope(False)
        toks, dt = timed_greedy([s], list(greedy([s], [1])), steps)
        emit(what="decode_unfused", batch=1, context=c0 + 2 * steps, ms_per_step=round(dt * 1e3, 3),
             tok_s=round(1 / dt, 1))
    # One fp16 part of the activations in the experts' decode GEMV instead of hi + lo (half its
    # MMAs and no split): if it is faster, that kernel is bound by instruction issue.
    with side_by_side("decode_bf16", lambda: eng.set_tc_split(True)):
        eng.set_tc_split(False)
        toks, dt = timed_greedy([s], list(greedy([s], [1])), steps)
        emit(what="decode_bf16", batch=1, context=c0 + 3 * steps, ms_per_step=round(dt * 1e3, 3),
             tok_s=round(1 / dt, 1))
    # Sampling on the device (temperature 0.8, top-p 0.95): the per-step cost over greedy.
    def sampled(tok: int) -> int:
        return int(eng.step_sample([s.id], [np.array([tok], np.int64)], np.array([0.8], np.float32),
                                   np.array([0], np.int32), np.array([0.95], np.float32), np.array([0.0], np.float32),
                                   rng.random(1).astype(np.float32) * 0.999, np.array([0], np.int32))[0])

    tok = sampled(1)  # captures the sampling graph outside the timing
    eng.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        tok = sampled(tok)
    eng.synchronize()
    dt = (time.perf_counter() - t) / steps
    emit(what="decode_sampled", batch=1, context=c0 + 2 * steps, ms_per_step=round(dt * 1e3, 3),
         tok_s=round(1 / dt, 1), sampling="temperature 0.8, top_p 0.95")
    emit(what="graph_stats", **eng.graph_stats())
    for c in ctxs[1:]:
        seqs[c].free()

    base = seqs[c0]
    batches = sorted(int(b) for b in args.batches.split(",") if b)
    for B in batches:
        forks = [base.fork() for _ in range(B)]
        toks = list(rng.integers(0, V, B))
        greedy(forks, toks)  # first step: copy-on-write of the shared last block
        n = 4 if args.quick else 16
        toks, dt = timed_greedy(forks, toks, n)
        by = step_bytes(cfg, B, c0 + n, kv_elem)
        frac = by / dt / (bw * 1e9)
        results[f"decode{B}_{c0}"] = (B / dt, frac)
        emit(what="decode", batch=B, context=c0, ms_per_step=round(dt * 1e3, 3), tok_s=round(B / dt, 1),
             gb_per_step=round(by / 1e9, 3), roofline_frac=round(frac, 3))
        if B == batches[-1]:
            profiled(f"profile b{B}", forks, toks, n, B, c0 + n)
        if B >= 16 and B in (32, batches[-1]):
            # Batched steps are weight-streaming GEMMs: each tile shape forced (auto: by rows).
            with side_by_side(f"decode_tiles b{B}", lambda: eng.set_gemm_tiles(0)):
                for tiles, name in TILES:
                    eng.set_gemm_tiles(tiles)
                    greedy(forks, toks)  # capture outside the timing
                    toks, dt = timed_greedy(forks, toks, n)
                    emit(what="decode_tiles", batch=B, context=c0, tiles=name, ms_per_step=round(dt * 1e3, 3),
                         tok_s=round(B / dt, 1))
        if 8 < B <= 128:
            # The experts on the other path than the default's at this batch: the GEMV (8 pairs of
            # an expert per weight read) or the tensor-core GEMM (32-128 pairs a tile). The
            # default takes the GEMV while the pairs average at most 8 per expert.
            default = eng.moe_gemv_tokens()
            gemv = B > default
            with side_by_side(f"decode_moe_path b{B}", lambda: eng.set_moe_gemv_tokens(default)):
                eng.set_moe_gemv_tokens(B if gemv else 8)
                greedy(forks, toks)
                toks, dt = timed_greedy(forks, toks, n)
                emit(what="decode_moe_path", batch=B, context=c0, experts="GEMV" if gemv else "GEMM",
                     ms_per_step=round(dt * 1e3, 3), tok_s=round(B / dt, 1))
        for f in forks:
            f.free()
    info = eng.memory_info()
    emit(what="memory", used_gib=round(info["used"] / 2**30, 2), total_gib=round(info["total"] / 2**30, 2),
         weights_gib=round(info["weights"] / 2**30, 2), kv_gib=round(info["kv_cache"] / 2**30, 2))
    emit(what="summary", **{k: (round(v, 1) if isinstance(v, float) else [round(v[0], 1), round(v[1], 3)])
                            for k, v in results.items()}, copy_gbps=round(bw, 1), used_gib=round(info["used"] / 2**30, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
