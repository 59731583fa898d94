"""The tokenizer files gptoss.synthetic writes with the full vocabulary: read by Hugging Face's
own libraries (`tokenizers`, `transformers`) exactly as tiktoken's o200k_harmony encodes, laid
out like the hub's, and used by gptoss without any --vocab-file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fixtures_vocab import (hf_special_tokens, o200k_vocab_dir, o200k_vocab_file,  # noqa: F401
                            parse_tiktoken, tokenizer, write_hf_tokenizer_json)
from gptoss.tokenizer import load_tokenizer
from gptoss.tokenizer_files import TOKENIZER_FILES, bundled_o200k_bytes, write_tokenizer_files
from test_tokenizer import CORPUS


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tokfiles")
    paths = write_tokenizer_files(d)
    assert sorted(Path(p).name for p in paths) == sorted(TOKENIZER_FILES)
    return d


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x4e00, 0x4fff),
             (0x1f300, 0x1f64f), (0x0600, 0x06ff)]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(pools)
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))))
            parts.append(rng.choice([" ", "  ", "\n", "\t", "", "'s ", "123", ".\n\n", "\r\n"]))
        out.append("".join(parts))
    return out


def test_bundled_vocabulary_is_the_genuine_one(o200k_vocab_file):  # noqa: F811
    assert bundled_o200k_bytes() == o200k_vocab_file.read_bytes()


def test_same_document_as_an_independent_writer(written, o200k_vocab_file, tmp_path):  # noqa: F811
    # The test suite's own writer (no gptoss code) lays tokenizer.json out as the hub does.
    ref = write_hf_tokenizer_json(parse_tiktoken(o200k_vocab_file.read_bytes()), tmp_path / "ref.json")
    ours = json.loads((written / "tokenizer.json").read_text(encoding="utf-8"))
    want = json.loads(ref.read_text(encoding="utf-8"))
    assert ours["model"]["vocab"] == want["model"]["vocab"]
    assert ours["model"]["merges"] == want["model"]["merges"]
    assert [(t["id"], t["content"]) for t in ours["added_tokens"]] == hf_special_tokens()
    assert ours["pre_tokenizer"] == want["pre_tokenizer"] and ours["decoder"] == want["decoder"]


def test_hf_tokenizers_encode_like_tiktoken(written, tokenizer):  # noqa: F811
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(written / "tokenizer.json"))
    hub_specials = {name for _, name in hf_special_tokens()}  # the hub's file knows only these
    for text in CORPUS + _random_texts(60, seed=random.randrange(1 << 30)):
        want = tokenizer.encode(text, allowed_special=hub_specials)
        assert hf.encode(text, add_special_tokens=False).ids == want, text
        assert hf.decode(want, skip_special_tokens=False) == tokenizer.decode(want)


def test_transformers_loads_the_folder(written, tokenizer):  # noqa: F811
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(written), local_files_only=True)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (199998, 200002, 199999)
    text = "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"
    assert tok.encode(text, add_special_tokens=False) == tokenizer.encode(text, allowed_special="all")


def test_gptoss_loads_it_verified(written, tokenizer):  # noqa: F811
    t = load_tokenizer(checkpoint_dir=written)
    assert t.source.endswith("tokenizer.json")
    for text in CORPUS:
        assert t.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")


def test_synthetic_writes_tokenizer_files_only_with_the_full_vocabulary(tmp_path):
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    small = tmp_path / "small"
    write_checkpoint(preset("tiny"), str(small))
    assert not any((small / f).exists() for f in TOKENIZER_FILES)
    full = tmp_path / "full"
    write_checkpoint(preset("tiny", vocab_size=201088), str(full), layout="both")
    assert all((full / f).is_file() for f in TOKENIZER_FILES)
    assert not (full / "original" / "tokenizer.json").exists()  # as on the hub
    # Both folders of the download find it; nothing else is searched.
    assert load_tokenizer(checkpoint_dir=full / "original").source == str(full / "tokenizer.json")
    with pytest.raises(ValueError, match="full vocabulary"):
        write_checkpoint(preset("tiny"), str(tmp_path / "x"), tokenizer=True)


def test_parent_folder_is_not_searched(written, tmp_path, monkeypatch):
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    (tmp_path / "tokenizer.json").write_bytes((written / "tokenizer.json").read_bytes())
    child = tmp_path / "my-checkpoint"
    child.mkdir()
    with pytest.raises(FileNotFoundError, match="no o200k_harmony vocabulary"):
        load_tokenizer(checkpoint_dir=child)
    # An original/ folder without the hub's root config.json next to it is not a hub download.
    orig = tmp_path / "original"
    orig.mkdir()
    with pytest.raises(FileNotFoundError):
        load_tokenizer(checkpoint_dir=orig)
    (tmp_path / "config.json").write_text('{"model_type": "gpt_oss"}')
    assert load_tokenizer(checkpoint_dir=orig).source == str(tmp_path / "tokenizer.json")


def test_documented_environment_variables(o200k_vocab_dir, o200k_vocab_file, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    monkeypatch.setenv("GPTOSS_TIKTOKEN_VOCAB", str(o200k_vocab_file))
    assert load_tokenizer(checkpoint_dir=tmp_path).source == str(o200k_vocab_file)
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(o200k_vocab_dir))
    assert load_tokenizer(checkpoint_dir=tmp_path).source == str(o200k_vocab_file)
