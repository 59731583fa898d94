"""Generation loop on the fake model: stops, limits, streaming, KV reuse, batching."""

from __future__ import annotations

import numpy as np
import pytest

from fake_model import ContextOverflowError, FakeModel, reply_script
from gptoss.generate import (GenerationStream, TextDecoder, TokenChunk, generate,
                             generate_batch)
from gptoss.sampling import Sampler, SamplingParams


class ByteTokenizer:
    """ids 0-25: 'a'..'z', 26: ' ', 27: '!', 50/51: the two bytes of 'é', 60-63: '<|sN|>'."""

    def decode_single_token_bytes(self, t: int) -> bytes:
        if t < 26:
            return bytes([97 + t])
        if t == 26:
            return b" "
        if t == 27:
            return b"!"
        if t == 50:
            return b"\xc3"
        if t == 51:
            return b"\xa9"
        if t >= 60:
            return f"<|s{t}|>".encode()
        return b"?"

    def decode(self, ids) -> str:
        return b"".join(self.decode_single_token_bytes(t) for t in ids).decode("utf-8", "replace")

    def encode(self, text: str) -> list[int]:
        return [26 if c == " " else 27 if c == "!" else ord(c) - 97 for c in text]


TOK = ByteTokenizer()


def scripted(reply, vocab=64, **kw):
    """Model that answers `reply` after the marker token 63."""
    return FakeModel(vocab, script=reply_script([63], reply), **kw)


def test_greedy_matches_manual_argmax_loop():
    m = FakeModel(64, seed=5)
    res = generate(m, [1, 2, 3], SamplingParams(temperature=0, max_tokens=10,
                                                  stop_token_ids=()))
    seq = m.new_sequence()
    logits = seq.prefill([1, 2, 3])
    want = []
    for _ in range(10):
        t = int(np.argmax(logits))
        want.append(t)
        logits = seq.decode(t)
    assert res.tokens == want
    assert res.finish_reason == "length"
    assert res.usage.prompt_tokens == 3 and res.usage.completion_tokens == 10
    assert res.usage.total_tokens == 13 and res.usage.cached_tokens == 0


def test_seed_reproducible_and_sampling_matches_sampler():
    m = FakeModel(64, seed=1)
    p = SamplingParams(seed=42, max_tokens=20, stop_token_ids=(), top_k=10)
    a = generate(m, [7], p).tokens
    assert a == generate(m, [7], p).tokens
    assert a != generate(m, [7], SamplingParams.from_kwargs(p, seed=43)).tokens
    # The same draws, by hand.
    s, seq = Sampler(p), m.new_sequence()
    logits, out = seq.prefill([7]), []
    for _ in range(20):
        t = s.sample(logits, out, [7]).token
        out.append(t)
        logits = seq.decode(t)
    assert out == a


def test_stop_token_ends_and_is_not_fed_back():
    m = scripted([1, 2, 3, 60, 4, 5])
    res = generate(m, [63], SamplingParams(temperature=0, stop_token_ids=[60]), tokenizer=TOK)
    assert res.tokens == [1, 2, 3, 60]
    assert res.finish_reason == "stop" and res.stop_reason == 60
    assert res.text == "bcd"  # stop token not decoded
    assert m.decoded_tokens == 3  # 60 never decoded into the cache


def test_stop_string_truncates_text_and_streams_no_part_of_it():
    # "ab cd!ef" with stop "d!e": the stream must never release "d" or "d!"
    reply = [0, 1, 26, 2, 3, 27, 4, 5, 6]
    m = scripted(reply)
    gen = generate(m, [63], SamplingParams(temperature=0, stop="d!e", stop_token_ids=()),
                   tokenizer=TOK, stream=True)
    chunks = list(gen)
    assert "".join(c.text for c in chunks) == "ab c"
    assert gen.result.text == "ab c" and gen.result.finish_reason == "stop"
    assert gen.result.stop_reason == "d!e"
    assert gen.result.tokens == [0, 1, 26, 2, 3, 27, 4]
    assert all(isinstance(c, TokenChunk) for c in chunks)


def test_stop_string_false_start_is_released():
    reply = [0, 3, 26, 3, 27, 1]  # "ad d!b", stop "d!x" never completes
    m = scripted(reply + [60])
    gen = generate(m, [63], SamplingParams(temperature=0, stop=["d!x"], stop_token_ids=[60]),
                   tokenizer=TOK, stream=True)
    texts = [c.text for c in gen]
    assert "".join(texts) == "ad d!b"
    assert texts[1] == ""  # "d" held back (could start "d!x")
    assert texts[2] == "d "  # released once " " shows it is not


