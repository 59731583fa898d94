"""The tables that bench/gpu_check.sh prints last: the PASS/FAIL lines of bench/gpu_checks.py
(DIR/checks.jsonl) at the top, then one row per figure in the bench_<model>.jsonl files that
bench/bench_cuda.py wrote into DIR, the details first and the compact summary (bandwidth,
matmul peak, prefill, decode, memory, errors) last.

    python bench/gpu_table.py DIR
"""

from __future__ import annotations

import glob
import json
import os
import sys


def rows_of(r: dict) -> list[tuple[str, str, str]]:
    w = r.get("what")
    if w and w.startswith("prefill"):
        label = {"prefill": "", "prefill_bf16": " bf16 act", "prefill_chunk512": " chunk 512",
                 "prefill_tiles": f" tiles {r.get('tiles')}"}.get(w, " " + w)
        note = f"{r['tflops']:.1f} TFLOP/s" if r.get("tflops") is not None else ""
        if r.get("peak_frac"):
            note += f", {r['peak_frac'] * 100:.0f}% of matmul peak"
        if w == "prefill_bf16":
            note += " (one MMA instead of hi/lo)"
        return [(f"prefill {r['tokens']}{label}", f"{r['tok_s']:.0f} tok/s", note)]
    if w == "matmul_peak":
        return [("bf16 matmul peak", f"{r['tflops']:.0f} TFLOP/s", r.get("how", ""))]
    if w == "decode":
        return [(f"decode b{r['batch']} ctx{r['context']}", f"{r['tok_s']:.0f} tok/s",
                 f"{r['ms_per_step']:.2f} ms/step, {r['roofline_frac'] * 100:.0f}% of copy BW")]
    if w == "decode_tiles":
        return [(f"decode b{r['batch']} tiles {r['tiles']}", f"{r['tok_s']:.0f} tok/s", f"{r['ms_per_step']:.2f} ms/step")]
    if w == "decode_moe_path":
        return [(f"decode b{r['batch']} experts {r['experts']}", f"{r['tok_s']:.0f} tok/s", f"{r['ms_per_step']:.2f} ms/step")]
    if w == "decode_graphs":
        return [(f"decode b1 graphs={'on' if r['graphs'] else 'off'}", f"{r['tok_s']:.0f} tok/s",
                 f"{r['ms_per_step']:.3f} ms/step")]
    if w == "decode_pdl":
        pre = " +prefetch" if r.get("prefetch") else ""
        return [(f"decode b1 pdl={'on' if r['pdl'] else 'off'}{pre}", f"{r['tok_s']:.0f} tok/s",
                 f"{r['ms_per_step']:.3f} ms/step")]
    if w == "decode_bf16":
        return [("decode b1 one-part act", f"{r['tok_s']:.0f} tok/s", f"{r['ms_per_step']:.3f} ms/step")]
    if w == "decode_unfused":
        return [("decode b1 qkv+rope unfused", f"{r['tok_s']:.0f} tok/s", f"{r['ms_per_step']:.3f} ms/step")]
    if w == "decode_sampled":
        return [("decode b1 top-p sampled", f"{r['tok_s']:.0f} tok/s", f"{r['ms_per_step']:.3f} ms/step")]
    if w == "profile":
        note = f"{r['share'] * 100:.0f}% of the step" if r.get("share") is not None else ""
        if r.get("gbps"):
            note += f", {r['gbps']:.0f} GB/s ({r['bw_frac'] * 100:.0f}% of copy BW)"
        if r.get("tflops"):
            note += f", {r['tflops']:.0f} TFLOP/s"
            if r.get("peak_frac"):
                note += f" ({r['peak_frac'] * 100:.0f}% of matmul peak)"
        return [(f"{r['step']} {r['kind']}"[:25], f"{r['us_per_step']:.1f} us/step", note)]
    if w == "error":
        return [(f"ERROR in {r.get('section')}", "-", r.get("error", "")[:200])]
    if w == "load" and r.get("moe_gemv") is False:  # the probe found tensor cores that flush fp16 subnormals
        return [("experts' decode GEMV", "unavailable", "fp16 subnormals flushed: experts on the GEMM")]
    if w == "copy_bandwidth":
        return [("copy bandwidth", f"{r['gbps']:.0f} GB/s", r.get("device", ""))]
    if w == "memory":
        return [("device memory used", f"{r['used_gib']:.1f} GiB",
                 f"weights {r['weights_gib']} GiB, kv {r['kv_gib']} GiB (cap)")]
    return []


HEADLINE = ("copy_bandwidth", "matmul_peak", "load", "prefill", "decode", "memory", "error")


def checks(out: str) -> list[str]:
    """One line per check of gpu_checks.py; a line saying they did not run when there are none."""
    lines = []
    try:
        with open(os.path.join(out, "checks.jsonl")) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("what") == "check":
                    lines.append(f"{'PASS' if r.get('ok') else 'FAIL'} {r.get('name')}: {r.get('figure')}")
    except OSError:
        pass
    return lines or ["FAIL checks: bench/gpu_checks.py wrote no result"]


def table(out: str) -> str:
    """The checks first, the details (variants, tile shapes, per-kernel profiles) next, then the
    compact table of the headline figures last."""
    head = f"{'model':<14}{'figure':<26}{'value':<16}note"
    detail, main = [head], [head]
    for path in sorted(glob.glob(os.path.join(out, "bench_*.jsonl"))):
        model = os.path.basename(path)[len("bench_"):-len(".jsonl")]
        for line in open(path):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            for fig, val, note in rows_of(r):
                (main if r.get("what") in HEADLINE else detail).append(f"{model:<14}{fig:<26}{val:<16}{note}")
    return "\n".join(["-- checks --"] + checks(out) + ["", "-- details --"] + detail + ["", "-- summary --"] + main)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "gpu_out"))
