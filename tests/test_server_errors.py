"""Every error of `gptoss serve` is OpenAI's error body with the right 4xx (never a 500 for what
the client or the model did), and the server still serves afterwards."""

from __future__ import annotations

import json
import threading
import time

import httpx2 as httpx
import openai
import pytest

from fake_model import FakeModel
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from gptoss.server import ServerContext
from server_harness import openai_client, running_server
from test_chat import REPLY, VOCAB, harmony_script

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def server(tokenizer):  # noqa: F811
    model = FakeModel(VOCAB, max_context=200, script=harmony_script(tokenizer, {"hi": REPLY}))
    ctx = ServerContext(model, tokenizer, "m", api_key=KEY, max_waiting=2)
    with running_server(ctx) as base:
        yield base, ctx


def _post(base, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(base + path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                      headers={"Content-Type": "application/json", **headers}, timeout=60, **kw)


def _still_serves(base):
    r = _post(base, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 3})
    assert r.status_code == 200, r.text


def _error(r, status, *, param=None, code=None, match=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if match is not None:
        assert match in err["message"], err
    return err


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("field,value,param", [
    ("temperature", 5, "temperature"), ("temperature", "hot", "temperature"), ("top_p", 0, "top_p"),
    ("max_tokens", 0, "max_tokens"), ("max_completion_tokens", -3, "max_completion_tokens"), ("n", 99, "n"),
    ("top_logprobs", 3, "top_logprobs"), ("stop", [""], "stop"), ("logit_bias", {"x": 1}, "logit_bias"),
    ("logit_bias", {"5": 500}, "logit_bias"), ("reasoning_effort", "max", "reasoning_effort"),
    ("seed", -1, "seed"), ("stream", "yes", "stream"), ("stream_options", {"include_usage": True}, "stream_options"),
    ("presence_penalty", 3, "presence_penalty"), ("tools", [{"type": "function", "function": {}}], "tools[0]"),
    ("messages", [], "messages"), ("messages", [{"role": "robot", "content": "x"}], "messages[0].role"),
    ("messages", [{"role": "tool", "content": "x", "tool_call_id": "nope"}], "messages[0].tool_call_id"),
    ("messages", [{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content[0].type"),
    ("frobnicate", 1, "frobnicate"), ("functions", [], "functions"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                                         "uniqueItems": True,
                                                                                         "not": {}}}},
     "response_format"),
    ("tool_choice", "sometimes", "tool_choice"), ("thinking_token_budget", -1, "thinking_token_budget"),
])
def test_bad_values_are_400_naming_the_field(server, field, value, param):
    base, _ = server
    body = dict(CHAT, **{field: value})
    _error(_post(base, "/v1/chat/completions", body), 400, param=param)


def test_not_found_auth_size_json_and_context(server):
    base, ctx = server
    _error(_post(base, "/v1/chat/completions", dict(CHAT, model="other")), 404, param="model", code="model_not_found")
    _error(_post(base, "/v1/chat/completions", CHAT, key=None), 401, code="invalid_api_key")
    _error(_post(base, "/v1/chat/completions", CHAT, key="wrong"), 401, code="invalid_api_key")
    _error(_post(base, "/v1/chat/completions", b"{not json"), 400, code="invalid_json")
    _error(_post(base, "/v1/chat/completions", b"[1, 2]"), 400)
    _error(_post(base, "/v1/chat/completions", b"x" * (33 << 20)), 413)
    long = dict(CHAT, messages=[{"role": "user", "content": "word " * 400}])
    _error(_post(base, "/v1/chat/completions", long), 400, code="context_length_exceeded")
    _error(_post(base, "/v1/responses", {"model": "m", "input": "word " * 400}), 400, code="context_length_exceeded")
    _error(_post(base, "/v1/completions", {"model": "m", "prompt": [10 ** 7]}), 400, param="prompt[0]")
    _error(_post(base, "/v1/responses", {"model": "m", "input": "hi", "previous_response_id": "resp_nope"}), 404)
    _error(_post(base, "/v1/responses", {"model": "m", "input": [{"type": "function_call_output", "call_id": "x"}]}),
           400, param="input[0].call_id")
    _error(_post(base, "/v1/responses", {"model": "m", "input": "hi", "tools": [{"type": "teleport"}]}), 400,
           param="tools[0].type")
    _error(httpx.get(base + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}), 404)
    _error(httpx.get(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)
    assert httpx.get(base + "/health").status_code == 200  # open without the key
    _still_serves(base)


def test_streamed_context_overflow_is_a_failed_response(server):
    base, _ = server
    c = openai_client(base, api_key=KEY)
    with c.responses.stream(model="m", input="word " * 400) as s:
        kinds = [e.type for e in s]
    assert kinds == ["response.created", "response.failed"]


def test_sdk_raises_typed_errors(server):
    base, _ = server
    c = openai_client(base, api_key=KEY)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai_client(base, api_key="bad").models.list()


def test_full_queue_is_503_with_retry_after(server, tokenizer):  # noqa: F811
    base, ctx = server
    gate = threading.Event()
    orig = ctx.model.step

    def slow(batch):  # hold the engine so that requests pile up in the queue
        gate.wait(30)
        return orig(batch)

    ctx.model.step = slow
    results = []
    ts = [threading.Thread(target=lambda: results.append(_post(base, "/v1/chat/completions",
                                                               dict(CHAT, max_tokens=2))))
          for _ in range(4)]
    try:
        for t in ts:
            t.start()
            time.sleep(0.2)
        deadline = time.time() + 10
        while ctx.engine.num_waiting() < 2 and time.time() < deadline:
            time.sleep(0.05)
        r = _post(base, "/v1/chat/completions", dict(CHAT, max_tokens=2))
        _error(r, 503, code="server_overloaded")
        assert r.headers["retry-after"] == "1"
    finally:
        gate.set()
        for t in ts:
            t.join()
        ctx.model.step = orig
    assert sorted(x.status_code for x in results).count(200) >= 3
    _still_serves(base)


def test_loading_model_is_503_on_health_and_endpoints():
    from gptoss.server import create_app
    from server_harness import free_port
    import uvicorn

    release = threading.Event()

    def loader():
        release.wait(30)
        raise RuntimeError("checkpoint unreadable")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(loader=loader), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    try:
        _error(httpx.get(base + "/health"), 503, code="model_loading")
        _error(_post(base, "/v1/chat/completions", CHAT), 503, code="model_loading")
        release.set()
        time.sleep(0.3)
        _error(httpx.get(base + "/health"), 503, match="checkpoint unreadable")
    finally:
        server.should_exit = True
        t.join(10)
