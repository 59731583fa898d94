"""Structured outputs without a model: request validation, the harmony header grammar against
openai-harmony's parser, masks, forced tokens and the TokenConstraint interface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fixtures_vocab import harmony_env, o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss.chat import build_messages
from gptoss.structured import (ConstraintViolation, ReplyConstraint, TokenConstraint, allowed_ids,
                               bitmask_words, plan_reply, prepare_reply)

pytest.importorskip("llguidance")

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = 200006, 200007, 200008, 200005, 200003, 200002, 200012
N_TEXT, VOCAB = 199998, 201088

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["a"], "additionalProperties": False}
RF = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


def msgs(tools=(), builtins=()):
    from gptoss import harmony as h

    full = build_messages([{"role": "user", "content": "hi"}], tools=tools)
    if builtins:
        full[0] = h.Message("system", h.SystemContent(reasoning_effort="low", builtin_tools=builtins))
    return full


def constraint(tok, tools=(), builtins=(), **kw) -> ReplyConstraint:
    full, c = prepare_reply(msgs(tools, builtins), tok, tools=tools, **kw)
    assert c is not None
    return c


def feed(c, tok, text: str) -> None:
    """Advance `c` through `text` (encoded with harmony's specials), checking that each token is
    in the mask computed just before it."""
    mask = np.empty(bitmask_words(c.vocab_size), np.int32)
    for t in tok.encode(text, allowed_special="all"):
        c.fill_bitmask(mask)
        assert t in set(allowed_ids(mask, c.vocab_size)), f"token {t} ({tok.decode([t])!r}) masked"
        c.advance(t)


def first_rejected(c, tok, text: str):
    """The first token of `text` the constraint masks out (None if all pass). The mask may be
    stricter than `advance`: where the bytes are forced it keeps only llguidance's canonical
    token (after "anal", "ysis" but not "ys")."""
    mask = np.empty(bitmask_words(c.vocab_size), np.int32)
    for t in tok.encode(text, allowed_special="all"):
        c.fill_bitmask(mask)
        if t not in set(allowed_ids(mask, c.vocab_size)):
            return t
        c.advance(t)
    return None


# ---------------------------------------------------------------------------- validation
def test_nothing_asked_means_no_constraint(tokenizer):  # noqa: F811
    full, c = prepare_reply(msgs([LOOKUP]), tokenizer, tools=[LOOKUP])
    assert c is None
    full, c = prepare_reply(msgs(), tokenizer, response_format={"type": "text"})
    assert c is None


@pytest.mark.parametrize("schema, needle", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
    ({"type": "string", "format": "bogus"}, "bogus"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum"),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ({"type": "foo"}, "foo"),
])
def test_uncompilable_schema_is_refused_by_name(tokenizer, schema, needle):  # noqa: F811
    rf = {"type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}
    with pytest.raises(ValueError) as e:
        prepare_reply(msgs(), tokenizer, response_format=rf)
    assert "'bad'" in str(e.value) and needle in str(e.value)
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": schema}}
    with pytest.raises(ValueError, match="tool 'f' parameters"):
        prepare_reply(msgs([tool]), tokenizer, tools=[tool])


@pytest.mark.parametrize("kw, needle", [
    (dict(response_format={"type": "xml"}), "not supported"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "needs a 'schema'"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}), "name"),
    (dict(response_format={"type": "json_schema", "json_schema": {"schema": 3}}), "JSON schema object"),
    (dict(response_format="json"), "must be a dict"),
    (dict(tool_choice="always"), "tool_choice"),
    (dict(tool_choice={"type": "function", "function": {}}), "name"),
    (dict(tool_choice="required"), "at least one function"),
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "'nope'"),
    (dict(thinking_token_budget=-1), "thinking_token_budget"),
    (dict(thinking_token_budget=1.5), "thinking_token_budget"),
    (dict(harmony_constraint="yes"), "harmony_constraint"),
])
def test_bad_requests_are_value_errors(tokenizer, kw, needle):  # noqa: F811
    with pytest.raises(ValueError, match=needle):
        prepare_reply(msgs(), tokenizer, **kw)


def test_named_function_must_be_declared(tokenizer):  # noqa: F811
    with pytest.raises(ValueError, match="'other'"):
        prepare_reply(msgs([WEATHER]), tokenizer, tools=[WEATHER],
                      tool_choice={"type": "function", "function": {"name": "other"}})


def test_response_format_reaches_the_developer_message(tokenizer):  # noqa: F811
    from gptoss import harmony as h

    full, _ = prepare_reply(msgs([WEATHER]), tokenizer, tools=[WEATHER], response_format=RF)
    dev = [m for m in full if isinstance(m.content, h.DeveloperContent)]
    assert len(dev) == 1 and dev[0].content.response_formats[0].name == "answer"
    text = tokenizer.decode(h.render(full, for_completion=True, tokenizer=tokenizer))
    assert "# Response Formats\n\n## answer\n\n" in text and '"maximum":9' in text
    full, _ = prepare_reply(msgs(), tokenizer, response_format=RF)  # no developer message before
    assert [m.role for m in full[:2]] == ["system", "developer"]


# ---------------------------------------------------------------------------- headers
VALID = [
    "<|channel|>analysis<|message|>x<|end|>",
    "<|channel|>commentary<|message|>Plan: call it.<|end|>",
    "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>{}<|call|>",
    "<|channel|>commentary to=functions.lookup<|constrain|>json<|message|>{}<|call|>",
    " to=functions.lookup<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
    "<|channel|>commentary to=functions.lookup json<|message|>{}<|call|>",
    "<|channel|>commentary to=functions.lookup<|message|>{}<|call|>",
    "<|channel|>analysis to=python code<|message|>print(1)<|call|>",
    "<|channel|>commentary to=browser.search <|constrain|>json<|message|>{\"query\": \"x\"}<|call|>",
    "<|channel|>final<|message|>Hello<|return|>",
    "<|channel|>final <|constrain|>json<|message|>Hello<|return|>",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_headers_pass_and_are_read_as_harmony_reads_them(tokenizer, harmony_env, text):  # noqa: F811
    import openai_harmony as oh

    c = constraint(tokenizer, [LOOKUP], ("browser", "python"), harmony_constraint=True)
    ids = tokenizer.encode(text, allowed_special="all")
    head = ids[: ids.index(MESSAGE) + 1]
    feed(c, tokenizer, tokenizer.decode(head))
    ref = harmony_env.parse_messages_from_completion_tokens(ids, oh.Role.ASSISTANT)[0]
    assert c.channel == ref.channel
    # openai-harmony reads "final <|constrain|>json" as recipient "<|constrain|>json": a content type
    want = None if (ref.recipient or "").startswith("<|constrain|>") else ref.recipient
    assert c.recipient == want
    feed(c, tokenizer, tokenizer.decode(ids[len(head):]))
    assert c.finished == (ids[-1] in (RETURN, CALL))


@pytest.mark.parametrize("text", [
    "<|message|>no channel<|end|>",                                  # header without a channel
    "<|channel|>analysys<|message|>",                                # misspelt channel
    "<|channel|>analysis<|channel|>final<|message|>",                # two channels
    "<|channel|>final to=functions.lookup<|message|>",               # final with a recipient
    "<|channel|>commentary to=functions.get_weather<|message|>",     # undeclared function
    "<|channel|>commentary to=lookup <|constrain|>json<|message|>",  # namespace missing
    "<|channel|>analysis<|message|>x<|start|>",                      # <|start|> inside content
    "<|channel|>analysis<|message|>x<|return|>",                     # reasoning cannot end a reply
    "<|channel|>analysis<|message|>x<|end|>assistant",               # <|start|> missing
    "<|channel|>final<|message|>x<|end|><|start|>",                  # a final answer ends the reply
    "<|channel|>final json<|message|>",                              # unknown content type
])
def test_malformed_headers_are_masked(tokenizer, text):  # noqa: F811
    c = constraint(tokenizer, [LOOKUP], harmony_constraint=True)
    assert first_rejected(c, tokenizer, text) is not None


def test_free_content_mask_is_every_text_token_and_the_end(tokenizer):  # noqa: F811
    c = constraint(tokenizer, harmony_constraint=True)
    feed(c, tokenizer, "<|channel|>analysis<|message|>")
    ids = allowed_ids(c.bitmask(), VOCAB)
    assert ids.size == N_TEXT + 1 and ids[-1] == END and ids[N_TEXT - 1] == N_TEXT - 1
    feed(c, tokenizer, "x<|end|>")
    assert list(allowed_ids(c.bitmask(), VOCAB)) == [START] and c.forced_tokens()[0] == START


# ---------------------------------------------------------------------------- contents
def test_final_content_follows_the_schema_and_only_it(tokenizer):  # noqa: F811
    c = constraint(tokenizer, response_format=RF)
    # the analysis channel is free: text that is no JSON at all passes
    feed(c, tokenizer, '<|channel|>analysis<|message|>}} not {"a": json at all<|end|>')
    feed(c, tokenizer, "<|start|>assistant<|channel|>final<|message|>")
    assert first_rejected(c, tokenizer, '{"a": 12}') is not None  # 12 > maximum
    c = constraint(tokenizer, response_format=RF)
    feed(c, tokenizer, '<|channel|>final <|constrain|>json<|message|>{"a": 7}')
    assert not c.finished
    feed(c, tokenizer, "<|return|>")
    assert c.finished
    c = constraint(tokenizer, response_format={"type": "json_object"})
    feed(c, tokenizer, "<|channel|>final<|message|>")
    assert first_rejected(c, tokenizer, "[1]") is not None


def test_json_format_leaves_no_room_for_a_preamble(tokenizer):  # noqa: F811
    c = constraint(tokenizer, response_format=RF)
    assert first_rejected(c, tokenizer, "<|channel|>commentary<|message|>") is not None
    c = constraint(tokenizer, [WEATHER], response_format=RF)  # a preamble before a tool call is fine
    feed(c, tokenizer, "<|channel|>commentary<|message|>Checking.<|end|>")


def test_tool_choice(tokenizer):  # noqa: F811
    tools = [WEATHER, LOOKUP]
    c = constraint(tokenizer, tools, tool_choice="required")
    assert first_rejected(c, tokenizer, "<|channel|>final<|message|>") is not None
    c = constraint(tokenizer, tools, tool_choice="required")
    feed(c, tokenizer, '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>')
    assert first_rejected(c, tokenizer, '{"city": "Oslo"}') is not None  # strict: enum
    c = constraint(tokenizer, tools, tool_choice="auto")
    feed(c, tokenizer, '<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>'
         '{"any": [1, {"thing": null}]}<|call|>')  # not strict: any object
    c = constraint(tokenizer, tools, tool_choice="auto")
    assert first_rejected(c, tokenizer, "<|channel|>commentary to=functions.lookup<|message|>") \
        is not None  # tool_choice constrains the header to <|constrain|>json
    c = constraint(tokenizer, tools, ("python",), tool_choice="none")
    for head in ("<|channel|>commentary to=functions.lookup", "<|channel|>analysis to=python",
                 " to=functions.lookup"):
        c = constraint(tokenizer, tools, ("python",), tool_choice="none")
        assert first_rejected(c, tokenizer, head + "<|message|>") is not None
    c = constraint(tokenizer, tools, tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert first_rejected(c, tokenizer, "<|channel|>commentary to=functions.get_weather") is not None


def test_strict_tool_is_constrained_without_tool_choice(tokenizer):  # noqa: F811
    c = constraint(tokenizer, [WEATHER, LOOKUP])
    feed(c, tokenizer, '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>')
    assert first_rejected(c, tokenizer, '{"town": "Paris"}') is not None
    c = constraint(tokenizer, [WEATHER, LOOKUP])  # the other tool's arguments stay free
    feed(c, tokenizer, '<|channel|>commentary to=functions.lookup<|message|>not json<|call|>')


# ---------------------------------------------------------------------------- budget, forced tokens
def test_budget_forces_the_final_channel(tokenizer):  # noqa: F811
    c = constraint(tokenizer, thinking_token_budget=3)
    feed(c, tokenizer, "<|channel|>analysis<|message|>")
    assert c.forced_tokens() == []
    for t in tokenizer.encode(" one two three"):
        c.advance(t)
    assert c.thinking_tokens == 3
    forced = c.forced_tokens()
    assert tokenizer.decode(forced) == "<|end|><|start|>assistant<|channel|>final<|message|>"
    for t in forced:
        c.advance(t)
    assert c.channel == "final"


def test_budget_forces_the_named_tool_call(tokenizer):  # noqa: F811
    c = constraint(tokenizer, [WEATHER, LOOKUP], thinking_token_budget=0,
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    forced = c.forced_tokens()
    assert tokenizer.decode(forced) == \
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    c = constraint(tokenizer, [WEATHER, LOOKUP], thinking_token_budget=0, tool_choice="required")
    # "." is left to the model: the token that follows may start with it (".get")
    assert tokenizer.decode(c.forced_tokens()) == "<|channel|>commentary to=functions"
    c = constraint(tokenizer, thinking_token_budget=0)  # no analysis at all
    assert first_rejected(c, tokenizer, "<|channel|>analysis") is not None


def test_budget_counts_preambles_too(tokenizer):  # noqa: F811
    c = constraint(tokenizer, [LOOKUP], thinking_token_budget=4)
    feed(c, tokenizer, "<|channel|>analysis<|message|> a b<|end|><|start|>assistant"
         "<|channel|>commentary<|message|> c d")
    assert c.thinking_tokens == 4 and c.forced_tokens()[:2] == [END, START]
    for t in c.forced_tokens():
        c.advance(t)
    assert first_rejected(c, tokenizer, "analysis") is not None  # no more reasoning


# ---------------------------------------------------------------------------- the interface
def test_protocol_and_violations(tokenizer):  # noqa: F811
    c = constraint(tokenizer, harmony_constraint=True)
    assert isinstance(c, TokenConstraint)
    with pytest.raises(ConstraintViolation):
        c.advance(MESSAGE)
    for text, bad in [("<|channel|>analysis<|message|>x", RETURN), ("<|channel|>analysis<|message|>x<|end|>", 1),
                      ("<|channel|>", CHANNEL)]:
        c = constraint(tokenizer, harmony_constraint=True)
        feed(c, tokenizer, text)
        with pytest.raises(ConstraintViolation):
            c.advance(bad)
    c = constraint(tokenizer, harmony_constraint=True)
    feed(c, tokenizer, "<|channel|>final<|message|>hi<|return|>")
    assert c.finished and allowed_ids(c.bitmask(), VOCAB).size == 0
    with pytest.raises(ConstraintViolation):
        c.advance(1)
    with pytest.raises(ValueError, match="int32"):
        c.fill_bitmask(np.zeros(10, np.int32))


def test_forced_tokens_leave_the_state_alone(tokenizer):  # noqa: F811
    c = constraint(tokenizer, [WEATHER], tool_choice="required", thinking_token_budget=0)
    before = c.bitmask()
    f1, f2 = c.forced_tokens(), c.forced_tokens()
    assert f1 == f2 and len(f1) > 5
    assert np.array_equal(before, c.bitmask())


def test_mask_on_a_worker_thread_matches(tokenizer):  # noqa: F811
    c = constraint(tokenizer, response_format=RF, thinking_token_budget=0)
    feed(c, tokenizer, "<|channel|>final<|message|>{")
    here = c.bitmask()
    there = np.empty_like(here)
    th = threading.Thread(target=c.fill_bitmask, args=(there,))
    th.start()
    th.join()
    assert np.array_equal(here, there)
    assert {tokenizer.decode([int(i)])[:1] for i in allowed_ids(here, VOCAB)} <= {'"', " "}


def test_plan_describes_the_request(tokenizer):  # noqa: F811
    plan = plan_reply(msgs([WEATHER]), tokenizer, tools=[WEATHER], response_format=RF,
                      tool_choice="auto", thinking_token_budget=5)
    assert plan.budget == 5 and plan.response_format.name == "answer"
    assert {(h.channel, h.recipient) for h in plan.forced_headers} == {
        ("commentary", "functions.get_weather"), ("final", None)}
