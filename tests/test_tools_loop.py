"""The tool-execution loop end to end: a scripted model runner (the model's interface, replaying
harmony token sequences) calls the real python tool and the real browser, gets their outputs and
answers, through `chat` / `Model.chat`, `Conversation` and the ``gptoss chat`` command.

The prompt of the last step is checked token for token against openai-harmony's rendering of the
same conversation with its own python and browser tool definitions.
"""

from __future__ import annotations

import io
import os
import shutil
import sys

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("bm25s")
if shutil.which("bwrap") is None:  # pragma: no cover - CI installs it
    pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)", allow_module_level=True)

from fake_model import FakeModel  # noqa: E402
from fixtures_vocab import harmony_env, o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: E402,F401
from gptoss import harmony  # noqa: E402
from gptoss.chat import ContentDelta, Conversation, Done, ReasoningDelta, ToolCall, chat  # noqa: E402
from gptoss.tools import BrowserTool, BuiltinTools, LocalSearchBackend, PythonTool, ToolOutput  # noqa: E402

START, END, MESSAGE, CALL = 200006, 200007, 200008, 200012
VOCAB = 201088

STEPS = [
    "<|channel|>analysis<|message|>Compute first.<|end|>"
    "<|start|>assistant<|channel|>analysis to=python code<|message|>x = 6 * 7\nprint(x)<|call|>",
    "<|channel|>analysis<|message|>Now look it up.<|end|>"
    "<|start|>assistant<|channel|>analysis to=browser.search code<|message|>"
    '{"query": "frobnicators quota"}<|call|>',
    "<|channel|>analysis to=browser.open code<|message|>{\"id\": 0}<|call|>",
    "<|channel|>analysis<|message|>Found it.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>It is 42; the quota is enforced "
    "【1†L6-L7】.<|return|>",
]
AGAIN = ["<|channel|>analysis to=python code<|message|>x + 1<|call|>",
         "<|channel|>final<|message|>Then 43.<|return|>"]


def replay(tok, turns: dict[str, list[str]]):
    """A script for FakeModel: after the prompt of step k of the turn that began with user
    message U (k = tool messages since U), emit `turns[U][k]` token by token."""
    asst, user = tok.encode("assistant"), tok.encode("user")
    table = {u: [tok.encode(r, allowed_special="all") for r in rs] for u, rs in turns.items()}

    def script(tokens):
        starts = [i for i, t in enumerate(tokens) if t == START]
        others = [i for i in starts if i + len(asst) < len(tokens)  # role known, not ours
                  and tokens[i + 1:i + 1 + len(asst)] != asst]
        if not others:
            return None
        j = others[-1]
        try:
            e = tokens.index(END, j)
        except ValueError:
            return None
        s = e + 1
        if tokens[s:s + 1 + len(asst)] != [START] + asst:
            return None
        users = [i for i in others if tokens[i + 1:i + 1 + len(user)] == user]
        u = users[-1]
        text = tok.decode(tokens[tokens.index(MESSAGE, u) + 1:tokens.index(END, u)])
        step = sum(1 for i in others if i > u)
        replies = table.get(text, [])
        if step >= len(replies):
            return None
        k = len(tokens) - (s + 1 + len(asst))
        return replies[step][k] if 0 <= k < len(replies[step]) else None

    return script


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    d = tmp_path_factory.mktemp("kbroot") / "kb"
    d.mkdir()
    (d / "limits.md").write_text(
        "# Limits\n\nThe python tool runs in a sandbox.\n\n## Quotas\n\n"
        "Memory, CPU time, processes and file size are limited. A process that\n"
        "exceeds its quota of frobnicators is stopped at once.\n")
    (d / "other.md").write_text("# Other\n\nNothing about that here.\n")
    return d


@pytest.fixture(scope="module")
def py():
    with PythonTool() as tool:
        yield tool


def model_for(tokenizer, turns):  # noqa: F811
    return FakeModel(VOCAB, max_context=8192, script=replay(tokenizer, turns))


