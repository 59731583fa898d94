"""The first minute of bench/gpu_check.sh: the riskiest questions about the CUDA backend on a real
GPU, answered before any benchmark, each by one PASS or FAIL line with its figure (gpu_table.py
puts them at the top of the final table). Writes DIR/checks.jsonl (one record per check) and
DIR/kernel_attributes.txt.

    python bench/gpu_checks.py [--out DIR] [--device cuda|cuda-emu] [--quick]

  subnormal probes   tensor cores take fp16 subnormals in the A and in the B operand (the
                     experts' decode GEMV relies on both; the engine falls back where not)
  arrival counters   every "last block merges" counter is back at zero after 64 graph-replayed
                     decode steps (greedy and sampled) at batch 1 and at batch 8
  sampling           the candidate compaction draws the very tokens the whole-row path draws,
                     over thousands of full-vocabulary rows of mixed parameters
  launch modes       logits bitwise identical with PDL off / on / on + prefetch, graphs off / on
  gemv/gemm error    each GEMV and GEMM path against a float64 reference at K = 2880 and 4096,
                     on random and on same-sign products (where truncating tensor-core sums drift)
  kernel attributes  registers and local memory per kernel; every kernel launchable at its block size

--device cuda-emu --quick rehearses it on the CPU emulator (small sizes); without a GPU every
check fails cleanly with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

import gptoss
from gptoss import _core as core


def to_bf16(x: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32)


E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def mxfp4_dequant(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[N, K/32, 16] bytes (low nibble first) and [N, K/32] E8M0 scales -> float64 [N, K]."""
    lo, hi = E2M1[blocks & 15], E2M1[blocks >> 4]
    v = np.stack([lo, hi], axis=-1).reshape(blocks.shape[0], blocks.shape[1], 32)
    return (v * np.exp2(scales.astype(np.float64) - 127)[..., None]).reshape(blocks.shape[0], -1)


