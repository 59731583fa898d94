"""Structured outputs on a random tiny checkpoint with the full 201088-id vocabulary, at
temperature 1: its unconstrained output is noise, so whatever is valid below is the constraint's
doing. Validity is checked with `jsonschema`, an independent validator."""

from __future__ import annotations

import json

import pytest

from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss import harmony
from gptoss.chat import ContentDelta, Done, ReasoningDelta, ToolCall, chat

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

USER = [{"role": "user", "content": "Answer in JSON."}]
# A random model closes a JSON string or object only by chance (a few ids out of ~200k): these
# biases on '"', '}' and '"}' make unbounded strings end in a few tokens. They do not make
# anything valid: without the constraint the output stays noise.
CLOSERS = {1: 12.0, 92: 12.0, 18583: 12.0}

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False},
    "enum_pattern": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["color", "code"], "additionalProperties": False},
    "any_of": {"anyOf": [{"type": "integer", "minimum": -5, "maximum": 5},
                         {"type": "string", "maxLength": 4}, {"type": "boolean"}]},
    "array": {"type": "array", "items": {"type": "number", "multipleOf": 0.25, "minimum": -2,
                                         "maximum": 2}, "minItems": 2, "maxItems": 4},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "id": {"type": "integer", "exclusiveMinimum": 0, "maximum": 999},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
            "required": ["id", "tags"], "additionalProperties": False},
        "ok": {"type": "boolean"}},
        "required": ["user", "ok"], "additionalProperties": False},
    "optional": {"type": "object", "properties": {
        "a": {"type": ["integer", "null"], "minimum": 1, "maximum": 3},
        "b": {"const": "x"},
        "c": {"type": "string", "enum": ["p", "q"]}},
        "required": ["b"], "additionalProperties": False},
    "defs": {"$defs": {"Point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 9},
        "y": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"path": {"type": "array", "items": {"$ref": "#/$defs/Point"},
                                                  "minItems": 1, "maxItems": 3}},
        "required": ["path"], "additionalProperties": False},
    "free_strings": {"type": "object", "properties": {"k": {"type": "string"}},
                     "required": ["k"], "additionalProperties": {"type": "string"}},
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                         "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "add", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                         "b": {"type": "integer", "minimum": -99, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}},
]
PARAMS = {t["function"]["name"]: t["function"] for t in TOOLS}


@pytest.fixture(scope="module")
def model():
    import gptoss
    from gptoss.config import preset

    return gptoss.Model.synthetic(preset("tiny", vocab_size=201088), seed=7)


def check_call(call: ToolCall) -> None:
    fn = PARAMS[call.name]
    args = call.json()  # syntactically valid JSON for every tool
    assert isinstance(args, dict)
    if fn.get("strict"):
        jsonschema.validate(args, fn["parameters"])


def analysis_tokens(tok, raw: list[int]) -> int:
    n, chan, in_body = 0, None, False
    p = harmony.StreamParser(role="assistant", tokenizer=tok)
    for t in raw:
        for e in p.process(t):
            if isinstance(e, harmony.MessageStart):
                chan, in_body = e.channel, True
            elif isinstance(e, harmony.MessageEnd):
                in_body = False
        if in_body and chan == "analysis" and t < 199998:
            n += 1
    return n


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_replies_validate(model, tokenizer, name):  # noqa: F811
    schema = SCHEMAS[name]
    jsonschema.validators.validator_for(schema).check_schema(schema)
    rf = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    bias = CLOSERS if name == "free_strings" else None
    for seed in range(3):
        budget = (0, 2, 5)[seed]
        raw: list[int] = []
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   max_tokens=200, response_format=rf, thinking_token_budget=budget,
                   logit_bias=bias, on_token=raw.append)
        assert res.finish_reason == "stop", tokenizer.decode(raw)
        assert res[-1].channel == "final" and res.tool_calls == []
        jsonschema.validate(json.loads(res.content), schema)
        assert analysis_tokens(tokenizer, raw) <= budget


def test_json_object_gives_an_object(model, tokenizer):  # noqa: F811
    for seed in range(4):
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   max_tokens=200, response_format={"type": "json_object"},
                   thinking_token_budget=3, logit_bias=CLOSERS)
        assert res.finish_reason == "stop"
        assert isinstance(json.loads(res.content), dict)