def test_chat_runs_python_and_browser(py, kb, tokenizer, harmony_env):  # noqa: F811
    oh = pytest.importorskip("openai_harmony")
    m = model_for(tokenizer, {"What is 6*7, and what limits frobnicators?": STEPS})
    prompts = []
    orig = m.logits_for
    m.logits_for = lambda toks: (prompts.append(list(toks)), orig(toks))[1]
    browser = BrowserTool(LocalSearchBackend(str(kb)))
    py.restart()
    events = list(chat(m, [{"role": "user", "content": "What is 6*7, and what limits "
                                                          "frobnicators?"}],
                       tokenizer=tokenizer, temperature=0, builtin_tools=[py, browser],
                       current_date="2025-08-05", stream=True))
    kinds = [type(e).__name__ for e in events if not isinstance(e, (ReasoningDelta, ContentDelta))]
    assert kinds == ["ToolCall", "ToolOutput", "ToolCall", "ToolOutput", "ToolCall",
                     "ToolOutput", "Done"]
    calls = [e for e in events if isinstance(e, ToolCall)]
    outs = [e for e in events if isinstance(e, ToolOutput)]
    assert [c.recipient for c in calls] == ["python", "browser.search", "browser.open"]
    assert outs[0].output == "42\n"
    # The browser's outputs are exactly its views of the local folder.
    fresh = BrowserTool(LocalSearchBackend(str(kb)), tokenizer=tokenizer)
    assert outs[1].output == fresh.search("frobnicators quota")
    assert outs[2].output == fresh.open(0)
    assert outs[2].output.startswith("[1] Limits (file://kb/limits.md)")
    # Tool messages: authored by the tool, to the assistant, on the call's channel.
    msg = outs[1].message
    assert (msg.role, msg.author_name, msg.recipient, msg.channel) == \
        ("tool", "browser.search", "assistant", "analysis")
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.tool_calls == []
    answer = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert answer == "It is 42; the quota is enforced 【1†L6-L7】."
    assert [(x.role, x.author_name if x.role == "tool" else x.recipient)
            for x in done.messages] == [
        ("assistant", None), ("assistant", "python"), ("tool", "python"),
        ("assistant", None), ("assistant", "browser.search"), ("tool", "browser.search"),
        ("assistant", "browser.open"), ("tool", "browser.open"),
        ("assistant", None), ("assistant", None)]
    # The model's citation points at the lines it read (cursor 1 is the page it opened).
    [cite] = browser.citations(answer)
    assert cite.url == "file://kb/limits.md" and "frobnicators" in cite.text
    # Each step reused the KV cache of the previous one.
    assert done.usage.cached_tokens > 0
    # The last prompt is openai-harmony's rendering of the whole turn, tools declared by it.
    from test_harmony import to_oracle

    sc = (oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.LOW)
          .with_conversation_start_date("2025-08-05").with_browser_tool().with_python_tool())
    conv = [oh.Message.from_role_and_content(oh.Role.SYSTEM, sc),
            oh.Message.from_role_and_content(oh.Role.USER,
                                             "What is 6*7, and what limits frobnicators?")]
    conv += [to_oracle(x) for x in done.messages[:-2]]  # up to the last step's prompt
    want = harmony_env.render_conversation_for_completion(oh.Conversation.from_messages(conv),
                                                          oh.Role.ASSISTANT)
    assert want in prompts  # the model's input right after the last step's prefill


def test_model_chat_non_streaming_and_conversation_keeps_state(kb, tokenizer):  # noqa: F811
    turns = {"first?": STEPS, "and plus one?": AGAIN}
    m = model_for(tokenizer, turns)
    with Conversation(m, tokenizer=tokenizer, temperature=0,
                      builtin_tools=["python", BrowserTool(LocalSearchBackend(str(kb)))]) as conv:
        res = conv.send("first?", stream=False)
        assert res.content == "It is 42; the quota is enforced 【1†L6-L7】."
        assert res.finish_reason == "stop"
        tool = conv.builtin_tools.python
        assert isinstance(tool, PythonTool)  # made at the first call, for the conversation
        ns = tool.pid_namespace()
        events = list(conv.send("and plus one?", stream=True))
        out = [e for e in events if isinstance(e, ToolOutput)]
        assert out[0].output == "43\n"  # x from the first turn is still defined
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "Then 43."
        assert conv.messages[-1].content == "Then 43."
        assert sum(1 for x in conv.messages if x.role == "tool") == 4
    assert tool.closed and not any(_in_ns(p, ns) for p in os.listdir("/proc") if p.isdigit())


