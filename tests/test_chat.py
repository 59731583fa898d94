"""Chat on a scripted fake model: harmony rendering in, typed events out, tools, KV reuse."""

from __future__ import annotations

import pytest

from fake_model import FakeModel
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss import harmony
from gptoss.chat import (ChatResponse, ContentDelta, Conversation, Done, ReasoningDelta, ToolCall,
                         build_messages, chat, tool_result)
from gptoss.generate import Usage, common_prefix

START, END, MESSAGE, RETURN, CALL = 200006, 200007, 200008, 200002, 200012
VOCAB = 201088

REPLY = ("<|channel|>analysis<|message|>User says hi. Respond.<|end|>"
         "<|start|>assistant<|channel|>final<|message|>Hello there! ☃<|return|>")
CALL_REPLY = ("<|channel|>analysis<|message|>Need weather.<|end|>"
              "<|start|>assistant<|channel|>commentary to=functions.get_weather "
              "<|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>")
AFTER_TOOL = "<|channel|>final<|message|>It is 20 degrees in Paris.<|return|>"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}


def harmony_script(tok, replies: dict[str, str]):
    """Answer the last user/tool message: `replies[its text]`, token by token, after the
    `<|start|>assistant` that follows it."""
    asst = tok.encode("assistant")
    table = {k: tok.encode(v, allowed_special="all") for k, v in replies.items()}

    def script(tokens):
        j = len(tokens) - 1
        while j >= 0:
            if (tokens[j] == START and len(tokens) > j + len(asst)
                    and tokens[j + 1:j + 1 + len(asst)] != asst):
                break
            j -= 1
        if j < 0:
            return None
        try:
            m = tokens.index(MESSAGE, j)
            e = tokens.index(END, m)
        except ValueError:
            return None
        reply = table.get(tok.decode(tokens[m + 1:e]))
        s = e + 1
        if reply is None or tokens[s:s + 1 + len(asst)] != [START] + asst:
            return None
        k = len(tokens) - (s + 1 + len(asst))
        return reply[k] if 0 <= k < len(reply) else None

    return script


@pytest.fixture
def model(tokenizer):  # noqa: F811
    return FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, {
        "hi": REPLY, "weather in Paris?": CALL_REPLY, '{"temp": 20}': AFTER_TOOL,
        "and now?": REPLY}))


def test_stream_events(model, tokenizer):  # noqa: F811
    events = list(chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer,
                       temperature=0, stream=True))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert reasoning == "User says hi. Respond."
    assert content == "Hello there! ☃"
    assert all(e.channel == "final" for e in events if isinstance(e, ContentDelta))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert done.usage.completion_tokens == len(tokenizer.encode(REPLY, allowed_special="all"))
    assert [m.channel for m in done.messages] == ["analysis", "final"]
    assert sum(isinstance(e, Done) for e in events) == 1
    # The prompt the model saw is exactly harmony's rendering.
    want = harmony.render(build_messages([{"role": "user", "content": "hi"}]),
                          for_completion=True, tokenizer=tokenizer)
    assert done.usage.prompt_tokens == len(want)


def test_prompt_matches_harmony_render(model, tokenizer):  # noqa: F811
    seen = []
    orig = model.step

    def spy(batch):  # the engine's first step feeds the whole prompt (nothing cached yet)
        batch = list(batch)
        seen.append(list(batch[0][1]))
        return orig(batch)

    model.step = spy
    chat(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
         tokenizer=tokenizer, reasoning_effort="high", stream=False, temperature=0)
    want = harmony.render([
        harmony.Message("system", harmony.SystemContent(reasoning_effort="high")),
        harmony.Message("developer", harmony.DeveloperContent(instructions="Be brief.")),
        harmony.Message("user", "hi")], for_completion=True, tokenizer=tokenizer)
    assert seen[0] == want


def test_non_streaming_returns_messages(model, tokenizer):  # noqa: F811
    res = chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer, stream=False,
               temperature=0)
    assert isinstance(res, ChatResponse)
    assert res.content == "Hello there! ☃" and res.reasoning == "User says hi. Respond."
    assert res.finish_reason == "stop" and isinstance(res.usage, Usage)
    assert all(isinstance(m, harmony.Message) and m.role == "assistant" for m in res)


