"""Where a checkpoint's files are, and whether they agree with each other and with config.json.

`open_checkpoint` is what `Model(path)` loads through: it finds the layout and the safetensors
files, reads config.json, checks the index against the shards' headers and every size of the
config against the tensors, all before anything is allocated or computed from those sizes.
"""

from __future__ import annotations

import os
from typing import Any

from .config import ModelConfig, load_json
from .errors import CheckpointError

__all__ = ["find_checkpoint", "open_checkpoint", "check_tensors"]

INDEX_NAME = "model.safetensors.index.json"


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError as e:
        raise CheckpointError(f"{d}: cannot list the directory ({e.strerror or e})") from None


def _safetensors_files(d: str) -> list[str]:
    return sorted(os.path.join(d, f) for f in _listdir(d) if f.endswith(".safetensors"))


def read_weight_map(index_path: str) -> dict[str, str]:
    """The index's {tensor name: shard file name}, checked for shape: shard names are plain file
    names in the index's own directory (no paths), and every shard is a file that exists."""
    idx = load_json(index_path, "index")
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict):
        raise CheckpointError(f"{index_path}: malformed index (no 'weight_map' object)")
    if not wm:
        raise CheckpointError(f"{index_path}: the weight_map is empty")
    directory = os.path.dirname(index_path)
    checked: set[str] = set()
    for name, shard in wm.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{index_path}: weight_map[{name!r}] must be a file name, got {shard!r}")
        if shard in checked:
            continue
        if (not shard or shard in (".", "..") or "\0" in shard or "/" in shard or "\\" in shard
                or os.path.basename(shard) != shard):
            raise CheckpointError(f"{index_path}: weight_map[{name!r}] = {shard!r} is not a file name "
                                  "in the checkpoint directory")
        if not os.path.isfile(os.path.join(directory, shard)):
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        checked.add(shard)
    return wm


def find_checkpoint(path: str) -> tuple[str, str, list[str]]:
    """Locate the checkpoint in `path`: returns (layout, directory, safetensors files).

    layout is "hf" (config.json + model.safetensors.index.json or model*.safetensors at the root)
    or "original" (the `original/` folder, or a folder holding the gpt-oss ModelConfig).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    cfg_path = os.path.join(path, "config.json")
    index_path = os.path.join(path, INDEX_NAME)
    sub = os.path.join(path, "original")
    if os.path.isfile(cfg_path):
        d = load_json(cfg_path, "config.json")
        is_hf = isinstance(d, dict) and ("model_type" in d or "num_local_experts" in d)
        if is_hf:
            if os.path.isfile(index_path):
                wm = read_weight_map(index_path)
                return "hf", path, sorted({os.path.join(path, v) for v in wm.values()})
            files = _safetensors_files(path)
            if files:
                return "hf", path, files
            if os.path.isdir(sub):
                return find_checkpoint(sub)
            raise CheckpointError(f"{path}: no *.safetensors files next to config.json")
        files = _safetensors_files(path)
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors files next to config.json")
        return "original", path, files
    if os.path.isdir(sub):
        return find_checkpoint(sub)
    raise CheckpointError(f"{path}: no config.json (expected a gpt-oss checkpoint directory)")


def _check_index(index_path: str, files: list[str]) -> None:
    """The index lists exactly the tensors each shard holds (after each header's own checks)."""
    from . import _core

    wm = read_weight_map(index_path)
    listed: dict[str, set[str]] = {}
    for name, shard in wm.items():
        listed.setdefault(shard, set()).add(name)
    for f in files:
        shard = os.path.basename(f)
        held = {t[0] for t in _core.read_safetensors_header(f)}
        want = listed.get(shard, set())
        if held != want:
            extra, lacking = sorted(held - want), sorted(want - held)
            why = (f"holds {extra[0]!r}, which the index does not list for it" if extra else
                   f"does not hold {lacking[0]!r}, which the index maps to it")
            n = len(extra) + len(lacking)
            raise CheckpointError(f"{index_path}: shard {shard} {why}"
                                  + (f" ({n - 1} more disagreements)" if n > 1 else ""))


def check_tensors(config: ModelConfig, layout: str, files: list[str]) -> None:
    """The files hold exactly the tensors a model of `config` has, with its shapes and dtypes
    (reads the headers only)."""
    from . import _core

    dims: dict[str, Any] = {k: getattr(config, k) for k in (
        "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
        "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads", "sliding_window")}
    dims["max_context"] = config.max_position_embeddings
    _core.check_checkpoint_tensors(dims, files, layout)


def open_checkpoint(path: str) -> tuple[str, str, list[str], ModelConfig]:
    """(layout, directory, files, config) of the checkpoint in `path`, everything checked that
    can be without reading tensor data: raises CheckpointError naming the file and the key or
    tensor at fault."""
    layout, directory, files = find_checkpoint(path)
    config = ModelConfig.from_file(os.path.join(directory, "config.json"))
    index_path = os.path.join(directory, INDEX_NAME)
    if layout == "hf" and os.path.isfile(index_path):
        _check_index(index_path, files)
    try:
        check_tensors(config, layout, files)
    except CheckpointError as e:  # every message names the checkpoint
        raise CheckpointError(str(e) if directory in str(e) else f"{directory}: {e}") from None
    return layout, directory, files, config
