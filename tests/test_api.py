"""The Python API behaves as users of the openai SDK and of other engines expect: `chat` returns
the whole reply unless asked to stream, text prompts work where a tokenizer exists, and bad
calls raise clear errors before anything runs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import gptoss
from fake_model import FakeModel
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss.chat import ChatResponse, Conversation, Done, chat
from test_chat import REPLY, VOCAB, harmony_script

needs_core = pytest.mark.skipif(importlib.util.find_spec("gptoss._core") is None,
                                reason="compiled module gptoss._core not built")


@pytest.fixture
def model(tokenizer):  # noqa: F811
    return FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, {"hi": REPLY}))


def test_dir_lists_the_lazy_names():
    names = dir(gptoss)
    for n in ("Model", "Sequence", "load_tokenizer", "build_info", "CheckpointError", "__version__"):
        assert n in names
    assert callable(gptoss.load_tokenizer) and isinstance(gptoss.Model, type)


def test_chat_returns_the_reply_by_default(model, tokenizer):  # noqa: F811
    res = chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer, temperature=0)
    assert isinstance(res, ChatResponse)
    assert str(res) == res.content == "Hello there! ☃"
    r = repr(res)
    assert "Hello there!" in r and "finish_reason='stop'" in r and "generator" not in r
    events = list(chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer, temperature=0,
                       stream=True))
    assert isinstance(events[-1], Done)
    assert "".join(getattr(e, "text", "") for e in events if type(e).__name__ == "ContentDelta") == res.content


def test_conversation_send_returns_the_reply_by_default(model, tokenizer):  # noqa: F811
    with Conversation(model, tokenizer=tokenizer, temperature=0) as conv:
        with pytest.raises(ValueError, match="send a message first"):
            conv.send()
        res = conv.send("hi")
        assert isinstance(res, ChatResponse) and res.content == "Hello there! ☃"
        assert len(conv.messages) == 3  # user + analysis + final


@pytest.mark.parametrize("bad", [[], (), "hi", None, 42])
def test_chat_rejects_no_messages(model, tokenizer, bad):  # noqa: F811
    with pytest.raises(ValueError, match="messages"):
        chat(model, bad, tokenizer=tokenizer)
    assert model.sequences_created == 0  # nothing ran


def test_chat_without_tokenizer_says_what_to_do(monkeypatch):
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    m = FakeModel(VOCAB)
    with pytest.raises(FileNotFoundError, match="--vocab 201088"):
        chat(m, [{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def full_vocab_dir(tmp_path_factory):
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    d = tmp_path_factory.mktemp("tiny-full")
    write_checkpoint(preset("tiny", vocab_size=VOCAB), str(d), seed=5)
    return d


@needs_core
def test_generate_accepts_text_with_the_checkpoints_tokenizer(full_vocab_dir, tokenizer):  # noqa: F811
    m = gptoss.Model(str(full_vocab_dir))
    assert m.tokenizer is not None and m.tokenizer.source.endswith("tokenizer.json")
    text = "The capital of France is"
    res = m.generate(text, max_tokens=6, temperature=0)
    ids = tokenizer.encode(text)
    ref = m.generate(ids, max_tokens=6, temperature=0)
    assert res.tokens == ref.tokens and len(res.tokens) == 6
    assert res.text == tokenizer.decode(res.tokens)  # decoded, since the model has a tokenizer
    # The same as stepping the engine by hand, greedily.
    s = m.new_sequence()
    logits, manual = s.prefill(ids), []
    for _ in range(6):
        t = int(np.argmax(logits))
        manual.append(t)
        logits = s.decode(t)
    assert manual == res.tokens
    assert m.chat([{"role": "user", "content": "hi"}], max_tokens=3).usage.completion_tokens == 3
    with pytest.raises(ValueError, match="empty"):
        m.generate("")


@needs_core
def test_generate_text_without_tokenizer_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    m = gptoss.Model.synthetic("tiny")
    assert m.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer .*pass token ids"):
        m.generate("some text")
    assert len(m.generate([1, 2, 3], max_tokens=2).tokens) == 2


@needs_core
def test_model_takes_a_tokenizer_file(o200k_vocab_file, monkeypatch):  # noqa: F811
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    m = gptoss.Model.synthetic("tiny", tokenizer=str(o200k_vocab_file))
    assert m.tokenizer.source == str(o200k_vocab_file)
    with pytest.raises(ValueError, match="vocabulary has only 1024 ids"):
        m.generate("hello world, this has large ids")
