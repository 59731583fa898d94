"""Hugging Face repo ids as checkpoint paths: resolved offline in the local Hugging Face cache.

`resolve_checkpoint("openai/gpt-oss-20b")` returns the cached snapshot folder, found in the
cache's standard layout (``models--openai--gpt-oss-20b/refs/main`` naming the commit whose
``snapshots/<commit>/`` holds the files) under the cache folder the Hugging Face tools use:
``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``. Nothing is downloaded; when the repo is not cached the error
gives the exact `hf download` command. `download()` (the ``gptoss download`` command) fetches
what gptoss needs through ``huggingface_hub`` when the network allows it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

__all__ = ["hf_cache_dir", "cached_snapshot", "resolve_checkpoint", "download", "download_command",
           "looks_like_repo_id", "SKIPPED_FOLDERS"]

# The hub repositories also hold the original/ layout (a second copy of the weights) and metal/
# (weights for Apple's Metal reference code): gptoss reads the HF layout at the root.
SKIPPED_FOLDERS = ("original/*", "metal/*")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_like_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s)) and ".." not in s


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the same environment variables as huggingface_hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def cached_snapshot(repo_id: str, revision: str = "main", cache_dir: Optional[Path] = None) -> Optional[Path]:
    """The cached snapshot folder of `repo_id` at `revision` (a branch, tag or commit), or None."""
    root = (cache_dir or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    if _COMMIT.match(revision):
        commit: Optional[str] = revision
    else:
        try:
            commit = (root / "refs" / revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snap = root / "snapshots" / str(commit)
    return snap if snap.is_dir() else None


def download_command(repo_id: str) -> str:
    excludes = " ".join(f'--exclude "{p}"' for p in SKIPPED_FOLDERS)
    return f"hf download {repo_id} {excludes}"


def resolve_checkpoint(path: str) -> str:
    """`path` itself when it exists, else the cached snapshot of the repo id `path` (optionally
    ``repo@revision``); raises `CheckpointError` saying how to get it otherwise."""
    if os.path.exists(path):
        return path
    repo, _, revision = path.partition("@")
    if not looks_like_repo_id(repo):
        raise CheckpointError(f"{path}: not a directory (no such checkpoint folder)")
    snap = cached_snapshot(repo, revision or "main")
    if snap is None:
        raise CheckpointError(
            f"{path}: no such folder, and the Hugging Face repo {repo!r} is not in the local cache "
            f"({hf_cache_dir()}). Download it with `gptoss download {repo}` or "
            f"`{download_command(repo)}` (the original/ and metal/ folders are not needed), "
            "or pass the path of a downloaded checkpoint folder.")
    return str(snap)


def download(repo_id: str, revision: Optional[str] = None, local_dir: Optional[str] = None) -> str:
    """Download what gptoss needs of `repo_id` (everything but original/ and metal/) through
    ``huggingface_hub``; returns the local folder. Honours HF_HUB_OFFLINE and the cache variables."""
    if not looks_like_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face repo id (like openai/gpt-oss-20b)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("gptoss download needs the huggingface_hub package: pip install huggingface_hub "
                          f"(or run `{download_command(repo_id)}` with the hf command)") from None
    return str(snapshot_download(repo_id, revision=revision, local_dir=local_dir,
                                 ignore_patterns=list(SKIPPED_FOLDERS)))
