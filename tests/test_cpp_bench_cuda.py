"""The CUDA kernel benchmarks (bench/cuda_*.cc, README "Benchmarks in C++"), built with the
documented presets and run once at their smallest sizes: on the CPU emulator always (preset
bench-cuda-emu: every benchmark's own check against its host reference must pass), and built for
real CUDA where a GPU is (preset bench-cuda), where it runs the same smoke; without a GPU that
build runs only with GPTOSS_BENCH_CUDA_REAL_BUILD=1, and the program must then exit cleanly
(status 2, "no CUDA device"). Timings are never asserted.

Needs cmake and Google Benchmark as tests/test_cpp_bench.py does (GPTOSS_REQUIRE_CPP_BENCH=1
makes their absence a failure); the real-CUDA build also needs nvcc and skips without it."""
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every CUDA kernel family the suite must cover (a benchmark name starts with one of these).
FAMILIES = ["cuda_gemv_bf16/", "cuda_gemm_bf16/", "cuda_moe_decode_mxfp4/", "cuda_moe_prefill_mxfp4/",
            "cuda_attn_decode/full/", "cuda_attn_decode/window/", "cuda_attn_prefill/full/",
            "cuda_attn_prefill/window/", "cuda_rmsnorm/", "cuda_rope_kv_store/", "cuda_router_topk/gpt-oss-20b",
            "cuda_router_topk/gpt-oss-120b", "cuda_sample/greedy/", "cuda_sample/top_k"]


def _unavailable(why: str) -> None:
    if os.environ.get("GPTOSS_REQUIRE_CPP_BENCH") == "1":
        pytest.fail(why)
    pytest.skip(why)


def _build(preset: str, target: str, *defines: str) -> Path:
    if shutil.which("cmake") is None:
        _unavailable("cmake is not installed")
    version = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.split()[2]
    if tuple(int(x) for x in version.split(".")[:2]) < (3, 26):
        _unavailable(f"cmake {version} is older than the 3.26 CMakeLists.txt needs (pip install cmake)")
    conf = subprocess.run(["cmake", "--preset", preset, *defines], cwd=ROOT, capture_output=True, text=True)
    if conf.returncode != 0:
        if "Google Benchmark" in conf.stderr:
            _unavailable("Google Benchmark is not installed (apt-get install libbenchmark-dev)")
        pytest.fail(f"cmake --preset {preset} failed:\n{conf.stdout[-4000:]}\n{conf.stderr[-4000:]}")
    jobs = str(os.cpu_count() or 2)
    build = subprocess.run(["cmake", "--build", "--preset", preset, "-j", jobs, "--target", target], cwd=ROOT,
                           capture_output=True, text=True)
    assert build.returncode == 0, f"build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    presets = {c["name"]: c for c in json.loads((ROOT / "CMakePresets.json").read_text())["configurePresets"]}
    binary = Path(presets[preset]["binaryDir"].replace("${sourceDir}", str(ROOT))) / "bench" / target
    assert binary.exists(), binary
    return binary


def _check_smoke(binary: Path) -> dict:
    r = subprocess.run([str(binary), "--gptoss_smoke", "--benchmark_format=json"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{binary.name} exited with {r.returncode}:\n{r.stderr[-4000:]}"
    out = json.loads(r.stdout)
    runs = {b["name"]: b for b in out["benchmarks"]}
    assert runs, "no benchmark ran"
    for name, b in runs.items():
        assert not b.get("error_occurred"), f"{name}: {b.get('error_message')}"
        assert b["iterations"] == 1, name  # smoke mode: one iteration each
        assert b["real_time"] > 0, name
        assert b.get("bw_frac", 0) > 0 or b.get("FLOP/s", 0) > 0, f"{name}: no roofline counter"
    for fam in FAMILIES:
        assert any(n.startswith(fam) for n in runs), f"no benchmark of {fam}"
    assert float(out["context"]["device_copy_GBps"]) > 0
    return out


def test_cuda_benchmarks_on_the_emulator() -> None:
    if platform.system() != "Linux":
        pytest.skip("the CUDA emulator (cuda/emu/) is built on Linux only")
    out = _check_smoke(_build("bench-cuda-emu", "gptoss_bench_cuda_emu"))
    assert "emu" in out["context"]["device"]


def _gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


def test_cuda_benchmarks_real_build() -> None:
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc is not installed")
    gpu = _gpu_present()
    if not gpu and os.environ.get("GPTOSS_BENCH_CUDA_REAL_BUILD") != "1":
        # The same sources build and run against the emulator above, and `pip install` compiles
        # cuda/ with nvcc already: without a GPU this build only adds its link (~2 min in CI).
        pytest.skip("no GPU: the real-CUDA benchmark build runs where a GPU is (GPTOSS_BENCH_CUDA_REAL_BUILD=1 forces it)")
    # Without a GPU, one architecture is enough to prove it compiles (the default list is slower).
    binary = _build("bench-cuda", "gptoss_bench_cuda", f"-DGPTOSS_CUDA_ARCHS={'' if gpu else '90-real'}")
    if gpu:
        _check_smoke(binary)
        return
    r = subprocess.run([str(binary), "--gptoss_smoke"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA device" in r.stderr, (r.returncode, r.stderr[-2000:])
    assert "Benchmark" not in r.stdout
