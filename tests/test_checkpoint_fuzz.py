"""Fuzzing the loader: thousands of random mutations of tiny checkpoints (tests/checkpoint_fuzz.py
says which, and what each load must satisfy), loaded in a child process so that a crash or a hang
is caught and pinned to its case.

GPTOSS_FUZZ_CASES sets the number of cases (default 1000, about 30 s here); GPTOSS_FUZZ_SEED the
seed (default: fixed under CI, so that CI is reproducible, fresh otherwise); GPTOSS_FUZZ_REPORT a
file for every case's mutations and outcome. A failure names the seed and case;
`python tests/checkpoint_fuzz.py worker SEED I I+1 HF ORIGINAL WORKDIR` replays it.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import select
import subprocess
import sys
import time

import pytest

pytest.importorskip("safetensors")
for _oracle in ("torch", "transformers"):  # imported by the worker only
    if importlib.util.find_spec(_oracle) is None:
        pytest.skip(f"needs {_oracle}", allow_module_level=True)

HERE = os.path.dirname(__file__)
CASE_TIMEOUT_S = 60.0  # a case takes ~20 ms; only a hang gets near this


def _seed() -> int:
    if "GPTOSS_FUZZ_SEED" in os.environ:
        return int(os.environ["GPTOSS_FUZZ_SEED"])
    return 12345 if os.environ.get("CI") else random.randrange(2 ** 31)


def run_fuzz(n: int, seed: int, bases: dict[str, str], work: str) -> tuple[list[dict], list[dict]]:
    """(results, failures) of cases [0, n); a worker that dies or stalls fails its case and is
    replaced by one that goes on with the next."""
    results: list[dict] = []
    failures: list[dict] = []
    i = 0
    while i < n:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "checkpoint_fuzz.py"), "worker", str(seed),
                                 str(i), str(n), bases["hf"], bases["original"], work],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        current = None
        buf = ""
        deadline = time.time() + 300  # the worker's start: imports and two baseline loads
        try:
            while True:
                r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
                if not r:  # stalled
                    failures.append(dict(index=current, problem=f"hang (no answer in {CASE_TIMEOUT_S:.0f} s)"))
                    proc.kill()
                    break
                line = proc.stdout.readline()
                if not line:  # the worker died
                    proc.wait()
                    failures.append(dict(index=current, problem=f"crash (exit status {proc.returncode}): "
                                                                + proc.stderr.read()[-800:]))
                    break
                msg = json.loads(line)
                if "begin" in msg:
                    current = msg["begin"]
                    deadline = time.time() + CASE_TIMEOUT_S
                elif "index" in msg:
                    results.append(msg)
                    if msg.get("problem"):
                        failures.append(msg)
                    current = None
                    i = msg["index"] + 1
                    if i >= n:
                        break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if current is None and i < n and failures and failures[-1].get("index") is None:
            raise AssertionError(f"the fuzz worker failed before its first case: {failures[-1]['problem']}")
        if current is not None:
            i = current + 1
    return results, failures


def _summary(results: list[dict]) -> str:
    c = collections.Counter(r["outcome"] for r in results)
    neutral = sum(1 for r in results if r["neutral"] and r["outcome"] == "loaded")
    return f"{len(results)} cases: {dict(c)}, {neutral} neutral mutations loaded and compared to the baseline"


@pytest.mark.slow
def test_fuzz_checkpoints(tmp_path, capsys):
    from conftest import tiny_config
    from gptoss.synthetic import write_checkpoint

    bases = {"hf": str(tmp_path / "base-hf"), "original": str(tmp_path / "base-original")}
    write_checkpoint(tiny_config("tiny"), bases["hf"], seed=3, layout="hf", hf_shards=2)
    write_checkpoint(tiny_config("tiny"), bases["original"], seed=3, layout="original")
    work = str(tmp_path / "work")
    os.makedirs(work)
    n, seed = int(os.environ.get("GPTOSS_FUZZ_CASES", "1000")), _seed()
    t0 = time.time()
    results, failures = run_fuzz(n, seed, bases, work)
    with capsys.disabled():
        print(f"\nfuzz seed {seed}: {_summary(results)} in {time.time() - t0:.0f} s")
    if os.environ.get("GPTOSS_FUZZ_REPORT"):  # every case's mutations and outcome, as JSON lines
        with open(os.environ["GPTOSS_FUZZ_REPORT"], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results + failures)
    report = "\n".join(f"case {f.get('index')}: {f.get('ops')}: {f['problem']}" for f in failures[:20])
    assert not failures, f"seed {seed}: {len(failures)} failing cases\n{report}"
    assert len(results) == n
    # The mutations reach both outcomes, in both layouts, and the comparisons with the baseline.
    assert {r["outcome"] for r in results} == {"loaded", "refused"}
    assert sum(1 for r in results if r["neutral"] and r["outcome"] == "loaded") > n // 20
