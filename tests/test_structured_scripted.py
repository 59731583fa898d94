"""Structured outputs with a scripted model (tests/fake_model.py): what the model writes passes
through untouched where harmony leaves it free, and is corrected only where it breaks the rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fake_model import FakeModel
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss import harmony
from gptoss.chat import ContentDelta, Conversation, ToolCall, chat
from gptoss.generate import generate
from gptoss.structured import prepare_reply

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

START, END, MESSAGE, RETURN, CALL = 200006, 200007, 200008, 200002, 200012
VOCAB = 201088
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                           "tag": {"enum": ["x", "y"]}},
          "required": ["a"], "additionalProperties": False}
RF = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                   "required": ["city"], "additionalProperties": False}}}


def reply_model(tok, messages: list[tuple[str, str]]) -> FakeModel:
    """A model that writes `messages` ((header after the role, content) pairs) as its reply to
    the prompt's last ``<|start|>assistant``, one token at a time, from where it stands: it keeps
    track of which part of which message the tokens so far are in, so when a constraint replaces
    one of its tokens it carries on with the rest. Each content ends with the end token harmony
    wants for the header actually written; after its messages it answers "ok" on the final
    channel."""
    asst = tok.encode("assistant")
    heads = [tok.encode(h, allowed_special="all") for h, _ in messages]
    bodies = [tok.encode(c, allowed_special="all") for _, c in messages]
    final_head = tok.encode("<|channel|>final<|message|>", allowed_special="all")

    def end_for(header: list[int], first: bool) -> int:
        p = harmony.StreamParser(role="assistant" if first else None, tokenizer=tok)
        starts = [e for e in p.process_all(header) if isinstance(e, harmony.MessageStart)]
        if not starts:
            return END
        s = starts[-1]
        r = s.recipient if s.recipient and not s.recipient.startswith("<|constrain|>") else None
        return CALL if r else RETURN if s.channel == "final" else END

    def script(tokens: list[int]):
        # the reply starts after the first <|start|>assistant following the last <|end|> of a
        # non-assistant message (the prompt's completion marker)
        j = max((i for i in range(len(tokens) - len(asst)) if tokens[i] == START
                 and tokens[i + 1:i + 1 + len(asst)] != asst), default=-1)
        try:
            s = next(i for i in range(j + 1, len(tokens)) if tokens[i] == START
                     and tokens[i + 1:i + 1 + len(asst)] == asst) + 1 + len(asst)
        except StopIteration:
            return None
        gen = tokens[s:]
        i, header, body, in_body = 0, [], [], False
        for t in gen:
            if not in_body:
                header.append(t)
                in_body = t == MESSAGE
            elif t in (END, CALL, RETURN):
                i, header, body, in_body = i + 1, [], [], False
            else:
                body.append(t)
        want_head = ([] if i == 0 else [START] + asst) + (heads[i] if i < len(heads) else final_head)
        want_body = bodies[i] if i < len(bodies) else tok.encode("ok")
        if not in_body:
            return want_head[len(header)] if len(header) < len(want_head) else MESSAGE
        if len(body) < len(want_body):
            return want_body[len(body)]
        return end_for(header, i == 0)

    return FakeModel(VOCAB, max_context=4096, script=script)


USER = [{"role": "user", "content": "hi"}]


def parsed(tok, raw: list[int]) -> harmony.StreamParser:
    p = harmony.StreamParser(role="assistant", tokenizer=tok)
    p.process_all(raw)
    p.process_eos()
    return p


# ---------------------------------------------------------------------------- free where harmony is
def test_reasoning_that_breaks_the_schema_passes_untouched(tokenizer):  # noqa: F811
    reasoning = 'Not JSON: }}{"a": 12, "b": [unclosed "quote and 99 > 9'
    model = reply_model(tokenizer, [("<|channel|>analysis<|message|>", reasoning),
                                    ("<|channel|>final<|message|>", '{"a": 7, "tag": "y"}')])
    for seed in range(3):
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   response_format=RF, max_tokens=100)
        assert res.reasoning == reasoning
        assert res.content == '{"a": 7, "tag": "y"}' and res.finish_reason == "stop"
    plain = chat(model, USER, tokenizer=tokenizer, stream=False, temperature=0, max_tokens=100)
    assert plain.reasoning == reasoning  # the same with no constraint at all


def test_only_the_final_content_is_corrected(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [("<|channel|>analysis<|message|>", "Think."),
                                    ("<|channel|>final<|message|>", '{"a": 12, "extra": true} trailing')])
    bad = chat(model, USER, tokenizer=tokenizer, stream=False, temperature=0, max_tokens=100)
    with pytest.raises(Exception):  # the model's own answer is invalid
        jsonschema.validate(json.loads(bad.content), SCHEMA)
    for seed in range(4):
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   response_format=RF, max_tokens=100)
        assert res.reasoning == "Think." and res.finish_reason == "stop"
        jsonschema.validate(json.loads(res.content), SCHEMA)
        assert res.content.startswith('{"a": ')  # kept what it could ("12" is one token: it went)


def test_final_with_constrain_json_is_the_answer(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [("<|channel|>final <|constrain|>json<|message|>", '{"a": 3}')])
    for kw in ({}, {"response_format": RF}):
        res = chat(model, USER, tokenizer=tokenizer, stream=False, temperature=0, max_tokens=50, **kw)
        assert res.content == '{"a": 3}' and res.tool_calls == []
        assert res[-1].channel == "final" and res[-1].recipient is None
        assert res[-1].content_type == "<|constrain|>json"
        events = list(chat(model, USER, tokenizer=tokenizer, stream=True, temperature=0,
                           max_tokens=50, **kw))
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == '{"a": 3}'
        assert not any(isinstance(e, ToolCall) for e in events)
    model = reply_model(tokenizer, [("<|channel|>final <|constrain|>json<|message|>", '{"a": 33}')])
    res = chat(model, USER, tokenizer=tokenizer, stream=False, temperature=0, max_tokens=50,
               response_format=RF)
    jsonschema.validate(json.loads(res.content), SCHEMA)  # constrained in that form too


# ---------------------------------------------------------------------------- malformed headers
MALFORMED = [
    ("<|message|>", "no channel"),
    ("<|channel|>Final<|message|>", "wrong case"),
    ("<|channel|>analysis<|channel|>final<|message|>", "two channels"),
    ("<|channel|>commentary to=get_weather <|constrain|>json<|message|>", "no namespace"),
    ("<|channel|>commentary to=functions.get_weather to=functions.get_weather<|message|>", "twice"),
    ("<|channel|>final to=functions.get_weather<|message|>", "final to a tool"),
    ("<|channel|>comment<|message|>", "cut channel"),
]
CHANNELS = {"analysis", "commentary", "final"}
LOOSE_WEATHER = {"type": "function", "function": {**WEATHER["function"], "strict": False}}


def header_problems(tok, raw: list[int]) -> list[str]:
    p = parsed(tok, raw)
    out = [e for e in p.errors if "end of stream" not in e]
    for m in p.messages:
        r = m.recipient if m.recipient and not m.recipient.startswith("<|constrain|>") else None
        if m.channel not in CHANNELS:
            out.append(f"channel {m.channel!r}")
        if r not in (None, "functions.get_weather"):
            out.append(f"recipient {r!r}")
        if r and m.channel != "commentary":
            out.append(f"recipient {r!r} on {m.channel!r}")
    return out


@pytest.mark.parametrize("header, what", MALFORMED, ids=[w for _, w in MALFORMED])
def test_malformed_header_is_forced_into_a_valid_one(tokenizer, header, what):  # noqa: F811
    model = reply_model(tokenizer, [(header, '{"city": "Paris"}'),
                                    ("<|channel|>final<|message|>", "Done.")])
    raw: list[int] = []
    chat(model, USER, tokenizer=tokenizer, tools=[LOOSE_WEATHER], stream=False, temperature=0,
         max_tokens=80, on_token=raw.append)
    assert header_problems(tokenizer, raw), f"the scripted header ({what}) should be malformed"
    for seed in range(3):
        raw = []
        res = chat(model, USER, tokenizer=tokenizer, tools=[LOOSE_WEATHER], stream=False, seed=seed,
                   temperature=1.0, max_tokens=80, harmony_constraint=True, on_token=raw.append)
        assert header_problems(tokenizer, raw) == [], tokenizer.decode(raw)
        assert res.finish_reason in ("stop", "tool_calls")


def test_valid_reply_is_unchanged_by_the_harmony_constraint(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [
        ("<|channel|>analysis<|message|>", "Need weather."),
        ("<|channel|>commentary<|message|>", "Checking the weather."),
        ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", '{"city": "Paris"}')])
    runs = []
    for kw in ({}, {"harmony_constraint": True}, {"tool_choice": "required"}, {"tool_choice": "auto"}):
        raw: list[int] = []
        res = chat(model, USER, tokenizer=tokenizer, tools=[LOOSE_WEATHER], stream=False, temperature=0,
                   max_tokens=80, on_token=raw.append, **kw)
        runs.append(raw)
        assert res.finish_reason == "tool_calls" and res.tool_calls[0].json() == {"city": "Paris"}
    assert all(r == runs[0] for r in runs)


def test_tool_choice_none_turns_a_call_into_an_answer(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [
        ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", '{"city": "Paris"}')])
    for seed in range(3):
        res = chat(model, USER, tokenizer=tokenizer, tools=[WEATHER], stream=False, seed=seed,
                   temperature=1.0, max_tokens=60, tool_choice="none")
        assert res.tool_calls == [] and all(m.recipient is None for m in res)


def test_conversation_send_takes_the_keywords(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [("<|channel|>final<|message|>", '{"a": 5}')])
    with Conversation(model, tokenizer=tokenizer, temperature=0, max_tokens=50) as conv:
        res = conv.send("hi", stream=False, response_format=RF, thinking_token_budget=0)
        assert res.content == '{"a": 5}'
        with pytest.raises(ValueError, match="uniqueItems"):
            conv.send("again", stream=False, response_format={
                "type": "json_schema", "json_schema": {"name": "n", "schema": {"uniqueItems": True}}})


def test_refused_schema_generates_nothing(tokenizer):  # noqa: F811
    model = reply_model(tokenizer, [("<|channel|>final<|message|>", "x")])
    with pytest.raises(ValueError, match="look-around"):
        chat(model, USER, tokenizer=tokenizer, stream=False, response_format={
            "type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "string", "pattern": "(?!a)"}}})
    assert model.prefill_calls == 0 and model.sequences_created == 0


def test_forced_tokens_keep_the_models_logprobs(tokenizer):  # noqa: F811
    from gptoss.chat import build_messages

    full, c = prepare_reply(build_messages(USER), tokenizer, thinking_token_budget=0)
    prompt = harmony.render(full, for_completion=True, tokenizer=tokenizer)
    model = reply_model(tokenizer, [("<|channel|>analysis<|message|>", "no")])
    forced = c.forced_tokens()
    assert tokenizer.decode(forced) == "<|channel|>final<|message|>"
    res = generate(model, prompt, temperature=1.0, seed=0, max_tokens=12, logprobs=0, constraint=c)
    assert res.tokens[:len(forced)] == forced  # llguidance's canonical tokens ("f" + "inal" is valid too)
    for seed in range(1, 4):
        c2 = prepare_reply(build_messages(USER), tokenizer, thinking_token_budget=0)[1]
        assert generate(model, prompt, seed=seed, max_tokens=3, constraint=c2).tokens == forced
    first = res.logprobs[1]  # "final", forced against the model's "analysis" (logit 30 vs 0)
    logits = model.logits_for(list(prompt) + res.tokens[:1]).astype(np.float64)
    lse = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    assert abs(first.logprob - (logits[res.tokens[1]] - lse)) < 1e-4 and first.logprob < -20


def test_mask_on_a_worker_gives_the_same_reply(tokenizer, monkeypatch):  # noqa: F811
    """The GPU path computes each mask on a worker thread during the step; same tokens."""
    from gptoss.generate import engine_of

    model = reply_model(tokenizer, [("<|channel|>analysis<|message|>", "Think."),
                                    ("<|channel|>final<|message|>", '{"a": 12, "tag": "z"}')])
    runs = {}
    for overlap in (False, True):
        engine_of(model).runner.overlap_masks = overlap
        runs[overlap] = [chat(model, USER, tokenizer=tokenizer, stream=False, seed=s, temperature=1.0,
                              max_tokens=60, response_format=RF, logprobs=None).content
                         for s in range(3)]
    assert runs[False] == runs[True]
    for c in runs[True]:
        jsonschema.validate(json.loads(c), SCHEMA)
