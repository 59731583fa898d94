"""bench/bench_cpu.py refuses, with a clear message, to fill a disk that lacks room for the
full-size synthetic checkpoint it would write."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gptoss._core") is None,
                                reason="compiled module gptoss._core not built")


def _load_bench_cpu():
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "bench" / "bench_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_checks_free_disk_first(tmp_path, monkeypatch, capsys):
    bench = _load_bench_cpu()
    seen = []

    def small_disk(path):
        seen.append(path)
        return type("Usage", (), {"total": 10 << 30, "used": 9 << 30, "free": 1 << 30})()

    monkeypatch.setattr(bench.shutil, "disk_usage", small_disk)
    monkeypatch.setattr(sys, "argv", ["bench_cpu.py", "--workdir", str(tmp_path)])
    assert bench.main() == 1
    err = capsys.readouterr().err
    assert "needs 13.8 GB" in err and "1.1 GB free" in err and "--workdir" in err
    assert seen and not os.listdir(tmp_path)  # nothing written, nothing left behind


def test_bench_cpu_help_says_what_it_writes():
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_cpu.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "13.8 GB" in r.stdout and "/tmp" in r.stdout