def test_required_tool_call_names_a_tool_and_validates(model, tokenizer):  # noqa: F811
    names = set()
    for seed in range(6):
        res = chat(model, USER, tokenizer=tokenizer, tools=TOOLS, stream=False, seed=seed,
                   temperature=1.0, max_tokens=200, tool_choice="required",
                   thinking_token_budget=2, logit_bias=CLOSERS)
        assert res.finish_reason == "tool_calls" and len(res.tool_calls) == 1
        assert res.tool_calls[0].name in PARAMS and res.content == ""
        check_call(res.tool_calls[0])
        names.add(res.tool_calls[0].name)
    assert len(names) >= 2  # the model, not the constraint, picks the tool


def test_named_tool_call(model, tokenizer):  # noqa: F811
    for seed, name in enumerate(["add", "lookup", "get_weather"]):
        res = chat(model, USER, tokenizer=tokenizer, tools=TOOLS, stream=False, seed=seed,
                   temperature=1.0, max_tokens=200, logit_bias=CLOSERS,
                   tool_choice={"type": "function", "function": {"name": name}})
        assert res.finish_reason == "tool_calls", res
        assert [c.name for c in res.tool_calls] == [name]
        check_call(res.tool_calls[0])


def test_auto_and_none(model, tokenizer):  # noqa: F811
    kinds = []
    for seed in range(10):
        res = chat(model, USER, tokenizer=tokenizer, tools=TOOLS, stream=False, seed=seed,
                   temperature=1.0, max_tokens=80, tool_choice="auto", thinking_token_budget=0,
                   response_format={"type": "json_schema", "json_schema": {
                       "name": "n", "schema": SCHEMAS["person"]}}, logit_bias=CLOSERS)
        if res.tool_calls:
            kinds.append("call")
            check_call(res.tool_calls[0])
        else:
            kinds.append("answer")
            jsonschema.validate(json.loads(res.content), SCHEMAS["person"])
    assert set(kinds) == {"call", "answer"}  # both are reachable under "auto"
    for seed in range(4):
        res = chat(model, USER, tokenizer=tokenizer, tools=TOOLS, stream=False, seed=seed,
                   temperature=1.0, max_tokens=16, tool_choice="none", thinking_token_budget=1)
        assert res.tool_calls == [] and all(m.recipient is None for m in res)
        assert res[-1].channel == "final"


@pytest.mark.parametrize("budget", [1, 4, 9])
def test_small_budget_reaches_the_final_channel(model, tokenizer, budget):  # noqa: F811
    for seed in range(2):
        raw: list[int] = []
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   max_tokens=budget + 14, thinking_token_budget=budget, on_token=raw.append)
        assert analysis_tokens(tokenizer, raw) <= budget
        assert res[-1].channel == "final", tokenizer.decode(raw)
        text = tokenizer.decode(raw)
        # at most the budget's tokens and a few header tokens before the final channel opens
        opened = raw.index(200008, len(raw) - len(tokenizer.encode(res[-1].content)) - 1)
        assert "<|channel|>final" in text and opened <= budget + 12


@pytest.mark.parametrize("kw", [
    dict(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMAS["nested"]}},
         thinking_token_budget=4),
    dict(tools=TOOLS, tool_choice="required", thinking_token_budget=3, logit_bias=CLOSERS),
], ids=["json_schema", "tool_call"])
def test_streaming_matches_non_streaming(model, tokenizer, kw):  # noqa: F811
    for seed in range(2):
        raw_a: list[int] = []
        raw_b: list[int] = []
        res = chat(model, USER, tokenizer=tokenizer, stream=False, seed=seed, temperature=1.0,
                   max_tokens=150, on_token=raw_a.append, **kw)
        events = list(chat(model, USER, tokenizer=tokenizer, stream=True, seed=seed,
                           temperature=1.0, max_tokens=150, on_token=raw_b.append, **kw))
        assert raw_a == raw_b
        content = "".join(e.text for e in events if isinstance(e, ContentDelta) and e.channel == "final")
        reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
        calls = [e for e in events if isinstance(e, ToolCall)]
        done = events[-1]
        assert isinstance(done, Done) and done.finish_reason == res.finish_reason
        assert content == res.content and reasoning == res.reasoning
        assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in res.tool_calls]
