"""`gptoss serve` on a real (tiny, random, full-vocabulary) model: the `gptoss serve` command
itself with SIGTERM mid-stream, 64 concurrent streams with cancellations and disconnects,
structured outputs through the SDK's `parse`, and an `openai-agents` agent loop."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from server_harness import free_port, openai_client, running_server

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gptoss._core") is None,
                                reason="compiled module gptoss._core not built")
VOCAB = 201088


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from gptoss.config import preset
    from gptoss.synthetic import write_checkpoint

    d = tmp_path_factory.mktemp("tiny-serve")
    write_checkpoint(preset("tiny", vocab_size=VOCAB), str(d), seed=7)
    return d


@pytest.fixture(scope="module")
def real(ckpt, tokenizer):  # noqa: F811
    import gptoss
    from gptoss.server import ServerContext

    m = gptoss.Model(str(ckpt), kv_cache_bytes=64 << 20, max_context=2048)
    ctx = ServerContext(m, tokenizer, "tiny")
    with running_server(ctx) as base:
        yield base, ctx, m


def test_64_streams_with_cancellations_and_disconnects(real):
    base, ctx, model = real
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    statuses, health = [], []

    async def one(client, i):
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"request {i} " * rng.randint(1, 30)}],
                "stream": True, "max_tokens": rng.randint(5, 40), "seed": i}
        cut = rng.choice([None, None, 0, 1, 3, 8])  # disconnect after that many chunks
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
            statuses.append(r.status_code)
            n = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    n += 1
                    if line != "data: [DONE]":
                        assert "error" not in json.loads(line[6:]), line
                if cut is not None and n >= cut:
                    break  # leaving the block closes the connection mid-stream

    async def watch_health(client, done):
        while not done.is_set():
            t = time.perf_counter()
            r = await client.get(base + "/health")
            health.append((r.status_code, time.perf_counter() - t))
            await asyncio.sleep(0.05)

    async def main():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            done = asyncio.Event()
            hw = asyncio.create_task(watch_health(client, done))
            await asyncio.gather(*(one(client, i) for i in range(64)))
            done.set()
            await hw

    asyncio.run(main())
    assert statuses == [200] * 64, seed
    assert health and all(s == 200 for s, _ in health) and max(t for _, t in health) < 1.0, (seed, health)
    deadline = time.time() + 30
    while ctx.engine.num_unfinished() and time.time() < deadline:
        time.sleep(0.05)
    assert ctx.engine.num_unfinished() == 0, seed
    model.clear_prefix_cache()
    st = model.kv_cache_stats()
    assert st["full_blocks_used"] == 0 and st["window_blocks_used"] == 0, seed  # nothing leaked
    client = openai_client(base)
    assert client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2).choices[0].finish_reason in ("length", "stop")


def test_structured_parse_through_the_sdk(real):
    from typing import Literal

    import jsonschema
    from pydantic import BaseModel, Field

    class Weather(BaseModel):
        sky: Literal["clear", "cloudy", "rain"]
        temperature: int = Field(ge=-40, le=50)
        windy: bool

    base, _, _ = real
    client = openai_client(base)
    for seed in range(3):
        r = client.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "Weather?"}],
                                          response_format=Weather, seed=seed, temperature=1.0, max_tokens=300,
                                          extra_body={"thinking_token_budget": 8})
        parsed = r.choices[0].message.parsed
        assert isinstance(parsed, Weather), r
        jsonschema.validate(json.loads(r.choices[0].message.content), Weather.model_json_schema())
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Call it."}],
                                       tools=[{"type": "function", "function": {
                                           "name": "lookup", "strict": True,
                                           "parameters": {"type": "object", "additionalProperties": False,
                                                          "properties": {"n": {"type": "integer", "minimum": 0,
                                                                               "maximum": 9}},
                                                          "required": ["n"]}}}],
                                       tool_choice="required", seed=1, max_tokens=200,
                                       extra_body={"thinking_token_budget": 4})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "lookup" and 0 <= json.loads(call.function.arguments)["n"] <= 9
    assert r.choices[0].finish_reason == "tool_calls"


def test_agents_sdk_runs_a_tool_loop(tokenizer):  # noqa: F811
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    from fake_model import FakeModel
    from gptoss.server import ServerContext
    from test_chat import AFTER_TOOL, CALL_REPLY, harmony_script

    agents.set_tracing_disabled(True)
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather"""
        calls.append(city)
        return '{"temp": 20}'

    fake = FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, {
        "weather in Paris?": CALL_REPLY, '{"temp": 20}': AFTER_TOOL}))
    with running_server(ServerContext(fake, tokenizer, "agent-model", harmony_constraint=False)) as base:
        client = AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        for model in (agents.OpenAIResponsesModel(model="agent-model", openai_client=client),
                      agents.OpenAIChatCompletionsModel(model="agent-model", openai_client=client)):
            agent = agents.Agent(name="weather", instructions="Answer briefly.", tools=[get_weather], model=model,
                                 model_settings=agents.ModelSettings(temperature=0))
            result = agents.Runner.run_sync(agent, "weather in Paris?")
            assert result.final_output == "It is 20 degrees in Paris."
        assert calls == ["Paris", "Paris"]


def test_the_command_serves_and_stops_cleanly_on_sigterm(ckpt):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GPTOSS_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "gptoss", "serve", "--model", str(ckpt), "--port", str(port),
                             "--context", "4096", "--kv-cache-bytes", str(64 << 20)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        models = httpx.get(base + "/v1/models").json()
        assert models["data"][0]["id"] == ckpt.name  # the folder's name by default
        lines = []
        body = {"model": ckpt.name, "messages": [{"role": "user", "content": "go"}], "stream": True,
                "max_tokens": 100000}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 5:
                    proc.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]"
        err = json.loads(lines[-2][6:])
        assert err["error"]["code"] == "server_shutdown"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
