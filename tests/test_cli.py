"""The `gptoss` command: in-process on the scripted fake model, and (when the compiled engine is
available) as a subprocess on a tiny synthetic checkpoint with piped input."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gptoss.cli as cli
from fake_model import FakeModel
from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: F401
from test_chat import CALL_REPLY, REPLY, VOCAB, harmony_script


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


class _TtyStdin(io.StringIO):
    """Stdin that says it is a terminal (input() then reads it with readline)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def run(monkeypatch, capsys, tokenizer, tmp_path):  # noqa: F811
    """Run `gptoss ARGS` in-process with `stdin`, a fake model and the real tokenizer."""
    holder = {}

    def go(args, stdin="", model=None, tty=False):
        m = model or FakeModel(VOCAB, max_context=4096, script=harmony_script(tokenizer, {
            "hi": REPLY, "again": REPLY, "weather in Paris?": CALL_REPLY}))
        holder["model"] = m
        monkeypatch.setattr(cli, "_load", lambda a: (m, tokenizer))
        monkeypatch.setattr(sys, "stdin", (_TtyStdin if tty else _Stdin)(stdin))
        if "--model" not in args and args and args[0] in ("chat", "generate"):
            args = [args[0], "--model", str(tmp_path)] + list(args[1:])
        rc = cli.main(args)
        out, err = capsys.readouterr()
        return rc, out, err

    go.holder = holder
    return go


# ---------------------------------------------------------------- chat
def test_piped_chat_labels_reasoning_and_keeps_history(run):
    rc, out, err = run(["chat", "--temperature", "0", "--stats"], "hi\n\nagain\n")
    assert rc == 0
    assert out.count("Reasoning:\nUser says hi. Respond.\nAssistant:\nHello there! ☃\n") == 2
    assert "\x1b[" not in out  # no colour on a pipe
    stats = [line for line in err.splitlines() if "prompt tokens" in line]
    assert len(stats) == 2
    assert "(0 cached)" in stats[0] and "(0 cached)" not in stats[1]  # KV reused on turn 2
    m = run.holder["model"]
    assert m.sequences_created == m.sequences_freed  # cleaned up at EOF


def test_hide_reasoning(run):
    rc, out, _ = run(["chat", "--hide-reasoning", "-t", "0"], "hi\n")
    assert rc == 0 and "Respond" not in out and "Hello there! ☃" in out


def test_raw_shows_harmony_tokens(run):
    rc, out, _ = run(["chat", "--raw", "-t", "0"], "hi\n")
    assert rc == 0
    assert "<|channel|>analysis<|message|>User says hi. Respond.<|end|><|start|>assistant" in out
    assert out.rstrip().endswith("<|return|>")


def test_color_marks_reasoning_dim(run):
    rc, out, _ = run(["chat", "--color", "always", "-t", "0"], "hi\n")
    assert rc == 0 and cli.DIM in out and "Reasoning:" in out and "Hello there! ☃" in out


def test_eof_at_once_and_exit_command(run):
    assert run(["chat"], "")[:2] == (0, "")
    rc, out, _ = run(["chat", "-t", "0"], "/exit\nhi\n")
    assert rc == 0 and "Hello" not in out


def test_reset_clears_history(run):
    rc, _, err = run(["chat", "-t", "0", "--stats"], "hi\n/reset\nhi\n")
    stats = [line.split(" prompt tokens")[0] for line in err.splitlines() if "prompt tokens" in line]
    assert rc == 0 and len(stats) == 2 and stats[0] == stats[1]  # the same prompt: no history
    assert "[conversation cleared]" in err


def test_interactive_banner_and_help(run, tmp_path):
    rc, out, err = run(["chat", "--model", str(tmp_path / "my-model"), "-r", "medium", "--color", "never",
                        "-t", "0"], "/help\nhi\n", tty=True)
    assert rc == 0
    banner = err.splitlines()[0]
    assert "my-model" in banner and "reasoning effort medium" in banner
    assert all(c in banner for c in ("/help", "/reset", "/exit"))
    assert "/reset" in err.split(banner, 1)[1] and "forget the conversation" in err  # /help's list
    assert "Assistant:\nHello there! ☃" in out
    # Piped input: no banner, the same labels.
    rc, out2, err2 = run(["chat", "-t", "0", "--color", "never"], "hi\n")
    assert rc == 0 and "reasoning effort" not in err2
    assert out2.strip() in out


def test_every_option_has_help_with_its_default():
    ap = cli.build_parser()
    subs = next(a for a in ap._actions if isinstance(a, cli.argparse._SubParsersAction))
    checked = 0
    for name in ("chat", "generate", "serve", "download"):
        for a in subs.choices[name]._actions:
            if not a.option_strings or a.dest == "help" or a.required:
                continue
            assert a.help and "default" in a.help, f"gptoss {name} {a.option_strings[0]}: {a.help!r}"
            checked += 1
    assert checked >= 35