def test_multibyte_character_is_released_whole():
    m = scripted([50, 51, 0, 60])
    gen = generate(m, [63], SamplingParams(temperature=0, stop_token_ids=[60]), tokenizer=TOK,
                   stream=True)
    texts = [c.text for c in gen]
    assert texts == ["", "é", "a", ""]
    assert gen.result.text == "éa"


def test_incomplete_utf8_at_length_limit_becomes_replacement_char():
    m = scripted([0, 50, 51])
    res = generate(m, [63], SamplingParams(temperature=0, max_tokens=2, stop_token_ids=()),
                   tokenizer=TOK)
    assert res.text == "a\ufffd" and res.finish_reason == "length"


def test_context_limit():
    m = FakeModel(64, max_context=10, seed=2)
    res = generate(m, [1, 2, 3, 4], SamplingParams(stop_token_ids=(), seed=0))
    # 4 prompt tokens + 6 decoded fill the cache; the 7th sampled token is returned, not fed.
    assert res.finish_reason == "context_length"
    assert len(res.tokens) == 7 and res.usage.completion_tokens == 7
    with pytest.raises(ContextOverflowError):
        generate(m, list(range(11)), SamplingParams())
    assert m.sequences_created == m.sequences_freed  # freed even on error


def test_prompt_of_exactly_max_context_yields_one_token():
    m = FakeModel(64, max_context=5)
    res = generate(m, [1, 2, 3, 4, 5], SamplingParams(stop_token_ids=(), seed=0))
    assert len(res.tokens) == 1 and res.finish_reason == "context_length"


def test_bad_inputs():
    m = FakeModel(64)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(m, [], SamplingParams())
    with pytest.raises(ValueError, match="out of range"):
        generate(m, [64], SamplingParams())
    with pytest.raises(ValueError, match="tokenizer"):
        generate(m, [1], SamplingParams(stop="x"))
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        generate(m, [1], max_token=3)
    with pytest.raises(ValueError, match="invalid sampling parameter"):
        generate(m, [1], temperature=-1)


def test_kwargs_override_params():
    m = FakeModel(64, seed=3)
    res = generate(m, [1], SamplingParams(max_tokens=50), max_tokens=3, stop_token_ids=())
    assert len(res.tokens) == 3


def test_vocab_limit():
    m = FakeModel(64, seed=3)
    res = generate(m, [1], max_tokens=200, stop_token_ids=(), vocab_limit=8, seed=0)
    assert max(res.tokens) < 8


def test_logprobs_collected():
    m = FakeModel(64, seed=3)
    res = generate(m, [1], temperature=0, max_tokens=4, stop_token_ids=(), logprobs=2)
    assert len(res.logprobs) == 4
    assert all(s.top_logprobs[0][0] == s.token for s in res.logprobs)  # greedy = top-1
    assert all(s.logprob <= 0 for s in res.logprobs)


def test_stream_close_early_reports_cancelled_and_frees():
    m = FakeModel(64, seed=3)
    gen = generate(m, [1], SamplingParams(stop_token_ids=(), seed=0), stream=True)
    assert isinstance(gen, GenerationStream)
    a, b = next(gen), next(gen)
    gen.close()  # returns once the engine has ended the request (it may have run a little ahead)
    assert gen.result.finish_reason == "cancelled" and gen.result.tokens[:2] == [a.token, b.token]
    assert m.sequences_created == m.sequences_freed == 1


# ---------------------------------------------------------------- KV reuse (the prefix cache)
def test_requests_reuse_the_common_prefix():
    m = FakeModel(64, seed=4)
    p = SamplingParams(temperature=0, max_tokens=5, stop_token_ids=())
    r1 = generate(m, [1, 2, 3, 4], p)
    assert r1.usage.cached_tokens == 0
    # The next prompt extends the first: prompt + generated (the last token never fed) + more.
    prompt2 = [1, 2, 3, 4] + r1.tokens + [9, 9]
    before = m.prefilled_tokens
    r2 = generate(m, prompt2, p)
    assert r2.usage.cached_tokens == 4 + 4  # the prompt and the 4 tokens fed back
    assert m.prefilled_tokens - before == len(prompt2) - 8
    m.prefix_cache = False
    assert r2.tokens == generate(m, prompt2, p).tokens  # the same as a cold run
    m.prefix_cache = True
    r3 = generate(m, [1, 2, 7, 7], p)  # a diverging prompt reuses up to the difference
    assert r3.usage.cached_tokens == 2
    before = m.prefilled_tokens + m.decoded_tokens
    r4 = generate(m, [1, 2, 7, 7], p)  # the identical prompt recomputes exactly one token
    assert r4.usage.cached_tokens == 3
    assert m.prefilled_tokens + m.decoded_tokens - before == 1 + 4  # and decodes 4
    assert m.sequences_created == m.sequences_freed