def _in_ns(pid: str, ns: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == ns
    except OSError:
        return False


def test_step_limit_and_function_calls_stop_the_loop(py, tokenizer):  # noqa: F811
    loop = ["<|channel|>analysis to=python code<|message|>1<|call|>"] * 5
    m = model_for(tokenizer, {"loop": loop})
    pytest.importorskip("gptoss._core")
    from gptoss.model import Model

    res = Model.chat(m, [{"role": "user", "content": "loop"}], tokenizer=tokenizer,
                     temperature=0, builtin_tools=[py], max_tool_steps=2, stream=False)
    assert res.finish_reason == "max_tool_steps"
    assert sum(1 for x in res if x.role == "tool") == 2
    assert [c.recipient for c in res.tool_calls] == ["python"]  # the call not executed
    # A function call is the caller's: the loop stops and hands it over.
    fn = ["<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
          '{"city": "Paris"}<|call|>']
    m = model_for(tokenizer, {"weather?": fn})
    res = chat(m, [{"role": "user", "content": "weather?"}], tokenizer=tokenizer,
               temperature=0, builtin_tools=[py], stream=False,
               tools=[{"name": "get_weather", "parameters": {"type": "object"}}])
    assert res.finish_reason == "tool_calls"
    assert [c.name for c in res.tool_calls] == ["get_weather"]


def test_declared_tools_and_errors(py, tokenizer):  # noqa: F811
    b = BuiltinTools([py])
    assert b.namespaces() == ["python"]
    with pytest.raises(ValueError, match="unknown built-in tool"):
        BuiltinTools(["shell"])
    m = model_for(tokenizer, {})
    with pytest.raises(ValueError, match="reasoning_effort"):
        chat(m, [{"role": "user", "content": "x"}], tokenizer=tokenizer, builtin_tools=[py],
             reasoning_effort="extreme")
    sysmsg = harmony.Message("system", harmony.SystemContent(builtin_tools=("python",)))
    with pytest.raises(ValueError, match="either in the SystemContent"):
        chat(m, [sysmsg, {"role": "user", "content": "x"}], tokenizer=tokenizer,
             builtin_tools=[py])


# ---------------------------------------------------------------- the command
class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_cli_chat_with_python_and_browser(kb, tokenizer, monkeypatch, capsys):  # noqa: F811
    import gptoss.cli as cli

    m = model_for(tokenizer, {"What is 6*7, and what limits frobnicators?": STEPS})
    monkeypatch.setattr(cli, "_load", lambda a: (m, tokenizer))
    monkeypatch.setattr(sys, "stdin", _Stdin("What is 6*7, and what limits frobnicators?\n"))
    rc = cli.main(["chat", "--model", str(kb), "-t", "0", "-p", "--browser-index", str(kb)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Tool call: python\nx = 6 * 7\nprint(x)\nTool output: python\n42\n" in out
    assert 'Tool call: browser.search\n{"query": "frobnicators quota"}\n' in out
    assert "Tool output: browser.search\n[0] frobnicators quota ... (" in out
    assert "Tool output: browser.open\n[1] Limits (file://kb/limits.md) ... (" in out
    assert out.rstrip().endswith("It is 42; the quota is enforced 【1†L6-L7】.")
    assert m.sequences_created == m.sequences_freed


def test_cli_browser_without_backend_is_a_clear_error(kb, tokenizer, monkeypatch, capsys):  # noqa: F811
    import gptoss.cli as cli

    for var in ("YDC_API_KEY", "EXA_API_KEY", "BROWSER_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli, "_load", lambda a: (model_for(tokenizer, {}), tokenizer))
    monkeypatch.setattr(sys, "stdin", _Stdin("hi\n"))
    rc = cli.main(["chat", "--model", str(kb), "-b"])
    _, err = capsys.readouterr()
    assert rc == 1 and "gptoss: error:" in err and "--browser-index" in err


def test_cli_python_without_sandbox_is_a_clear_error(kb, monkeypatch, capsys):
    import gptoss.cli as cli

    loaded = []
    monkeypatch.setattr(cli, "_load", lambda a: loaded.append(a))  # must not be reached
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "stdin", _Stdin("hi\n"))
    rc = cli.main(["chat", "--model", str(kb), "-p"])
    _, err = capsys.readouterr()
    assert rc == 1 and "gptoss: error:" in err and "bubblewrap" in err and not loaded
