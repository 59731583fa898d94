"""The C++ benchmarks (bench/, README "Benchmarks in C++"): built with the documented preset
(no Python package involved), each run once at its smallest size, its JSON parsed, every
benchmark's own check against its reference passed; the end-to-end one's logits equal
gptoss.Model's on the same checkpoint. Timings are never asserted.

Needs cmake and Google Benchmark (apt-get install libbenchmark-dev); without them the tests
skip, unless GPTOSS_REQUIRE_CPP_BENCH=1 (CI sets it), where that is a failure."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build-bench" / "bench"

# Every kernel family the suite must cover (a benchmark name starts with one of these).
FAMILIES = ["gemv_bf16/", "gemm_bf16/", "moe_decode_mxfp4/", "moe_prefill_mxfp4/", "router_topk/gpt-oss-20b",
            "router_topk/gpt-oss-120b", "rmsnorm/", "rope/", "swiglu/", "attn_decode/full/", "attn_decode/window/",
            "attn_prefill/full/", "attn_prefill/window/", "engine_core/decode_step/"]


def _unavailable(why: str) -> None:
    if os.environ.get("GPTOSS_REQUIRE_CPP_BENCH") == "1":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def bench_dir() -> Path:
    if shutil.which("cmake") is None:
        _unavailable("cmake is not installed")
    version = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.split()[2]
    if tuple(int(x) for x in version.split(".")[:2]) < (3, 26):
        _unavailable(f"cmake {version} is older than the 3.26 CMakeLists.txt needs (pip install cmake)")
    conf = subprocess.run(["cmake", "--preset", "bench"], cwd=ROOT, capture_output=True, text=True)
    if conf.returncode != 0:
        if "Google Benchmark" in conf.stderr:
            _unavailable("Google Benchmark is not installed (apt-get install libbenchmark-dev)")
        pytest.fail(f"cmake --preset bench failed:\n{conf.stdout}\n{conf.stderr}")
    jobs = str(os.cpu_count() or 2)
    build = subprocess.run(["cmake", "--build", "--preset", "bench", "-j", jobs], cwd=ROOT, capture_output=True,
                           text=True)
    assert build.returncode == 0, f"build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    return BUILD


def _run_json(cmd: list, timeout: float = 300) -> dict:
    r = subprocess.run([str(c) for c in cmd] + ["--benchmark_format=json"], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd[0]} exited with {r.returncode}:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout)


def _check_results(out: dict) -> dict:
    runs = {b["name"]: b for b in out["benchmarks"]}
    assert runs, "no benchmark ran"
    for name, b in runs.items():
        assert not b.get("error_occurred"), f"{name}: {b.get('error_message')}"
        assert b["iterations"] == 1, name  # smoke mode: one iteration each
        assert b["real_time"] > 0, name
    assert float(out["context"]["read_bandwidth_GBps"]) > 0
    assert float(out["context"]["fp32_peak_GFLOPs"]) > 0
    return runs


def test_kernel_benchmarks_smoke(bench_dir: Path) -> None:
    runs = _check_results(_run_json([bench_dir / "gptoss_bench", "--gptoss_smoke"]))
    for fam in FAMILIES:
        assert any(n.startswith(fam) for n in runs), f"no benchmark of {fam}"
    for name, b in runs.items():  # each kernel reports a roofline fraction; the engine core its time per sequence
        if name.startswith("engine_core/"):
            assert b["per_seq"] > 0, name
        else:
            assert "bw_frac" in b or "peak_frac" in b, name


def test_unknown_flag_is_refused(bench_dir: Path) -> None:
    r = subprocess.run([bench_dir / "gptoss_bench", "--gptoss_smok"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unrecognized" in r.stderr


def _xorshift_tokens(n: int, vocab: int, seed: int) -> list:
    m = (1 << 64) - 1
    s = (seed * 0x9E3779B97F4A7C15 + 1) & m
    out = []
    for _ in range(n):
        s ^= (s << 13) & m
        s ^= s >> 7
        s ^= (s << 17) & m
        out.append(s % vocab)
    return out


@pytest.mark.parametrize("overrides", [{}, dict(num_hidden_layers=3, sliding_window=4, rope_theta=10000.0,
                                                rope_truncate=True, rope_scaling_factor=8.0)],
                         ids=["tiny", "tiny-3-layers-other-rope"])
def test_end_to_end_smoke_matches_python(bench_dir: Path, tmp_path: Path, overrides: dict) -> None:
    from gptoss import Model
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    ckpt = tmp_path / "ckpt"
    write_checkpoint(preset("tiny", **overrides), str(ckpt), seed=3)
    logits_file = tmp_path / "logits.bin"
    out = _run_json([bench_dir / "gptoss_bench_e2e", "--gptoss_smoke", f"--gptoss_checkpoint={ckpt}",
                     f"--gptoss_logits_out={logits_file}"])
    runs = _check_results(out)
    assert any(n.startswith("e2e_prefill/") for n in runs)
    assert any(n.startswith("e2e_decode/batch:1/") for n in runs)
    assert any(n.startswith("e2e_decode/batch:2/") for n in runs)
    raw = logits_file.read_bytes()
    tokens = np.frombuffer(raw[:32], dtype=np.int32)
    m = Model(str(ckpt))
    vocab = m.config.vocab_size
    assert tokens.tolist() == _xorshift_tokens(8, vocab, 1)
    got = np.frombuffer(raw[32:], dtype=np.float32).reshape(8, vocab)
    ref = m.forward(tokens.tolist())
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_end_to_end_bad_checkpoint_is_a_clear_error(bench_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    r = subprocess.run([bench_dir / "gptoss_bench_e2e", f"--gptoss_checkpoint={missing}"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and str(missing) in r.stderr and "config.json" in r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"hidden_size": 64}')
    r = subprocess.run([bench_dir / "gptoss_bench_e2e", f"--gptoss_checkpoint={tmp_path / 'bad'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "num_hidden_layers" in r.stderr