class Checks:
    def __init__(self, out: str, device: str, quick: bool) -> None:
        self.device, self.quick = device, quick
        self.backend = core.cuda_emu if device == "cuda-emu" else core
        self.k = getattr(self.backend, "cuda_kernels", None)
        self.out = open(os.path.join(out, "checks.jsonl"), "w")
        self.dir = out
        self.failed = 0
        self._model = None

    def record(self, name: str, ok: bool, figure: str, **detail) -> None:
        rec = dict(what="check", name=name, ok=bool(ok), figure=figure, **detail)
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {figure}", flush=True)

    def run(self, name: str, fn) -> None:
        t = time.time()
        try:
            ok, figure, detail = fn()
        except Exception as e:  # a check that cannot run is a failed check, and the others go on
            ok, figure, detail = False, f"error: {type(e).__name__}: {str(e)[:300]}", {"trace": traceback.format_exc()[-2000:]}
        self.record(name, ok, figure, seconds=round(time.time() - t, 2), **detail)

    def require_device(self) -> None:
        if self.k is None:
            raise RuntimeError("this build has no CUDA backend")
        if self.backend.cuda_device_count() == 0:
            raise RuntimeError("no CUDA device is visible")

    def model(self):
        """A small model with gpt-oss-20b's shapes (2 layers: a window and a full-attention one),
        generated on the device; the emulator takes the tiny preset."""
        if self._model is None:
            self.require_device()
            cfg = gptoss.config.preset("tiny") if self.device == "cuda-emu" else \
                gptoss.config.preset("gpt-oss-20b", num_hidden_layers=2)
            self._model = gptoss.Model.synthetic(cfg, seed=3, device=self.device, kv_cache_bytes=1 << 30,
                                                 max_chunk_tokens=512)
        return self._model

    # ---- the checks ---------------------------------------------------------------------------
    def subnormal_probes(self):
        self.require_device()
        a, b = self.k.subnormal_probe()
        want = 2.0 ** -11
        return a == want and b == want, f"A {a:.3g}, B {b:.3g} (taken: {want:.3g}; flushed: 0)", {"a": a, "b": b}

    def arrival_counters(self):
        m = self.model()
        eng = m._engine
        V = m.config.vocab_size
        rng = np.random.default_rng(1)
        steps = 8 if self.quick else 64
        before = eng.graph_stats()["launches"]
        for B in (1, 8):
            seqs = [m.new_sequence() for _ in range(B)]
            for s in seqs:  # a context of several 32-key tiles: split attention merges
                s.prefill(rng.integers(0, V, 100).astype(np.int64))
            ids = [s.id for s in seqs]
            toks = list(rng.integers(0, V, B))
            for i in range(steps):
                one = [np.array([t], np.int64) for t in toks]
                if i % 2 == 0:  # greedy: the split argmax
                    toks = list(eng.step_argmax(ids, one))
                else:  # sampled: the candidate compaction (up to 8 rows)
                    f = lambda v, dt: np.full(B, v, dt)  # noqa: E731
                    toks = list(eng.step_sample(ids, one, f(0.8, np.float32), f(40, np.int32), f(0.95, np.float32),
                                                f(0.0, np.float32), rng.random(B).astype(np.float32) * 0.999,
                                                f(0, np.int32)))
            for s in seqs:
                s.free()
        n, nonzero = eng.arrival_counters()
        replays = eng.graph_stats()["launches"] - before
        ok = nonzero == 0 and replays >= 2 * steps
        return ok, f"{nonzero} of {n} counters non-zero after {replays} graph replays ({steps} steps at b1 and b8)", \
            {"counters": n, "nonzero": nonzero, "replays": replays}

    def sampling_compaction(self):
        self.require_device()
        rows, V, calls = (16, 3000, 1) if self.quick else (512, 201088, 4)
        rng = np.random.default_rng(2)
        total = mismatch = 0
        for _ in range(calls):
            x = (rng.standard_normal((rows, V)) * rng.choice([0.5, 1.0, 3.0], (rows, 1))).astype(np.float32)
            T = rng.choice([0.0, 0.3, 0.7, 1.0, 1.5], rows).astype(np.float32)
            k = rng.choice([0, 0, 1, 5, 50, 1000], rows).astype(np.int32)
            p = rng.choice([1.0, 0.9, 0.5, 0.99], rows).astype(np.float32)
            mp = rng.choice([0.0, 0.0, 0.05, 0.3], rows).astype(np.float32)
            u = (rng.random(rows) * 0.999).astype(np.float32)
            whole = self.k.sample(x, T, k, p, mp, u, 0, -1)
            for splits in (3, 16):
                got = self.k.sample(x, T, k, p, mp, u, 0, splits)
                mismatch += int(np.sum(got != whole))
                total += rows
        return mismatch == 0, f"{mismatch} of {total} draws differ (rows of {V}, 3 and 16 slices)", \
            {"rows": total, "mismatch": mismatch}

    def launch_modes(self):
        m = self.model()
        eng = m._engine
        V = m.config.vocab_size
        rng = np.random.default_rng(4)
        prompt = rng.integers(0, V, 40).astype(np.int64)
        feed = rng.integers(0, V, (6 if self.quick else 16, 8)).astype(np.int64)

        def run():
            outs = []
            for B in (1, 8):
                seqs = [m.new_sequence() for _ in range(B)]
                outs.append(np.stack([s.prefill(prompt) for s in seqs]))
                for row in feed:
                    outs.append(np.stack(m.step([(s, [int(t)]) for s, t in zip(seqs, row[:B])])))
                for s in seqs:
                    s.free()
            return np.concatenate([o.reshape(-1) for o in outs])

        modes = [("pdl off, graphs off", False, False, False), ("graphs on", False, False, True),
                 ("pdl on", True, False, True), ("pdl on + prefetch", True, True, True),
                 ("pdl on + prefetch, graphs off", True, True, False)]
        base = None
        differ, pdl_used = [], False
        try:
            for name, pdl, pre, graphs in modes:
                pdl_used |= eng.set_pdl(pdl, pre)
                eng.set_cuda_graphs(graphs)
                got = run()
                if base is None:
                    base = got
                elif not np.array_equal(got.view(np.uint32), base.view(np.uint32)):
                    differ.append(f"{name} ({int(np.sum(got != base))} values)")
        finally:
            eng.set_pdl(False)
            eng.set_cuda_graphs(True)
        note = "" if pdl_used else " (PDL unavailable here: sm_90+ only)"
        return not differ, ("identical in all 5 modes" if not differ else "differ: " + ", ".join(differ)) + note, \
            {"differ": differ, "pdl": pdl_used}

    def gemm_errors(self):
        """One record per path (each is its own line)."""
        N = 64 if self.quick else 512
        rng = np.random.default_rng(5)
        # (name, kind, rows, path or tc, limit): the tests' tolerances, relative to max |reference|
        paths = [("dense GEMV (1 row)", "bf16", 1, 1, 5e-6), ("dense tensor-core GEMV (8 rows)", "bf16", 8, 3, 5e-6),
                 ("dense tensor-core GEMM (64 rows)", "bf16", 64, 2, 5e-5),
                 ("experts GEMV (8 rows)", "mxfp4", 8, False, 1e-5), ("experts GEMM (64 rows)", "mxfp4", 64, True, 5e-5)]
        for name, kind, M, path, limit in paths:
            def one(name=name, kind=kind, M=M, path=path, limit=limit):
                self.require_device()
                figs, worst = [], 0.0
                for K in (2880, 4096):
                    for inputs in ("random", "same-sign"):
                        x = rng.standard_normal((M, K)).astype(np.float32)
                        if kind == "bf16":
                            w = rng.standard_normal((N, K)) / np.sqrt(K)
                            if inputs == "same-sign":  # every product of row 0 positive
                                w = np.abs(w) * np.sign(x[0])
                            wb = to_bf16(w.astype(np.float32))
                            ref = x.astype(np.float64) @ from_bf16(wb).reshape(N, K).astype(np.float64).T
                            got = self.k.matmul_bf16(x, wb, None, path)
                        else:
                            blocks = rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8)
                            scales = rng.integers(118, 124, (N, K // 32), dtype=np.uint8)
                            if inputs == "same-sign":  # x > 0, weights >= 0: every product positive
                                x = np.abs(x)
                                blocks &= 0x77
                            ref = x.astype(np.float64) @ mxfp4_dequant(blocks, scales).T
                            got = self.k.matmul_mxfp4(x, blocks, scales, None, path)
                        err = float(np.abs(got - ref).max() / np.abs(ref).max())
                        worst = max(worst, err)
                        figs.append(f"{err:.1e}")
                fig = f"K=2880 {figs[0]}/{figs[1]}, K=4096 {figs[2]}/{figs[3]} (random/same-sign; limit {limit:.0e})"
                return worst <= limit, fig, {"worst": worst, "limit": limit}
            self.run(f"error: {name}", one)
        return None

    def kernel_attributes(self):
        self.require_device()
        attrs = self.k.kernel_attributes()
        with open(os.path.join(self.dir, "kernel_attributes.txt"), "w") as f:
            f.write(f"{'kernel':<70}{'threads':>8}{'max':>6}{'regs':>6}{'local':>7}{'static':>8}\n")
            for a in attrs:
                f.write(f"{a['name'][:69]:<70}{a['launch_threads']:>8}{a['max_threads']:>6}{a['regs']:>6}"
                        f"{a['local_bytes']:>7}{a['static_shared_bytes']:>8}\n")
        unlaunchable = [a["name"] for a in attrs if a["max_threads"] < a["launch_threads"]]
        spills = [a["name"] for a in attrs if a["local_bytes"] > 256]
        top = max(attrs, key=lambda a: a["regs"])
        loc = max(attrs, key=lambda a: a["local_bytes"])
        fig = (f"{len(attrs)} kernels, most registers {top['regs']} ({top['name'][:40]}), most local memory "
               f"{loc['local_bytes']} B ({loc['name'][:40]})")
        if unlaunchable:
            fig += f"; over their block's resources: {', '.join(n[:40] for n in unlaunchable)}"
        if spills:
            fig += f"; spill over 256 B: {', '.join(n[:40] for n in spills)}"
        return not unlaunchable and not spills, fig, {"kernels": len(attrs)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cuda-emu"])
    ap.add_argument("--quick", action="store_true", help="small sizes (the emulator's rehearsal)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    c = Checks(args.out, args.device, args.quick)
    c.run("subnormal probes", c.subnormal_probes)
    c.run("arrival counters", c.arrival_counters)
    c.run("sampling compaction", c.sampling_compaction)
    c.run("launch modes", c.launch_modes)
    c.gemm_errors()
    c.run("kernel attributes", c.kernel_attributes)
    print(f"{c.failed} check(s) failed", flush=True)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
