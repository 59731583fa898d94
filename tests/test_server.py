"""`gptoss serve` through the real openai SDK on a real port: Chat Completions, Responses (with
the SDK's own stream helper), Completions, models, metrics. A scripted model replays harmony
replies, so tool calls, multi-turn tool loops, refusals without channels and malformed output go
through the real server end to end."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest

from fake_model import FakeModel
from fixtures_vocab import harmony_env, o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss.server import ServerContext
from server_harness import openai_client, running_server
from test_chat import AFTER_TOOL, CALL_REPLY, REPLY, VOCAB, WEATHER, harmony_script

TOOLS = [{"type": "function", "function": WEATHER}]
RESP_TOOLS = [{"type": "function", **WEATHER}]
SECOND_CALL = ("<|channel|>analysis<|message|>Also Rome.<|end|><|start|>assistant<|channel|>commentary "
               "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Rome\"}<|call|>")
# Text that str.splitlines() breaks although JSON keeps it raw (NEL, line and paragraph separators),
# next to the ones JSON escapes anyway.
ODD_BREAKS = "one\x85two\u2028three\u2029four\x0bfive\x1csix\r\nseven"
REPLIES = {
    "hi": REPLY,
    "weather in Paris?": CALL_REPLY,
    '{"temp": 20}': AFTER_TOOL,
    "two cities": CALL_REPLY,
    '{"temp": 21}': SECOND_CALL,
    '{"temp": 22}': "<|channel|>final<|message|>Paris 21, Rome 22.<|return|>",
    "refuse": "I can't help with that.<|return|>",
    "stray channel": "<|channel|>finalanswer<|message|>Odd channel.<|end|>",
    "no header": "<|message|>Just text.<|end|>",
    "bad recipient": "<|channel|>commentary to=<|message|>{}<|call|>",
    "nested start": "<|channel|>analysis<|message|>Hmm<|start|>assistant<|channel|>final<|message|>Ok.<|return|>",
    "long answer": "<|channel|>final<|message|>" + "alpha beta gamma delta epsilon " * 12 + "<|return|>",
    "odd line breaks": f"<|channel|>analysis<|message|>{ODD_BREAKS}<|end|>"
                       f"<|start|>assistant<|channel|>final<|message|>{ODD_BREAKS}<|return|>",
}


@pytest.fixture(scope="module")
def scripted(tokenizer):  # noqa: F811
    return FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, REPLIES))


@pytest.fixture(scope="module")
def server(scripted, tokenizer):  # noqa: F811
    ctx = ServerContext(scripted, tokenizer, "gpt-oss-test", harmony_constraint=False)
    with running_server(ctx) as base:
        yield base, ctx


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server[0])


def _user(text):
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------- chat completions
def test_chat_reply_reasoning_and_real_usage(client, tokenizer, server):  # noqa: F811
    from gptoss import harmony
    from gptoss.chat import build_messages

    r = client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), temperature=0,
                                       reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.content == "Hello there! ☃" and r.choices[0].finish_reason == "stop"
    extra = msg.model_extra
    assert extra["reasoning"] == extra["reasoning_content"] == "User says hi. Respond."
    prompt = harmony.render(build_messages(_user("hi"), reasoning_effort="high"), for_completion=True,
                            tokenizer=tokenizer)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(tokenizer.encode(REPLY, allowed_special="all"))
    analysis = len(tokenizer.encode("User says hi. Respond.<|end|>", allowed_special="all"))
    assert abs(r.usage.completion_tokens_details.reasoning_tokens - analysis) <= 1
    again = client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), temperature=0,
                                           reasoning_effort="high")
    assert again.usage.prompt_tokens_details.cached_tokens == len(prompt) - 1  # the prefix cache


def test_reasoning_effort_reaches_the_prompt(client, scripted, tokenizer):  # noqa: F811
    seen = []
    orig = scripted.step

    def spy(batch):
        batch = list(batch)
        seen.extend(tokenizer.decode(list(s.tokens) + list(t)) for s, t in batch)
        return orig(batch)

    scripted.step = spy
    try:
        for effort in ("low", "high"):
            client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), reasoning_effort=effort,
                                           max_tokens=1)
            assert any(f"Reasoning: {effort}" in s for s in seen)
            seen.clear()
    finally:
        scripted.step = orig


def test_chat_stream_order_and_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == "User says hi. Respond." and content == "Hello there! ☃"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0


def test_streams_keep_each_event_on_one_line_whatever_the_text(client, server):
    # httpx's aiter_lines (like many SSE readers) splits on every str.splitlines() break.
    body = {"model": "gpt-oss-test", "messages": _user("odd line breaks"), "temperature": 0, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning") or "" for d in deltas) == ODD_BREAKS
    assert "".join(d.get("content") or "" for d in deltas) == ODD_BREAKS
    with client.responses.stream(model="gpt-oss-test", input="odd line breaks", temperature=0) as s:
        text = "".join(ev.delta for ev in s if ev.type == "response.output_text.delta")
    assert text == ODD_BREAKS == s.get_final_response().output_text


def test_tool_call_whole_and_streamed(client):
    r = client.chat.completions.create(model="gpt-oss-test", messages=_user("weather in Paris?"), tools=TOOLS,
                                       temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.model_extra["reasoning"] == "Need weather."
    (call,) = ch.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model="gpt-oss-test", messages=_user("weather in Paris?"),
                                                 tools=TOOLS, temperature=0, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and deltas[0].function.arguments == ""
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
    assert json.loads("".join(d.function.arguments for d in deltas)) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_multi_turn_tool_loop_renders_as_harmony_does(client, scripted, tokenizer, harmony_env):  # noqa: F811
    import openai_harmony as oh

    msgs = _user("two cities")
    seen = []
    orig = scripted.step

    def spy(batch):
        batch = list(batch)
        seen.append(list(batch[0][0].tokens) + list(batch[0][1]))
        return orig(batch)

    scripted.step = spy
    try:
        for temp in ("21", "22"):
            r = client.chat.completions.create(model="gpt-oss-test", messages=msgs, tools=TOOLS, temperature=0)
            (call,) = r.choices[0].message.tool_calls
            msgs = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()],
                            "reasoning": r.choices[0].message.model_extra["reasoning"]},
                           {"role": "tool", "tool_call_id": call.id, "content": '{"temp": %s}' % temp}]
        seen.clear()
        r = client.chat.completions.create(model="gpt-oss-test", messages=msgs, tools=TOOLS, temperature=0)
    finally:
        scripted.step = orig
    assert r.choices[0].message.content == "Paris 21, Rome 22." and r.choices[0].finish_reason == "stop"
    # The prompt of the last turn, token for token as openai-harmony renders the conversation.
    dev = oh.DeveloperContent.new().with_function_tools([oh.ToolDescription.new(
        WEATHER["name"], WEATHER["description"], parameters=WEATHER["parameters"])])
    convo = [oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new().with_reasoning_effort(
                 oh.ReasoningEffort.MEDIUM)),
             oh.Message.from_role_and_content(oh.Role.DEVELOPER, dev),
             oh.Message.from_role_and_content(oh.Role.USER, "two cities")]
    for city, temp, why in (("Paris", "21", "Need weather."), ("Rome", "22", "Also Rome.")):
        convo += [oh.Message.from_role_and_content(oh.Role.ASSISTANT, why).with_channel("analysis"),
                  oh.Message.from_role_and_content(oh.Role.ASSISTANT, json.dumps({"city": city}))
                  .with_channel("commentary").with_recipient("functions.get_weather").with_content_type(
                      "<|constrain|>json"),
                  oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_weather"),
                                                     '{"temp": %s}' % temp).with_channel("commentary")
                  .with_recipient("assistant")]
    want = harmony_env.render_conversation_for_completion(oh.Conversation.from_messages(convo), oh.Role.ASSISTANT)
    from gptoss.chat import build_messages  # noqa: F401  (the system message's date is omitted on both)
    got = seen[0]
    assert tokenizer.decode(got) == tokenizer.decode(want)
    assert got == list(want)


@pytest.mark.parametrize("key", ["refuse", "stray channel", "no header", "bad recipient", "nested start"])
def test_malformed_output_never_breaks_a_request(client, key):
    r = client.chat.completions.create(model="gpt-oss-test", messages=_user(key), temperature=0, max_tokens=60)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    chunks = list(client.chat.completions.create(model="gpt-oss-test", messages=_user(key), temperature=0,
                                                 max_tokens=60, stream=True))
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    if key == "refuse":
        assert r.choices[0].message.content == "I can't help with that."


def test_truncated_tool_call_finishes_with_length(client):
    r = client.chat.completions.create(model="gpt-oss-test", messages=_user("weather in Paris?"), tools=TOOLS,
                                       temperature=0, max_tokens=14)
    assert r.choices[0].finish_reason == "length"


def test_n_logprobs_seed_and_stop(client):
    r = client.chat.completions.create(model="gpt-oss-test", messages=_user("long answer"), n=3, temperature=0,
                                       logprobs=True, top_logprobs=2, stop=["delta", "nowhere"])
    assert len(r.choices) == 3 and len({c.message.content for c in r.choices}) == 1
    c = r.choices[0]
    assert c.finish_reason == "stop" and c.message.content == "alpha beta gamma "
    toks = c.logprobs.content
    assert toks and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in toks)
    assert "".join(t.token for t in toks).startswith("alpha beta gamma")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model="gpt-oss-test", messages=_user("long answer"), temperature=0, stop=["delta"], stream=True))
    assert streamed == "alpha beta gamma "
    # A stop string in the reasoning does not stop anything: it is matched in the answer only.
    r = client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), temperature=0, stop=["Respond"])
    assert r.choices[0].message.content == "Hello there! ☃"


# ---------------------------------------------------------------------------- responses
def test_responses_create_stream_helper_and_store(client):
    r = client.responses.create(model="gpt-oss-test", input="hi", temperature=0)
    assert r.status == "completed" and r.output_text == "Hello there! ☃"
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "User says hi. Respond."
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    assert client.responses.retrieve(r.id).output_text == r.output_text
    with client.responses.stream(model="gpt-oss-test", input="hi", temperature=0) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output_text == "Hello there! ☃"


def test_responses_function_calls_and_previous_response(client):
    r = client.responses.create(model="gpt-oss-test", input="weather in Paris?", tools=RESP_TOOLS, temperature=0)
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    r2 = client.responses.create(model="gpt-oss-test", previous_response_id=r.id, tools=RESP_TOOLS, temperature=0,
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": '{"temp": 20}'}])
    assert r2.output_text == "It is 20 degrees in Paris."
    with client.responses.stream(model="gpt-oss-test", input="weather in Paris?", tools=RESP_TOOLS,
                                 temperature=0) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    assert any(o.type == "function_call" for o in final.output)


def test_stateless_client_hands_the_reasoning_back(client, scripted, tokenizer):  # noqa: F811
    """Codex's way: store false, include the encrypted reasoning, send every item back."""
    r = client.responses.create(model="gpt-oss-test", input="weather in Paris?", tools=RESP_TOOLS, temperature=0,
                                store=False, include=["reasoning.encrypted_content"])
    items = [o.model_dump(exclude_none=True) for o in r.output]
    reasoning = next(i for i in items if i["type"] == "reasoning")
    assert reasoning["encrypted_content"]
    reasoning["content"] = []  # a client that keeps only the opaque token
    call = next(i for i in items if i["type"] == "function_call")
    seen = []
    orig = scripted.step

    def spy(batch):
        batch = list(batch)
        seen.append(tokenizer.decode(list(batch[0][0].tokens) + list(batch[0][1])))
        return orig(batch)

    scripted.step = spy
    try:
        r2 = client.responses.create(model="gpt-oss-test", tools=RESP_TOOLS, temperature=0, store=False,
                                     input=[{"role": "user", "content": "weather in Paris?"}, *items,
                                            {"type": "function_call_output", "call_id": call["call_id"],
                                             "output": '{"temp": 20}'}])
    finally:
        scripted.step = orig
    assert r2.output_text == "It is 20 degrees in Paris."
    assert "<|channel|>analysis<|message|>Need weather.<|end|>" in seen[0]  # the CoT before the call kept
    with pytest.raises(Exception):
        client.responses.retrieve(r.id)  # not stored


