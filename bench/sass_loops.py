"""Static check of the CUDA kernels: the machine instructions (SASS) of every loop, by kind.

    python bench/sass_loops.py [--arch 90] [--kernel NAME] [cuda/moe.cu ...]

Compiles each source to a cubin with nvcc, disassembles it with cuobjdump (the CUDA toolkit's,
or the pip wheel nvidia-cuda-cuobjdump) and prints, for each kernel whose name contains NAME,
every loop (a backward branch) with its length and its most frequent instruction kinds. Loops
unrolled by the compiler show several iterations in one body.

Why: a decode kernel must issue fewer instructions per byte than an SM can while its share of
the memory bandwidth delivers those bytes (H200: ~4 warp instructions per clock per SM against
~17-21 bytes per clock per SM, i.e. ~3.4 warp instructions per 16 bytes), or it cannot reach
the bandwidth whatever the occupancy. This needs no GPU; bench/RESULTS.md records the figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuobjdump() -> str:
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    try:  # the pip wheel nvidia-cuda-cuobjdump
        import nvidia  # type: ignore

        for base in nvidia.__path__:
            for sub in ("cu13", "cuda_cuobjdump", "cu12"):
                p = os.path.join(base, sub, "bin", "cuobjdump")
                if os.path.exists(p):
                    return p
    except ImportError:
        pass
    sys.exit("cuobjdump not found: install the CUDA toolkit's, or pip install nvidia-cuda-cuobjdump")


def sass_of(src: str, arch: str, tmp: str) -> str:
    cubin = os.path.join(tmp, os.path.basename(src) + ".cubin")
    subprocess.run(["nvcc", "-std=c++17", "-O3", "--expt-relaxed-constexpr", f"-arch=sm_{arch}", "-cubin",
                    "-I" + os.path.join(ROOT, "cuda"), "-I" + os.path.join(ROOT, "csrc"), "-o", cubin, src], check=True)
    return subprocess.run([cuobjdump(), "-sass", cubin], check=True, capture_output=True, text=True).stdout


def loops(sass: str, name_filter: str):
    """(kernel, [(start, end, n, Counter of opcodes)]) for each kernel in a cuobjdump listing."""
    for body in re.split(r"\n\s*Function : ", sass)[1:]:
        name = body.split("\n", 1)[0].strip()
        if name_filter not in name:
            continue
        ins = []
        for line in body.split("\n"):
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2)))
        at = {a: i for i, (a, _) in enumerate(ins)}
        found = []
        for i, (a, text) in enumerate(ins):
            if "BRA" not in text:
                continue
            m = re.search(r"0x([0-9a-f]+)", text.split("BRA", 1)[1])
            if not m or int(m.group(1), 16) >= a or int(m.group(1), 16) not in at:
                continue
            start = at[int(m.group(1), 16)]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                                      for _, t in ins[start:i + 1])
            found.append((ins[start][0], a, i + 1 - start, ops))
        yield name, found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="cuda/*.cu files (default: all)")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--kernel", default="", help="only kernels whose (mangled) name contains this")
    ap.add_argument("--top", type=int, default=12, help="instruction kinds shown per loop")
    args = ap.parse_args()
    srcs = args.sources or sorted(os.path.join(ROOT, "cuda", f) for f in os.listdir(os.path.join(ROOT, "cuda"))
                                  if f.endswith(".cu") and f != "test_api.cu" and not f.startswith("engine"))
    with tempfile.TemporaryDirectory() as tmp:
        for src in srcs:
            for name, found in loops(sass_of(src, args.arch, tmp), args.kernel):
                print(f"{os.path.basename(src)}  {name}")
                for s, e, n, ops in found:
                    mix = " ".join(f"{k}:{v}" for k, v in ops.most_common(args.top))
                    print(f"    loop {s:#x}-{e:#x}: {n} instructions  {mix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
