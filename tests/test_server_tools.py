"""The built-in tools through the server's Responses API: `code_interpreter` and `web_search` run
server-side (the real sandboxed python tool, the real browser over a local folder), appear as
`code_interpreter_call` and `web_search_call` items with their stream events, keep one sandbox
per conversation, and are cleaned up when it ends. A scripted model calls them."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("bm25s")
if shutil.which("bwrap") is None:  # pragma: no cover - CI installs it
    pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)", allow_module_level=True)

from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: E402,F401
from gptoss.server import ServerContext  # noqa: E402
from gptoss.server.builtin_tools import ServerTools  # noqa: E402
from gptoss.tools import LocalSearchBackend  # noqa: E402
from server_harness import openai_client, running_server  # noqa: E402
from test_tools_loop import AGAIN, STEPS, kb, model_for  # noqa: E402,F401

QUESTION = "What is 6*7, and what limits frobnicators?"
TOOLS = [{"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "web_search"}]


@pytest.fixture(scope="module")
def server(tokenizer, kb):  # noqa: F811
    model = model_for(tokenizer, {QUESTION: STEPS, "And plus one?": AGAIN})
    tools = ServerTools(python=True, search_backend=LocalSearchBackend(str(kb)), tokenizer=tokenizer)
    ctx = ServerContext(model, tokenizer, "m", harmony_constraint=False, tools=tools)
    with running_server(ctx) as base:
        yield base, ctx


def test_python_and_browser_run_server_side(server):
    base, ctx = server
    client = openai_client(base)
    r = client.responses.create(model="m", input=QUESTION, tools=TOOLS, temperature=0)
    assert r.status == "completed"
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "code_interpreter_call", "reasoning", "web_search_call", "web_search_call",
                     "reasoning", "message"]
    ci = r.output[1]
    assert ci.code == "x = 6 * 7\nprint(x)" and ci.outputs[0].logs == "42\n" and ci.status == "completed"
    search, opened = r.output[3], r.output[4]
    assert search.action.type == "search" and search.action.query == "frobnicators quota"
    assert opened.action.type == "open_page"
    assert "It is 42" in r.output_text
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    # The same conversation goes on: the python state is still there.
    r2 = client.responses.create(model="m", input="And plus one?", tools=TOOLS, previous_response_id=r.id,
                                 temperature=0)
    assert r2.output_text == "Then 43."
    assert r2.output[0].type == "code_interpreter_call" and r2.output[0].outputs[0].logs.strip() == "43"
    assert len(ctx.tools) == 1  # one sandbox for the whole chain


def test_stream_events_of_builtin_calls(server):
    base, ctx = server
    client = openai_client(base)
    before = len(ctx.tools)
    with client.responses.stream(model="m", input=QUESTION, tools=TOOLS, temperature=0, store=False) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    for k in ("response.code_interpreter_call.in_progress", "response.code_interpreter_call_code.delta",
              "response.code_interpreter_call_code.done", "response.code_interpreter_call.interpreting",
              "response.code_interpreter_call.completed", "response.web_search_call.in_progress",
              "response.web_search_call.searching", "response.web_search_call.completed"):
        assert k in kinds, k
    assert kinds.index("response.code_interpreter_call.in_progress") < kinds.index(
        "response.code_interpreter_call.completed") < kinds.index("response.web_search_call.in_progress")
    assert final.output_text.startswith("It is 42")
    assert len(ctx.tools) == before  # not stored: its sandbox is closed at once


def test_tools_the_server_does_not_run_are_ignored(tokenizer):  # noqa: F811
    from fake_model import FakeModel
    from test_chat import REPLY, VOCAB, harmony_script

    model = FakeModel(VOCAB, script=harmony_script(tokenizer, {"hi": REPLY}))
    with running_server(ServerContext(model, tokenizer, "m", harmony_constraint=False)) as base:
        r = openai_client(base).responses.create(model="m", input="hi", tools=TOOLS, temperature=0)
    assert r.status == "completed" and r.output_text == "Hello there! ☃"


# ---------------------------------------------------------------------------- MCP tool servers
MCP_SERVER = r'''
import sys
from mcp.server.mcpserver import MCPServer

srv = MCPServer("calc")


@srv.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


srv.run(transport="streamable-http", port=int(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory):
    import subprocess
    import sys
    import time

    import httpx2 as httpx

    pytest.importorskip("mcp")
    from server_harness import free_port

    port = free_port()
    script = tmp_path_factory.mktemp("mcp") / "server.py"
    script.write_text(MCP_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.time() < deadline, "the MCP server did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_mcp_tools_are_offered_as_functions_and_run(tokenizer, mcp_url):  # noqa: F811
    from fake_model import FakeModel
    from gptoss.server.mcp_tools import MCPTools
    from test_chat import VOCAB, harmony_script

    mcp = MCPTools(mcp_url).load()
    assert mcp.tools["add"]["parameters"]["required"] == ["a", "b"]
    model = FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, {
        "add 2 and 3": "<|channel|>analysis<|message|>Use add.<|end|><|start|>assistant<|channel|>commentary "
                       "to=functions.add <|constrain|>json<|message|>{\"a\": 2, \"b\": 3}<|call|>",
        "5": "<|channel|>final<|message|>The sum is 5.<|return|>"}))
    seen = []
    orig = model.step

    def spy(batch):
        batch = list(batch)
        seen.append(tokenizer.decode(list(batch[0][0].tokens) + list(batch[0][1])))
        return orig(batch)

    model.step = spy
    with running_server(ServerContext(model, tokenizer, "m", mcp=mcp)) as base:
        client = openai_client(base)
        r = client.responses.create(model="m", input="add 2 and 3", temperature=0)
        with client.responses.stream(model="m", input="add 2 and 3", temperature=0) as s:
            kinds = [e.type for e in s]
    assert "## functions" in seen[0] and "type add = (_: {" in seen[0]  # declared to the model
    assert [o.type for o in r.output] == ["reasoning", "mcp_call", "message"]
    call = r.output[1]
    assert call.name == "add" and call.output == "5" and not call.error and call.server_label == "mcp"
    assert r.output_text == "The sum is 5."
    for k in ("response.mcp_call.in_progress", "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
              "response.mcp_call.completed"):
        assert k in kinds, k