def test_responses_limits_and_ignored_tools(client):
    r = client.responses.create(model="gpt-oss-test", input="long answer", temperature=0, max_output_tokens=5,
                                tools=[{"type": "web_search"}])
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


# ---------------------------------------------------------------------------- completions, models, metrics
def test_completions_and_models(client):
    r = client.completions.create(model="gpt-oss-test", prompt="Hello", max_tokens=4, temperature=0, logprobs=1)
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].logprobs.tokens) == 4
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="gpt-oss-test", prompt="Hello", max_tokens=4, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    assert [m.id for m in client.models.list()] == ["gpt-oss-test"]


def test_health_version_metrics(server, client):
    base, ctx = server
    client.chat.completions.create(model="gpt-oss-test", messages=_user("hi"), max_tokens=3)
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    assert httpx.get(base + "/version").json()["version"]
    text = httpx.get(base + "/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries",
                 "prefix_cache_hits", "num_preemptions", "prompt_tokens_total", "generation_tokens_total",
                 "request_success_total", "time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert f"gptoss:{name}" in text, name
    assert 'gptoss:request_success_total{finished_reason="length",model_name="gpt-oss-test"}' in text


def _oh_conversations(oh):
    """(chat messages, tools, the same conversation in openai-harmony's types)."""
    sys_ = oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new().with_reasoning_effort(
        oh.ReasoningEffort.MEDIUM))
    user = lambda t: oh.Message.from_role_and_content(oh.Role.USER, t)  # noqa: E731
    asst = lambda t, ch: oh.Message.from_role_and_content(oh.Role.ASSISTANT, t).with_channel(ch)  # noqa: E731
    def dev(text=None, tools=False):
        c = oh.DeveloperContent.new().with_instructions(text) if text else oh.DeveloperContent.new()
        if tools:
            c = c.with_function_tools([oh.ToolDescription.new(WEATHER["name"], WEATHER["description"],
                                                              parameters=WEATHER["parameters"])])
        return oh.Message.from_role_and_content(oh.Role.DEVELOPER, c)

    return [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], None,
         [sys_, dev("Be brief."), user("hi")]),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello.", "reasoning": "Greet."},
          {"role": "user", "content": "again"}], None,
         [sys_, user("hi"), asst("Greet.", "analysis"), asst("Hello.", "final"), user("again")]),
        ([{"role": "developer", "content": "Use tools."}, {"role": "user", "content": "weather in Paris?"}], TOOLS,
         [sys_, dev("Use tools.", tools=True), user("weather in Paris?")]),
        ([{"role": "user", "content": "weather in Paris?"},
          {"role": "assistant", "reasoning": "Need weather.", "content": None, "tool_calls": [
              {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
          {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 20}'}], TOOLS,
         [sys_, dev(tools=True), user("weather in Paris?"), asst("Need weather.", "analysis"),
          asst('{"city": "Paris"}', "commentary").with_recipient("functions.get_weather").with_content_type(
              "<|constrain|>json"),
          oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, "functions.get_weather"), '{"temp": 20}')
          .with_channel("commentary").with_recipient("assistant")]),
    ]


def test_prompts_are_token_identical_to_openai_harmony(client, scripted, tokenizer, harmony_env):  # noqa: F811
    import openai_harmony as oh

    seen = []
    orig = scripted.step

    def spy(batch):
        batch = list(batch)
        seen.append(list(batch[0][0].tokens) + list(batch[0][1]))
        return orig(batch)

    scripted.step = spy
    try:
        for messages, tools, convo in _oh_conversations(oh):
            seen.clear()
            kw = {"tools": tools} if tools else {}
            client.chat.completions.create(model="gpt-oss-test", messages=messages, max_tokens=1, **kw)
            want = harmony_env.render_conversation_for_completion(oh.Conversation.from_messages(convo),
                                                                  oh.Role.ASSISTANT)
            assert seen[0] == list(want), tokenizer.decode(seen[0])
    finally:
        scripted.step = orig
