"""The ``gptoss`` command (also ``python -m gptoss``).

    gptoss chat --model PATH|REPO_ID [-r low|medium|high] [--developer-message TEXT] [--raw]
                [--hide-reasoning] [--vocab-file F] [--max-tokens N] [--temperature T] [--seed S]
                [-p] [-b] [--browser-index FOLDER]
    gptoss generate --model PATH|REPO_ID [--max-tokens N] ... PROMPT
    gptoss serve --model PATH|REPO_ID [--host H] [--port P] [--api-key KEY] ...
    gptoss download REPO_ID [--revision REV] [--local-dir DIR]
    gptoss synthetic --preset tiny --out DIR [...]      (same as python -m gptoss.synthetic)
    gptoss --version

``chat`` is an interactive conversation: one user message per line, streamed replies, the
history kept (and its KV cache reused) across turns. Replies are labelled ``Reasoning:`` and
``Assistant:`` (on a terminal the reasoning is also dimmed); ``--hide-reasoning`` drops the
reasoning; ``--raw`` prints the raw harmony tokens instead. Input may be piped: every line is
one message and the program exits 0 at end of input. ``/help`` lists the commands, ``/reset``
clears the history, ``/exit`` quits. ``-p`` gives the model its python tool (a sandboxed
Jupyter kernel, kept for the conversation), ``-b`` its browser (over the web search API whose
key is in YDC_API_KEY or EXA_API_KEY, or over a local folder with ``--browser-index``); their
calls and outputs are shown as they happen.

Errors (bad arguments, missing or malformed checkpoint, no tokenizer, vocabulary mismatch,
context overflow) print ``gptoss: error: ...`` and exit with status 1 (2 for usage errors);
``GPTOSS_DEBUG=1`` shows the traceback. Ctrl-C during a reply stops the reply; at the prompt it
exits with status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence, TextIO

__all__ = ["main"]

DIM, BOLD, RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"
# Raw completion stops on <|endoftext|> as well as the harmony end-of-turn tokens.
CHAT_COMMANDS = (("/help", "this list"), ("/reset", "forget the conversation"), ("/exit", "quit"))
# One set of labels, on a terminal or not; colour only adds emphasis.
LABELS = {"reasoning": "Reasoning:", "assistant": "Assistant:", "commentary": "Assistant (commentary):"}


class CLIError(Exception):
    """A user-facing error: printed without a traceback."""


# ---------------------------------------------------------------------------- arguments
def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, metavar="PATH",
                   help="checkpoint folder (HF layout or its original/ folder), or a Hugging Face "
                        "repo id such as openai/gpt-oss-20b, looked up in the local Hugging Face "
                        "cache (see `gptoss download`)")
    p.add_argument("--vocab-file", metavar="F", default=None,
                   help="o200k_base.tiktoken (or tokenizer.json) to use when the checkpoint folder "
                        "has no tokenizer files (default: the checkpoint's own, else "
                        "$GPTOSS_TIKTOKEN_VOCAB or $TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda[:N], or cuda-emu (the CUDA code on a CPU emulator, for testing; "
                        "default: cpu)")
    p.add_argument("--context", "-c", type=_positive_int, default=None, metavar="N",
                   help="maximum context length in tokens (default: the model's, 131072 for gpt-oss)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads (default: all cores)")
    p.add_argument("--int8-decode", action="store_true",
                   help="faster CPU decode with int8 copies of the dense matrices (approximate; "
                        "prefill stays exact; default: off)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="arithmetic of the matrix products: fp32 (exact, the default) or bf16 (bf16 "
                        "dot products on CPUs with AVX512_BF16: prefill 1.7-1.8x as fast, ~1e-2 relative "
                        "error, less than the model run in bf16)")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: Optional[int]) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", "-l", type=_positive_int, default=max_tokens, metavar="N",
                   help=f"maximum tokens per reply (default: {max_tokens or 'until done'})")
    g.add_argument("--temperature", "-t", type=float, default=1.0, metavar="T",
                   help="0 = greedy (default: 1.0, the model's recommendation)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: keep the most likely tokens up to this probability "
                        "mass (default: 1.0 = off)")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="keep only the K most likely tokens (default: off)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="drop tokens less likely than P times the most likely one (default: 0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="> 1 discourages repeating tokens of the prompt and reply (default: 1.0 = off)")
    g.add_argument("--seed", type=int, default=None, metavar="S",
                   help="random seed: the same seed gives the same reply (default: random)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="gptoss", description="Run gpt-oss models.")
    ap.add_argument("--version", action="version", version=f"gptoss {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("chat", help="interactive chat (harmony format)",
                       description="Interactive chat. One message per input line; EOF ends. "
                                   "Commands: " + ", ".join(f"{k} ({v})" for k, v in CHAT_COMMANDS))
    _add_model_args(c)
    c.add_argument("-r", "--reasoning-effort", choices=["low", "medium", "high"], default="low",
                   help="how much the model reasons before answering (default: low)")
    c.add_argument("--developer-message", default=None, metavar="TEXT",
                   help="developer instructions (the system prompt; default: none)")
    c.add_argument("--raw", action="store_true",
                   help="print the raw harmony tokens instead of the parsed reply (default: off)")
    c.add_argument("--hide-reasoning", action="store_true",
                   help="do not print the reasoning (default: shown)")
    c.add_argument("--stats", action="store_true",
                   help="print token counts after each reply, on stderr (default: off)")
    c.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="dim the reasoning and bold the labels (default: auto, on a terminal "
                        "unless NO_COLOR is set)")
    c.add_argument("-p", "--python", action="store_true",
                   help="let the model run Python in a sandboxed, stateful Jupyter kernel "
                        "(default: off)")
    c.add_argument("-b", "--browser", action="store_true",
                   help="let the model search and browse: the web (API key in YDC_API_KEY or "
                        "EXA_API_KEY) or --browser-index (default: off)")
    c.add_argument("--browser-index", metavar="FOLDER", default=None,
                   help="browse a local folder of markdown, text and HTML files (implies -b; "
                        "default: none)")
    _add_sampling_args(c, None)

    g = sub.add_parser("generate", help="raw text completion",
                       description="Complete PROMPT as plain text (no chat format).")
    _add_model_args(g)
    g.add_argument("prompt", metavar="PROMPT", help="the text to continue ('-' reads stdin)")
    g.add_argument("--stop", action="append", default=None, metavar="STR",
                   help="stop string (repeatable; default: none)")
    g.add_argument("--allow-special", action="store_true",
                   help="encode special-token text like <|start|> as the special ids "
                        "(default: plain text)")
    g.add_argument("--stats", action="store_true", help="print token counts on stderr (default: off)")
    _add_sampling_args(g, 100)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server",
                        description="Serve the model over HTTP with the OpenAI API: /v1/chat/completions, "
                                    "/v1/responses, /v1/completions, /v1/models; /health, /metrics, /version.")
    _add_model_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=_positive_int, default=8000, help="port (default: 8000)")
    sv.add_argument("--served-model-name", default=None, metavar="NAME",
                    help="the model name clients use (default: the checkpoint folder's name)")
    sv.add_argument("--api-key", default=None, metavar="KEY",
                    help="require 'Authorization: Bearer KEY' on /v1 (default: $GPTOSS_API_KEY, else none)")
    sv.add_argument("--kv-cache-bytes", type=_positive_int, default=None, metavar="N",
                    help="cap on the KV cache in bytes (default: a quarter of the RAM; CUDA: most of the free "
                         "device memory)")
    sv.add_argument("--max-num-seqs", type=_positive_int, default=256, metavar="N",
                    help="requests running at once; more wait in the queue (default: 256)")
    sv.add_argument("--reasoning-effort", choices=["low", "medium", "high"], default="medium",
                    help="when a request does not say (default: medium)")
    sv.add_argument("--builtin-tools", default="", metavar="LIST",
                    help="built-in tools the server runs for Responses API requests that ask for them: "
                         "'python' (code_interpreter, in the sandbox), 'browser' (web_search), or "
                         "'python,browser' (default: none)")
    sv.add_argument("--browser-index", default=None, metavar="FOLDER",
                    help="the browser searches this folder's documents (default: the web backend of "
                         "YDC_API_KEY / EXA_API_KEY)")
    sv.add_argument("--tool-server", default=None, metavar="URL",
                    help="an MCP server (streamable HTTP, e.g. http://127.0.0.1:8001/mcp) whose tools the model "
                         "may call in Responses API requests, run by this server (default: none)")
    sv.add_argument("--harmony-constraint", choices=["auto", "on", "off"], default="auto",
                    help="constrain the harmony headers the model writes (valid channels and recipients; "
                         "contents stay free), so that malformed headers cannot happen (default: auto, on "
                         "where tokens are sampled on the host, i.e. not with CUDA device sampling)")

    d = sub.add_parser("download", help="download a checkpoint from the Hugging Face hub",
                       description="Download what gptoss needs of a Hugging Face repo (all but its "
                                   "original/ and metal/ folders) into the Hugging Face cache, "
                                   "through huggingface_hub. Then pass the repo id as --model.")
    d.add_argument("repo_id", metavar="REPO_ID", help="e.g. openai/gpt-oss-20b")
    d.add_argument("--revision", default=None, metavar="REV",
                   help="branch, tag or commit (default: main)")
    d.add_argument("--local-dir", default=None, metavar="DIR",
                   help="put the files in DIR instead of the cache (default: the cache)")

    sub.add_parser("synthetic", help="write a random checkpoint (see gptoss synthetic -h)",
                   add_help=False)
    return ap


def _sampling(args: argparse.Namespace, stop_token_ids: Optional[Sequence[int]] = None,
              stop: Optional[Sequence[str]] = None) -> Any:
    from .sampling import SamplingParams

    kw: dict[str, Any] = dict(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, max_tokens=args.max_tokens,
        stop=stop)
    if stop_token_ids is not None:
        kw["stop_token_ids"] = stop_token_ids
    return SamplingParams(**kw)


# ---------------------------------------------------------------------------- loading
def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .errors import CheckpointError
    from .hub import resolve_checkpoint
    from .tokenizer import load_tokenizer

    try:
        args.model = resolve_checkpoint(args.model)
    except CheckpointError as e:
        raise CLIError(f"model folder not found: {e}") from None
    try:
        tokenizer = load_tokenizer(checkpoint_dir=args.model, vocab_file=args.vocab_file)
    except FileNotFoundError as e:
        hint = "" if args.vocab_file else \
            " (for a checkpoint without tokenizer files pass --vocab-file o200k_base.tiktoken)"
        raise CLIError(f"{e}{hint}") from e
    try:
        from . import Model  # type: ignore[attr-defined]
    except ImportError as e:
        raise CLIError(f"the gptoss engine is not available ({e}); build and install the "
                       "package (pip install .)") from e
    kw: dict[str, Any] = {"device": args.device}
    if args.context is not None:
        kw["max_context"] = args.context
    if args.threads is not None:
        kw["threads"] = args.threads
    if args.int8_decode:
        kw["int8_decode"] = True
    if getattr(args, "precision", None):
        kw["precision"] = args.precision
    model = Model(args.model, **kw)
    return model, tokenizer


# ---------------------------------------------------------------------------- chat
class _Printer:
    """Writes streamed events, labelling channel changes."""

    def __init__(self, out: TextIO, color: bool, hide_reasoning: bool):
        self.out = out
        self.color = color
        self.hide_reasoning = hide_reasoning
        self.section: Optional[str] = None
        self.at_line_start = True

    def _write(self, s: str) -> None:
        if s:
            self.out.write(s)
            self.at_line_start = s.endswith("\n")
            self.out.flush()

    def _enter(self, section: str) -> None:
        if section == self.section:
            return
        if not self.at_line_start:
            self._write("\n")
        label = LABELS[section]
        if self.color:
            self._write(RESET)
            label = f"{DIM}{label}{RESET}{DIM}" if section == "reasoning" else f"{BOLD}{label}{RESET}"
        self._write(label + "\n")
        self.section = section

    def reasoning(self, text: str) -> None:
        if not self.hide_reasoning:
            self._enter("reasoning")
            self._write(text)

    def content(self, text: str, channel: Optional[str]) -> None:
        self._enter("commentary" if channel == "commentary" else "assistant")
        self._write(text)

    def tool_call(self, name: str, arguments: str, executed: bool = False) -> None:
        self._enter("assistant")
        label = f"{BOLD}Tool call:{RESET}" if self.color else "Tool call:"
        if executed:  # a built-in tool: its code / JSON arguments as the model wrote them
            self._write(f"{label} {name}\n{arguments.rstrip()}\n")
            return
        self._write(f"{label} {name}({arguments}) (no tools are available in this chat)\n")

    def tool_output(self, name: str, output: str) -> None:
        self._enter("assistant")
        if name.startswith("browser."):  # a page view: its first line, not the whole page
            n = output.count("\n") + 1
            output = output.split("\n", 1)[0] + (f" ... ({n} lines to the model)" if n > 1 else "")
        label = f"{BOLD}Tool output:{RESET}" if self.color else "Tool output:"
        self._write(f"{label} {name}\n{output.rstrip()}\n")

    def end(self) -> None:
        if self.color:
            self._write(RESET)
        if not self.at_line_start:
            self._write("\n")
        self.section = None


def _read_line(interactive: bool) -> Optional[str]:
    """One user message; None at end of input."""
    if interactive:
        try:
            return input("> ")  # no ANSI codes: they confuse readline's line width
        except EOFError:
            return None
    line = sys.stdin.readline()
    if not line:
        return None
    return line.rstrip("\r\n")


def _builtin_tools(args: argparse.Namespace) -> Any:
    """A function making the built-in tools of one conversation (-p, -b), or None."""
    if not (args.python or args.browser or args.browser_index):
        return None
    from .tools import BrowserTool, LocalSearchBackend, SandboxError, web_backend_from_env

    try:
        if args.python:
            from .tools import PythonTool

            PythonTool.check_available()
        backend = None
        if args.browser_index:
            backend = LocalSearchBackend(args.browser_index)
        elif args.browser:
            backend = web_backend_from_env()
    except SandboxError as e:
        raise CLIError(str(e)) from e

    def make(tokenizer: Any) -> list:
        tools: list = ["python"] if args.python else []
        if backend is not None:
            tools.append(BrowserTool(backend, tokenizer=tokenizer))
        return tools

    return make


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import Conversation, ContentDelta, Done, ReasoningDelta, ToolCall
    from .tools.runner import ToolOutput

    params = _sampling(args)
    builtin = _builtin_tools(args)  # before loading: a machine that cannot run them says so
    model, tokenizer = _load(args)
    interactive = sys.stdin.isatty()
    out = sys.stdout
    color = args.color == "always" or (args.color == "auto" and out.isatty()
                                       and not os.environ.get("NO_COLOR"))
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def new_conversation() -> Any:
        return Conversation(model, tokenizer=tokenizer, reasoning_effort=args.reasoning_effort,
                            instructions=args.developer_message, sampling=params,
                            builtin_tools=builtin(tokenizer) if builtin else ())

    conv = new_conversation()
    if interactive:
        name = os.path.basename(os.path.normpath(args.model))
        print(f"gptoss chat: {name} ({args.device}), reasoning effort {args.reasoning_effort}; "
              + ", ".join(k for k, _ in CHAT_COMMANDS) + " (/help)", file=sys.stderr)
    try:
        while True:
            try:
                line = _read_line(interactive)
            except KeyboardInterrupt:
                out.write("\n")
                return 130
            if line is None:
                if interactive:
                    out.write("\n")
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/reset":
                conv.close()
                conv = new_conversation()
                print("[conversation cleared]", file=sys.stderr)
                continue
            if text in ("/help", "/?"):
                for k, v in CHAT_COMMANDS:
                    print(f"  {k:8s} {v}", file=sys.stderr)
                print("  Anything else is sent as a message. Ctrl-C stops a reply; Ctrl-D quits.",
                      file=sys.stderr)
                continue
            printer = _Printer(out, color, args.hide_reasoning)
            on_token = None
            if args.raw:
                def on_token(t: int) -> None:
                    out.write(tokenizer.decode([t]))
                    out.flush()
            n_before = len(conv.messages)
            events = conv.send(line, stream=True, on_token=on_token)
            try:
                for ev in events:
                    if args.raw:
                        if isinstance(ev, Done):
                            _stats(args, ev)
                        elif isinstance(ev, ToolOutput):  # fed to the model, not generated
                            from .harmony import render_message

                            out.write(tokenizer.decode(render_message(ev.message, tokenizer))
                                      + "<|start|>assistant")
                        continue
                    if isinstance(ev, ReasoningDelta):
                        printer.reasoning(ev.text)
                    elif isinstance(ev, ContentDelta):
                        printer.content(ev.text, ev.channel)
                    elif isinstance(ev, ToolCall):
                        printer.tool_call(ev.name, ev.arguments, executed=bool(
                            conv.builtin_tools and conv.builtin_tools.handles(ev)))
                    elif isinstance(ev, ToolOutput):
                        printer.tool_output(ev.name, ev.output)
                    elif isinstance(ev, Done):
                        printer.end()
                        _stats(args, ev)
                        if ev.finish_reason == "context_length":
                            print("gptoss: the context is full; use /reset to start over",
                                  file=sys.stderr)
            except KeyboardInterrupt:
                events.close()
                printer.end()
                del conv.messages[n_before:]  # drop the interrupted turn
                print("[interrupted]", file=sys.stderr)
                if not interactive:
                    return 130
            finally:
                if args.raw:
                    out.write("\n")
                    out.flush()
    finally:
        conv.close()


def _stats(args: argparse.Namespace, done: Any) -> None:
    if args.stats:
        u = done.usage
        print(f"[{u.prompt_tokens} prompt tokens ({u.cached_tokens} cached), "
              f"{u.completion_tokens} generated, finish: {done.finish_reason}]", file=sys.stderr)


# ---------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import check_vocab, generate

    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt_text:
        raise CLIError("the prompt is empty")
    from .sampling import COMPLETION_STOP_TOKEN_IDS

    params = _sampling(args, stop_token_ids=COMPLETION_STOP_TOKEN_IDS, stop=args.stop)
    model, tokenizer = _load(args)
    tokens = tokenizer.encode(prompt_text, allowed_special="all" if args.allow_special else ())
    check_vocab(model, tokens, tokenizer)
    gen = generate(model, tokens, params, stream=True, tokenizer=tokenizer,
                   vocab_limit=getattr(tokenizer, "n_vocab", None))
    out = sys.stdout
    try:
        for chunk in gen:
            if chunk.text:
                out.write(chunk.text)
                out.flush()
    except KeyboardInterrupt:
        gen.close()
        out.write("\n")
        return 130
    out.write("\n")
    out.flush()
    res = gen.result
    if args.stats and res is not None:
        u = res.usage
        print(f"[{u.prompt_tokens} prompt tokens, {u.completion_tokens} generated, "
              f"finish: {res.finish_reason}]", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- download
def cmd_download(args: argparse.Namespace) -> int:
    from .hub import download

    path = download(args.repo_id, revision=args.revision, local_dir=args.local_dir)
    print(path)
    return 0


def cmd_synthetic(argv: list[str]) -> int:
    from .synthetic import main as synthetic_main

    return int(synthetic_main(argv) or 0)


# ---------------------------------------------------------------------------- main
def cmd_serve(args: argparse.Namespace) -> int:
    from .errors import CheckpointError
    from .hub import resolve_checkpoint
    from .server.serve import serve

    given = args.model
    try:
        args.model = resolve_checkpoint(given)
    except CheckpointError as e:
        raise CLIError(f"model folder not found: {e}") from None
    if args.served_model_name is None and not os.path.exists(given):
        args.served_model_name = given.partition("@")[0]  # a repo id names the model, not its cache folder
    return serve(args)


COMMANDS = {"chat": cmd_chat, "generate": cmd_generate, "serve": cmd_serve, "download": cmd_download}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: Any
    if argv and argv[0] == "synthetic":  # its own argument parser
        command, args = cmd_synthetic, argv[1:]
    else:
        ap = build_parser()
        args = ap.parse_args(argv)
        if args.command is None:
            ap.print_help(sys.stderr)
            return 2
        command = COMMANDS[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error; silence the flush at exit.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except Exception as e:  # every failure becomes one line unless debugging
        if os.environ.get("GPTOSS_DEBUG"):
            raise
        msg = str(e) or type(e).__name__
        if isinstance(e, (CLIError, ValueError, OSError, KeyError, ImportError)):
            print(f"gptoss: error: {msg}", file=sys.stderr)
        else:
            print(f"gptoss: error: {type(e).__name__}: {msg} (GPTOSS_DEBUG=1 shows the "
                  "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