def test_version_and_python_m():
    from gptoss import __version__

    for cmd in ([sys.executable, "-m", "gptoss", "--version"], [sys.executable, "-m", "gptoss.cli", "--version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == f"gptoss {__version__}", r
    r = subprocess.run([sys.executable, "-m", "gptoss", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ("chat", "generate", "download", "synthetic"))


def test_developer_message_and_effort_reach_the_prompt(run, tokenizer):  # noqa: F811
    seen = []
    m = FakeModel(VOCAB, script=harmony_script(tokenizer, {"hi": REPLY}))
    orig = m.step

    def spy(batch):  # the engine's first step feeds the whole prompt (nothing cached yet)
        batch = list(batch)
        seen.append(tokenizer.decode(batch[0][1]))
        return orig(batch)

    m.step = spy
    rc, _, _ = run(["chat", "-r", "high", "--developer-message", "Talk like a pirate.",
                    "-t", "0"], "hi\n", model=m)
    assert rc == 0
    assert "Reasoning: high" in seen[0] and "# Instructions\n\nTalk like a pirate." in seen[0]


def test_tool_call_is_printed(run):
    rc, out, _ = run(["chat", "-t", "0"], "weather in Paris?\n")
    assert rc == 0 and 'Tool call: functions.get_weather' not in out
    assert 'Tool call: get_weather({"city": "Paris"})' in out


def test_max_tokens_limits_reply(run, tokenizer):  # noqa: F811
    rc, _, err = run(["chat", "-t", "0", "--max-tokens", "3", "--stats"], "hi\n")
    assert rc == 0 and "3 generated, finish: length" in err


# ---------------------------------------------------------------- generate
def test_generate_streams_completion(run, tokenizer):  # noqa: F811
    m = FakeModel(VOCAB, script=lambda toks: [*tokenizer.encode(" world!"), 199999][
        len(toks) - 2] if len(toks) >= 2 and len(toks) - 2 < 4 else None)
    rc, out, err = run(["generate", "-t", "0", "--stats", "Hello there"], model=m)
    assert rc == 0 and out == " world!\n"
    assert "finish: stop" in err


def test_generate_stop_string_and_stdin_prompt(run, tokenizer):  # noqa: F811
    m = FakeModel(VOCAB, script=lambda toks: [*tokenizer.encode(" world! Bye"), 199999][
        len(toks) - 2] if 2 <= len(toks) < 8 else None)
    rc, out, _ = run(["generate", "-t", "0", "--stop", "!", "-"], stdin="Hello there", model=m)
    assert rc == 0 and out == " world\n"


# ---------------------------------------------------------------- errors
def _no_traceback(err: str) -> None:
    assert "Traceback" not in err


def test_missing_model_folder(capsys, tmp_path, monkeypatch):
    rc = cli.main(["chat", "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 1 and "gptoss: error: model folder not found" in err
    _no_traceback(err)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    rc = cli.main(["chat", "--model", "openai/gpt-oss-20b"])
    err = capsys.readouterr().err
    assert rc == 1 and 'hf download openai/gpt-oss-20b --exclude "original/*"' in err
    _no_traceback(err)


def test_invalid_sampling_value(capsys, tmp_path):
    rc = cli.main(["chat", "--model", str(tmp_path), "--temperature", "-1"])
    err = capsys.readouterr().err
    assert rc == 1 and "temperature" in err
    _no_traceback(err)


def test_usage_errors_exit_2(capsys, tmp_path):
    for args in (["chat", "--model", str(tmp_path), "-r", "max"],
                 ["chat"], ["chat", "--model", str(tmp_path), "--max-tokens", "0"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        assert e.value.code == 2
    assert cli.main([]) == 2
    capsys.readouterr()


def test_no_tokenizer_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("GPTOSS_TIKTOKEN_VOCAB", raising=False)
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    rc = cli.main(["generate", "--model", str(tmp_path), "hi"])
    err = capsys.readouterr().err
    assert rc == 1 and "no o200k_harmony vocabulary found" in err and "--vocab-file" in err
    _no_traceback(err)


def test_vocab_mismatch_is_a_clear_error(run):
    rc, _, err = run(["chat", "-t", "0"], "hi\n", model=FakeModel(1024))
    assert rc == 1 and "vocab" in err and "201088" in err
    _no_traceback(err)
    rc, _, err = run(["generate", "hello"], model=FakeModel(1024))
    assert rc == 1 and "vocab" in err


def test_context_overflow_is_a_clear_error(run, tokenizer):  # noqa: F811
    rc, _, err = run(["chat"], "hi\n", model=FakeModel(VOCAB, max_context=16))
    assert rc == 1 and "--context" in err
    from gptoss import harmony
    from gptoss.chat import build_messages

    full = build_messages([{"role": "user", "content": "hi"}])
    n_prompt = len(harmony.render(full, for_completion=True, tokenizer=tokenizer))
    n_system = len(harmony.render(full[:1], tokenizer=tokenizer))
    assert f"the prompt is {n_prompt} tokens but the context holds 16" in err
    assert f"the system and developer messages alone (reasoning effort, instructions, tools) are {n_system} tokens" in err
    _no_traceback(err)


def test_debug_env_shows_traceback(run, monkeypatch):
    monkeypatch.setenv("GPTOSS_DEBUG", "1")
    with pytest.raises(ValueError):
        run(["chat"], "hi\n", model=FakeModel(1024))


# ---------------------------------------------------------------- subprocess, real engine
HAVE_CORE = importlib.util.find_spec("gptoss._core") is not None
needs_core = pytest.mark.skipif(not HAVE_CORE, reason="compiled module gptoss._core not built")


def _env() -> dict:
    import gptoss

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(gptoss.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("GPTOSS_DEBUG", None)
    return env


def _gptoss(args, stdin="", timeout=300):
    return subprocess.run([sys.executable, "-m", "gptoss.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def tiny_full_vocab(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny201088")
    r = _gptoss(["synthetic", "--preset", "tiny", "--vocab", str(VOCAB), "--out", str(d),
                 "--quiet"])
    assert r.returncode == 0, r.stderr
    return d


def test_synthetic_forwarding_writes_a_checkpoint(tmp_path):
    assert cli.main(["synthetic", "--preset", "tiny", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "config.json").is_file()


@needs_core
@pytest.mark.slow
def test_cli_chat_on_tiny_checkpoint(tiny_full_vocab):
    # The synthetic checkpoint carries its tokenizer files, as a real one does: no --vocab-file.
    r = _gptoss(["chat", "--model", str(tiny_full_vocab),
                 "--max-tokens", "6", "--seed", "1", "--stats", "--context", "512"],
                stdin="Hello!\nSecond turn\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    stats = [line for line in r.stderr.splitlines() if "prompt tokens" in line]
    assert len(stats) == 2 and "6 generated" in stats[0]
    assert "(0 cached)" not in stats[1]  # the second turn reused the first turn's KV cache
    assert r.stdout.strip()  # a random model's reply is shown as raw text


@needs_core
@pytest.mark.slow
def test_cli_generate_on_tiny_checkpoint_is_deterministic(tiny_full_vocab):
    args = ["generate", "--model", str(tiny_full_vocab),
            "--max-tokens", "5", "--temperature", "0", "The sky is"]
    a, b = _gptoss(args), _gptoss(args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


@needs_core
def test_cli_small_vocab_checkpoint_explains_mismatch(tmp_path, o200k_vocab_file):  # noqa: F811
    r = _gptoss(["synthetic", "--preset", "tiny", "--out", str(tmp_path), "--quiet"])
    assert r.returncode == 0, r.stderr
    r = _gptoss(["chat", "--model", str(tmp_path), "--vocab-file", str(o200k_vocab_file)],
                stdin="hi\n")
    assert r.returncode == 1
    assert "--vocab 201088" in r.stderr and "Traceback" not in r.stderr


def test_cli_bad_checkpoint_subprocess(tmp_path, o200k_vocab_file):  # noqa: F811
    (tmp_path / "config.json").write_text("{not json")
    r = _gptoss(["chat", "--model", str(tmp_path), "--vocab-file", str(o200k_vocab_file)],
                stdin="hi\n")
    assert r.returncode == 1 and r.stderr.startswith("gptoss: error:")
    assert "Traceback" not in r.stderr


@needs_core
def test_cli_precision_option(tiny_full_vocab):
    """--precision reaches the model: bf16 where the CPU can (else a one-line error), a bad value
    is a usage error."""
    from gptoss import _core

    args = ["generate", "--model", str(tiny_full_vocab), "--max-tokens", "3", "--temperature", "0",
            "--precision", "bf16", "The sky is"]
    r = _gptoss(args)
    if _core.kernels.bf16_dot_available():
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
    else:
        assert r.returncode == 1 and "needs a CPU with AVX512_BF16" in r.stderr
    r = _gptoss(args[:-2] + ["fp16", "The sky is"])
    assert r.returncode == 2 and "invalid choice" in r.stderr