def test_model_chat_wiring(model, tokenizer):  # noqa: F811
    from gptoss.chat import chat as chat_fn

    type(model).chat = lambda self, *a, **k: chat_fn(self, *a, **k)
    try:
        res = model.chat([{"role": "user", "content": "hi"}], tokenizer=tokenizer, stream=False,
                         temperature=0)
        assert res.content == "Hello there! ☃"
    finally:
        del type(model).chat


def test_tool_call_round_trip(model, tokenizer):  # noqa: F811
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    events = list(chat(model, msgs, tools=[WEATHER], tokenizer=tokenizer, temperature=0,
                       stream=True))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.recipient == "functions.get_weather"
    assert call.json() == {"city": "Paris"} and call.call_id.startswith("call_")
    # Arguments are not streamed as content.
    assert not any(isinstance(e, ContentDelta) for e in events)
    done = events[-1]
    assert done.finish_reason == "tool_calls" and done.tool_calls == [call]
    # Caller appends the reply and the tool output, calls again.
    history = msgs + done.messages + [tool_result(call, {"temp": 20})]
    res = chat(model, history, tools=[WEATHER], tokenizer=tokenizer, stream=False, temperature=0)
    assert res.content == "It is 20 degrees in Paris." and res.finish_reason == "stop"


def test_openai_style_tool_messages(model, tokenizer):  # noqa: F811
    history = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "reasoning": "Need weather.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 20}'},
    ]
    full = build_messages(history, tools=[{"type": "function", "function": WEATHER}])
    assert full[-1] == harmony.Message("tool", '{"temp": 20}', channel="commentary",
                                       recipient="assistant", author_name="functions.get_weather")
    assert full[-2].recipient == "functions.get_weather"
    assert full[-2].content_type == "<|constrain|>json"
    res = chat(model, history, tools=[WEATHER], tokenizer=tokenizer, stream=False, temperature=0)
    assert res.content == "It is 20 degrees in Paris."
    # The model's own call renders to the same tokens it generated.
    call_tokens = tokenizer.encode(CALL_REPLY, allowed_special="all")
    rendered = harmony.render(full[:-1], tokenizer=tokenizer)
    assert rendered[-len(call_tokens) + 19:] == call_tokens[19:]  # after the analysis message


def test_conversation_reuses_kv_cache(model, tokenizer):  # noqa: F811
    conv = Conversation(model, tokenizer=tokenizer, tools=[WEATHER], temperature=0)
    r1 = conv.send("weather in Paris?", stream=False)
    assert r1.finish_reason == "tool_calls" and r1.usage.cached_tokens == 0
    before = model.prefilled_tokens
    conv.add_tool_result(r1.tool_calls[0], {"temp": 20})
    r2 = conv.send(stream=False)
    assert r2.content == "It is 20 degrees in Paris."
    # The cache held prompt1 + the reply minus <|call|> (never fed back). harmony renders the
    # call's header as `to=... <|channel|>commentary`, while the model wrote the channel first,
    # so the reuse ends where the headers differ: after the first prompt and the analysis.
    render = lambda msgs: harmony.render(  # noqa: E731
        build_messages(msgs, tools=[WEATHER]), for_completion=True, tokenizer=tokenizer)
    cache = (render([{"role": "user", "content": "weather in Paris?"}])
             + tokenizer.encode(CALL_REPLY, allowed_special="all")[:-1])
    prompt2 = render(conv.messages[:-1])  # without the reply r2 appended
    assert r2.usage.prompt_tokens == len(prompt2)
    assert r2.usage.cached_tokens == common_prefix(cache, prompt2)
    assert r2.usage.cached_tokens > r1.usage.prompt_tokens + 5
    assert model.prefilled_tokens - before == len(prompt2) - r2.usage.cached_tokens
    # After a final answer the analysis is dropped from the history: the cache is rewound.
    events = list(conv.send("and now?", stream=True))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert 0 < done.usage.cached_tokens < done.usage.prompt_tokens
    assert [m.role for m in conv.messages][-3:] == ["user", "assistant", "assistant"]
    # Same result as a fresh chat on the same history.
    fresh = chat(model, conv.messages[:-2], tools=[WEATHER], tokenizer=tokenizer, stream=False,
                 temperature=0)
    assert fresh.content == "Hello there! ☃"
    assert conv.usage.completion_tokens == (r1.usage.completion_tokens
                                            + r2.usage.completion_tokens
                                            + done.usage.completion_tokens)
    conv.close()
    assert model.sequences_created == model.sequences_freed


