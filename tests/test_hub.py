"""Hugging Face repo ids as checkpoints: resolved offline in a local cache laid out exactly as
huggingface_hub lays it out, checked against huggingface_hub's own offline lookup."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss import CheckpointError
from gptoss.hub import cached_snapshot, download_command, hf_cache_dir, resolve_checkpoint

REPO = "openai/gpt-oss-20b"
_HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_HUB_OFFLINE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in _HF_VARS:
        monkeypatch.delenv(v, raising=False)


def _fake_cache(cache: Path, src: Path, repo: str = REPO, branch: str = "main") -> Path:
    """Put the files of `src` into `cache` the way huggingface_hub stores a snapshot: blobs named
    by hash, snapshots/<commit>/ holding relative symlinks to them, refs/<branch> -> commit."""
    root = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(os.urandom(16)).hexdigest()
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(src.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snap / f.relative_to(src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / branch).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    d = tmp_path_factory.mktemp("tiny-hub")
    write_checkpoint(preset("tiny"), str(d), seed=3)
    return d


def test_cache_dir_follows_huggingface_hub_variables(tmp_path, monkeypatch):
    home = Path.home()
    assert hf_cache_dir() == home / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hf_cache_dir() == tmp_path / "cache"


def test_cache_dir_agrees_with_huggingface_hub(tmp_path):
    # huggingface_hub reads its variables at import: ask a fresh interpreter.
    code = "import huggingface_hub.constants as c, gptoss.hub as h; print(c.HF_HUB_CACHE); print(h.hf_cache_dir())"
    for env in ({"HF_HOME": str(tmp_path / "a")}, {"HF_HUB_CACHE": str(tmp_path / "b"), "HF_HOME": str(tmp_path / "c")},
                {"XDG_CACHE_HOME": str(tmp_path / "d")}):
        e = {k: v for k, v in os.environ.items() if k not in _HF_VARS}
        e.update(env)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True)
        theirs, ours = r.stdout.split()
        assert Path(theirs) == Path(ours), env


def test_resolution_matches_huggingface_hub_offline(tiny_dir, tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = _fake_cache(cache, tiny_dir)
    _fake_cache(cache, tiny_dir, branch="other")  # a second snapshot for another branch
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    theirs = hub.snapshot_download(REPO, cache_dir=str(cache), local_files_only=True)
    assert Path(resolve_checkpoint(REPO)) == Path(theirs) == snap
    other = cached_snapshot(REPO, "other")
    assert other is not None and other != snap
    assert Path(resolve_checkpoint(f"{REPO}@other")) == other
    assert Path(resolve_checkpoint(f"{REPO}@{snap.name}")) == snap  # a commit hash
    assert hub.try_to_load_from_cache(REPO, "config.json", cache_dir=str(cache)) == str(snap / "config.json")


def test_model_loads_a_repo_id_from_the_cache(tiny_dir, tmp_path, monkeypatch):
    import gptoss

    snap = _fake_cache(tmp_path / "hub", tiny_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    m = gptoss.Model(REPO)
    assert Path(m.checkpoint_dir) == snap
    np = pytest.importorskip("numpy")
    want = gptoss.Model(str(tiny_dir)).forward([5, 6, 7])
    np.testing.assert_array_equal(m.forward([5, 6, 7]), want)


def test_missing_repo_says_how_to_download(tmp_path, monkeypatch):
    import gptoss

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        gptoss.Model(REPO)
    msg = str(e.value)
    assert download_command(REPO) in msg and f"gptoss download {REPO}" in msg and str(tmp_path) in msg
    assert download_command(REPO) == 'hf download openai/gpt-oss-20b --exclude "original/*" --exclude "metal/*"'
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "not" / "a" / "repo"))


def test_download_command_offline_returns_the_cached_snapshot(tiny_dir, tmp_path):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    snap = _fake_cache(cache, tiny_dir)
    env = {k: v for k, v in os.environ.items() if k not in _HF_VARS}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "gptoss", "download", REPO], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == snap
    r = subprocess.run([sys.executable, "-m", "gptoss", "download", "openai/not-there"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("gptoss: error:") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "gptoss", "download", "not a repo"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1 and "not a Hugging Face repo id" in r.stderr