def test_refused_request_leaves_the_engine_usable():
    m = FakeModel(64, max_context=6)
    with pytest.raises(ContextOverflowError):
        generate(m, [1, 2, 3, 4, 5, 6, 7])
    res = generate(m, [1, 2], max_tokens=2, stop_token_ids=())
    assert len(res.tokens) == 2 and m.sequences_created == m.sequences_freed


# ---------------------------------------------------------------- text decoder
def test_text_decoder_multiple_stops_earliest_wins():
    d = TextDecoder(TOK, stop=["cd", "b"])
    out = "".join(d.push(t) for t in [0, 1, 2, 3])
    assert d.stopped == "b" and out == "a" and d.text == "a"


# ---------------------------------------------------------------- batch
def test_generate_batch_matches_individual_runs():
    m = FakeModel(64, seed=6)
    prompts = [[1, 2], [3], [4, 5, 6]]
    p = SamplingParams(seed=10, max_tokens=6, stop_token_ids=(7,), top_k=20)
    batch = generate_batch(m, prompts, p)
    for i, pr in enumerate(prompts):
        single = generate(m, pr, SamplingParams.from_kwargs(p, seed=10 + i))
        assert batch[i].tokens == single.tokens
        assert batch[i].finish_reason == single.finish_reason
    assert m.sequences_created == m.sequences_freed


def test_generate_batch_uses_one_step_per_token():
    m = FakeModel(64, seed=6)
    generate_batch(m, [[1], [2], [3]], max_tokens=4, stop_token_ids=(), temperature=0)
    assert m.step_calls == 4  # prefill + 3 decodes


# ---------------------------------------------------------------- the real engine (tiny, random)
import importlib.util  # noqa: E402

needs_core = pytest.mark.skipif(importlib.util.find_spec("gptoss._core") is None,
                                reason="compiled module gptoss._core not built")


@pytest.fixture(scope="module")
def tiny():
    from gptoss import Model

    return Model.synthetic("tiny", seed=3, max_context=96)


@needs_core
def test_engine_greedy_generate_matches_forward(tiny):
    res = generate(tiny, [5, 6, 7], temperature=0, max_tokens=6, stop_token_ids=())
    toks = [5, 6, 7]
    for _ in range(6):
        toks.append(int(np.argmax(tiny.forward(toks)[-1])))
    assert res.tokens == toks[3:]


@needs_core
def test_engine_prefix_reuse_matches_cold_runs():
    from gptoss import Model

    m = Model.synthetic("tiny", seed=3, max_context=96, block_size=4)
    cold = Model.synthetic("tiny", seed=3, max_context=96, block_size=4, prefix_cache=False)
    p = SamplingParams(temperature=0, max_tokens=5, stop_token_ids=())
    r1 = generate(m, [1, 2, 3, 4, 5, 6], p)
    prompt2 = [1, 2, 3, 4, 5, 6] + r1.tokens + [11, 12]
    r2 = generate(m, prompt2, p)
    assert r2.usage.cached_tokens == 8  # the whole blocks of the 10 tokens computed before
    assert r2.tokens == generate(cold, prompt2, p).tokens
    r3 = generate(m, [1, 2, 3, 9], p)
    assert r3.usage.cached_tokens == 3  # up to the first differing token
    assert r3.tokens == generate(cold, [1, 2, 3, 9], p).tokens


@needs_core
def test_engine_context_limit_and_overflow(tiny):
    res = generate(tiny, list(range(90)), seed=0, stop_token_ids=())
    assert res.finish_reason == "context_length" and len(res.tokens) == 96 - 90 + 1
    from gptoss import ContextOverflowError

    with pytest.raises(ContextOverflowError):
        generate(tiny, list(range(97)), seed=0)


@needs_core
def test_engine_batch_matches_single(tiny):
    prompts = [[1, 2], [3, 4, 5], [6]]
    batch = generate_batch(tiny, prompts, temperature=0, max_tokens=4, stop_token_ids=())
    for pr, b in zip(prompts, batch):
        assert b.tokens == generate(tiny, pr, temperature=0, max_tokens=4,
                                    stop_token_ids=()).tokens