def test_length_limit_and_truncated_message(model, tokenizer):  # noqa: F811
    events = list(chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer,
                       temperature=0, max_tokens=12, stream=True))
    done = events[-1]
    assert done.finish_reason == "length" and done.usage.completion_tokens == 12
    assert done.messages and done.messages[0].channel == "analysis"


def test_garbage_reply_never_raises(tokenizer):  # noqa: F811
    m = FakeModel(VOCAB, seed=1)  # random logits: text tokens, never harmony structure
    events = list(chat(m, [{"role": "user", "content": "x"}], tokenizer=tokenizer,
                       max_tokens=8, seed=0, stream=True))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert text  # the raw text is shown rather than nothing
    assert done.messages and done.messages[-1].role == "assistant"
    # The garbage reply can go back into the history.
    chat(m, [{"role": "user", "content": "x"}] + done.messages, tokenizer=tokenizer,
         max_tokens=2, seed=0, stream=False)


def test_sampled_ids_stay_in_tokenizer_vocab(tokenizer):  # noqa: F811
    m = FakeModel(VOCAB + 512, seed=2)  # bigger model vocab than the tokenizer
    big = {t: 100.0 for t in range(VOCAB, VOCAB + 512)}
    seen = []
    res = chat(m, [{"role": "user", "content": "x"}], tokenizer=tokenizer, max_tokens=5,
               seed=0, logit_bias=big, stream=False, on_token=seen.append)
    assert res.usage.completion_tokens == 5 and len(seen) == 5
    assert max(seen) < VOCAB


def test_errors(model, tokenizer):  # noqa: F811
    with pytest.raises(ValueError, match="reasoning_effort"):
        chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer,
             reasoning_effort="max")
    with pytest.raises(ValueError, match="role"):
        chat(model, [{"role": "robot", "content": "hi"}], tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown sampling parameter"):
        chat(model, [{"role": "user", "content": "hi"}], tokenizer=tokenizer, temprature=1)
    with pytest.raises(ValueError, match="tool_call_id"):
        chat(model, [{"role": "tool", "content": "1"}], tokenizer=tokenizer)
    small = FakeModel(1024)
    with pytest.raises(ValueError, match="vocab"):
        chat(small, [{"role": "user", "content": "hi"}], tokenizer=tokenizer)
    tiny_ctx = FakeModel(VOCAB, max_context=20)
    with pytest.raises(ValueError, match="max_context"):
        chat(tiny_ctx, [{"role": "user", "content": "hi"}], tokenizer=tokenizer)


def test_harmony_messages_and_system_content_pass_through(model, tokenizer):  # noqa: F811
    sysmsg = harmony.Message("system", harmony.SystemContent(reasoning_effort="low",
                                                             current_date="2025-01-01"))
    full = build_messages([sysmsg, harmony.Message("user", "hi")], instructions="Be nice")
    assert full[0] is sysmsg
    assert full[1].content.instructions == "Be nice"
    with pytest.raises(ValueError, match="first"):
        build_messages([harmony.Message("user", "hi"), sysmsg])
    res = chat(model, [sysmsg, harmony.Message("user", "hi")], tokenizer=tokenizer,
               stream=False, temperature=0)
    assert res.content == "Hello there! ☃"


def test_preamble_is_commentary_content(tokenizer):  # noqa: F811
    reply = ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
             "<|channel|>final<|message|>Done.<|return|>")
    m = FakeModel(VOCAB, script=harmony_script(tokenizer, {"go": reply}))
    events = list(chat(m, [{"role": "user", "content": "go"}], tokenizer=tokenizer,
                       temperature=0, stream=True))
    text = {}
    for e in events:
        if isinstance(e, ContentDelta):
            text[e.channel] = text.get(e.channel, "") + e.text
    assert text == {"commentary": "Checking.", "final": "Done."}
    assert list(text) == ["commentary", "final"]
