"""The python tool: a stateful Jupyter kernel (ipykernel) in a sandbox (see `sandbox`).

    with PythonTool(timeout=120) as py:
        py.execute("x = 6 * 7")
        py.execute("x")            # -> "42"

`execute` returns what the model sees: the cell's stdout and stderr in the order they were
written, the last expression's value, and errors as tracebacks, truncated in the middle to
`max_output_chars`. A cell that runs past `timeout` seconds is interrupted (the state is kept);
one that does not stop within a few seconds more has its kernel restarted (the state is lost,
files in /mnt/data are kept); both are said in the output. The kernel talks to us over Unix
sockets in a folder bound into the sandbox, so the sandbox needs no network at all.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from .sandbox import Sandbox, SandboxError, SandboxLimits

__all__ = ["PythonTool", "ExecutionResult", "NO_OUTPUT"]

# What the reference tool answers for a cell that printed nothing (the model may know it).
NO_OUTPUT = ("[WARN] No output available. Use print() to output anything to stdout to receive "
             "the output")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONN_INSIDE = "/run/gptoss-kernel"
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_INTERRUPT_GRACE = 5.0  # seconds a timed-out cell gets to honour the interrupt


@dataclass
class ExecutionResult:
    """One cell's outcome. status: "ok", "error" (an exception), "timeout" (interrupted, state
    kept) or "restarted" (the kernel was restarted after a timeout or died: state lost)."""

    output: str
    status: str


class PythonTool:
    """A sandboxed, stateful Python (Jupyter) kernel; see the module docstring.

    timeout: wall-clock seconds per `execute`. limits: `SandboxLimits` (memory, CPU time,
    processes, file size, /tmp size). data_dir: host folder shown as /mnt/data (default: a new
    temporary folder, deleted by `close`; a given folder is kept, and as root it is handed to the
    sandbox's user id). python: the interpreter to run the kernel with (needs ipykernel).
    Raises `SandboxError` if the sandbox cannot be set up, and never runs code without it.
    """

    name = "python"

    def __init__(self, timeout: float = 120.0, *, limits: SandboxLimits = SandboxLimits(),
                 data_dir: Optional[str] = None, max_output_chars: int = 8192,
                 startup_timeout: float = 60.0, python: Optional[str] = None):
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(max_output_chars, int) and max_output_chars >= 100):
            raise ValueError(f"max_output_chars must be an integer >= 100, got {max_output_chars!r}")
        self.check_available()
        self.timeout = float(timeout)
        self.limits = limits
        self.max_output_chars = max_output_chars
        self.startup_timeout = startup_timeout
        self.python = python
        self._dir = tempfile.mkdtemp(prefix="gptoss-python-")
        self.data_dir = os.path.join(self._dir, "data") if data_dir is None \
            else os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._sandbox: Optional[Sandbox] = None
        self._client: Any = None
        self._uid: Optional[int] = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _cleanup, self._dir, [None])
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def check_available() -> None:
        """Raise `SandboxError` unless this machine can run the tool (packages, bubblewrap,
        namespaces): a clear error before anything starts."""
        import importlib.util

        if importlib.util.find_spec("jupyter_client") is None or \
                importlib.util.find_spec("ipykernel") is None:
            raise SandboxError("the python tool needs jupyter-client and ipykernel "
                               "(pip install 'gptoss[tools]')")
        Sandbox.mode()

    # ------------------------------------------------------------------ description
    @property
    def description(self) -> str:
        """The harmony tool description (identical to openai-harmony's for the default 120 s)."""
        from ..harmony import PYTHON

        d = PYTHON.description or ""
        return d if self.timeout == 120.0 else d.replace("120.0 seconds", f"{self.timeout} seconds")

    # ------------------------------------------------------------------ kernel lifecycle
    def _start(self) -> None:
        from jupyter_client.blocking import BlockingKernelClient

        self._check_open()  # (closed by another thread meanwhile: start nothing new)

        conn = os.path.join(self._dir, f"conn-{secrets.token_hex(4)}")
        os.makedirs(conn)
        key = secrets.token_hex(32)
        info = {name: i + 1 for i, name in enumerate(_PORTS)}
        info.update(transport="ipc", signature_scheme="hmac-sha256", key=key, kernel_name="")
        with open(os.path.join(conn, "kernel.json"), "w") as f:
            json.dump(dict(info, ip=f"{_CONN_INSIDE}/k"), f)
        os.chmod(os.path.join(conn, "kernel.json"), 0o644)
        env = {"MPLBACKEND": "Agg", "IPYTHONDIR": "/tmp/.ipython", "JUPYTER_PLATFORM_DIRS": "1",
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
        argv = ["-m", "ipykernel_launcher", "-f", f"{_CONN_INSIDE}/kernel.json",
                "--HistoryManager.enabled=False", "--InteractiveShell.colors=NoColor",
                "--IPKernelApp.log_level=ERROR"]
        sb = Sandbox.start(argv, data_dir=self.data_dir, state_dir=self._dir,
                           extra_rw=[(conn, _CONN_INSIDE)], limits=self.limits, env=env,
                           log=os.path.join(self._dir, "kernel.log"), python=self.python,
                           uid=self._uid)
        self._uid = sb.uid  # a restarted kernel keeps the owner of /mnt/data's files
        self._sandbox = sb
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self._dir, [sb])
        kc = BlockingKernelClient()
        kc.load_connection_info(dict(info, ip=f"{conn}/k"))
        self._client = kc
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the kernel answers kernel_info and its iopub stream reaches us (a request's
        status messages arrive), so no output of the first cell can be missed."""
        kc, sb = self._client, self._sandbox
        assert kc is not None and sb is not None
        deadline = time.monotonic() + self.startup_timeout
        started = False
        while time.monotonic() < deadline:
            if not sb.alive:
                raise SandboxError(f"the python sandbox failed to start (exit status "
                                   f"{sb.returncode}): {self._log_tail()}")
            if not started:
                if not self._sockets_ready():
                    time.sleep(0.05)
                    continue
                kc.start_channels(stdin=False, hb=False)
                started = True
            msg_id = kc.kernel_info()
            got_reply = got_status = False
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end and not (got_reply and got_status):
                try:
                    m = kc.get_shell_msg(timeout=0.05)
                    got_reply |= m.get("parent_header", {}).get("msg_id") == msg_id
                except queue.Empty:
                    pass
                try:
                    m = kc.get_iopub_msg(timeout=0.05)
                    got_status |= (m.get("parent_header", {}).get("msg_id") == msg_id
                                   and m.get("msg_type") == "status")
                except queue.Empty:
                    pass
            if got_reply and got_status:
                self._drain_iopub()
                return
        raise SandboxError(f"the python kernel did not start within {self.startup_timeout:g} s: "
                           f"{self._log_tail()}")

    def _sockets_ready(self) -> bool:
        ip = self._client.ip
        return all(os.path.exists(f"{ip}-{getattr(self._client, p)}") for p in _PORTS)

    def _drain_iopub(self) -> None:
        while True:
            try:
                self._client.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                return

    def _log_tail(self, n: int = 2000) -> str:
        try:
            with open(os.path.join(self._dir, "kernel.log"), "rb") as f:
                text = f.read().decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        return text[-n:] or "(no output)"

    def _stop_kernel(self) -> None:
        if self._client is not None:
            try:
                self._client.stop_channels()
            except Exception:  # noqa: BLE001 - best effort on a dead kernel
                pass
            self._client = None
        if self._sandbox is not None:
            self._sandbox.kill()
            self._sandbox = None

    def restart(self) -> None:
        """A fresh kernel (all state lost; /mnt/data kept)."""
        with self._lock:
            self._check_open()
            self._stop_kernel()
            self._start()

    # ------------------------------------------------------------------ execution
    def execute(self, code: str) -> str:
        """Run `code` as one notebook cell; the text the model sees."""
        return self.run(code).output

    def run(self, code: str) -> ExecutionResult:
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        with self._lock:
            self._check_open()
            lost = ""
            if self._sandbox is None or not self._sandbox.alive:  # died since the last call
                self._stop_kernel()
                self._start()
                lost = ("[WARN] The Python kernel had stopped and was restarted: all variables "
                        "and imports are lost (files in /mnt/data are kept).\n")
            kc = self._client
            msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
            parts: list[str] = []
            deadline = time.monotonic() + self.timeout
            try:
                state = self._collect(msg_id, parts, deadline)
            except BaseException:  # e.g. Ctrl-C in the caller: do not leave the cell running
                self._interrupt()
                raise
            status = state
            note = ""
            if state == "timeout":
                self._interrupt()
                state = self._collect(msg_id, parts, time.monotonic() + _INTERRUPT_GRACE)
                if state in ("ok", "error"):
                    status = "timeout"
                    note = (f"[ERROR] Execution timed out after {self.timeout:g} seconds and was "
                            "interrupted; variables and imports are kept.")
                else:
                    status = "restarted"
                    note = (f"[ERROR] Execution timed out after {self.timeout:g} seconds and did "
                            "not stop when interrupted, so the Python kernel was restarted: all "
                            "variables and imports are lost (files in /mnt/data are kept).")
            elif state == "died":
                if self._closed:
                    raise RuntimeError("this PythonTool was closed while the cell ran")
                status = "restarted"
                code_ = self._sandbox.returncode if self._sandbox else None
                note = (f"[ERROR] The Python kernel died (exit status {code_}) and was restarted:"
                        " all variables and imports are lost (files in /mnt/data are kept).")
            if status == "restarted":
                self._stop_kernel()
                self._start()
            else:
                self._drain_reply(msg_id)
            if lost:
                parts.insert(0, lost)
                status = "restarted"
            return ExecutionResult(self._format(parts, note), status)

    def _collect(self, msg_id: str, parts: list[str], deadline: float) -> str:
        """Gather the cell's outputs until the kernel is idle: "ok", "error", "timeout", "died"."""
        kc, sb = self._client, self._sandbox
        errored = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            try:
                msg = kc.get_iopub_msg(timeout=min(left, 0.25))
            except queue.Empty:
                if sb is None or not sb.alive:
                    return "died"
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg.get("msg_type"), msg.get("content", {})
            if kind == "stream":
                parts.append(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                text = content.get("data", {}).get("text/plain")
                if text:
                    parts.append(text if text.endswith("\n") else text + "\n")
            elif kind == "error":
                errored = True
                tb = content.get("traceback") or [f"{content.get('ename', '')}: "
                                                  f"{content.get('evalue', '')}"]
                text = "\n".join(tb)
                parts.append(text if text.endswith("\n") else text + "\n")
            elif kind == "clear_output":
                parts.clear()
            elif kind == "status" and content.get("execution_state") == "idle":
                return "error" if errored else "ok"

    def _interrupt(self) -> None:
        kc = self._client
        msg = kc.session.msg("interrupt_request", content={})
        try:
            kc.control_channel.send(msg)
        except Exception:  # noqa: BLE001 - a dead kernel is handled by the caller
            pass

    def _drain_reply(self, msg_id: str) -> None:
        kc = self._client
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            try:
                m = kc.get_shell_msg(timeout=0.05)
            except queue.Empty:
                return
            if m.get("parent_header", {}).get("msg_id") == msg_id:
                return

    def _format(self, parts: list[str], note: str) -> str:
        text = _ANSI.sub("", "".join(parts))
        if note:
            text = (text.rstrip("\n") + "\n" + note) if text.strip() else note
        elif not text.strip():
            return NO_OUTPUT
        return truncate_middle(text, self.max_output_chars)

    # ------------------------------------------------------------------ cleanup
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this PythonTool is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    def pid_namespace(self) -> Optional[str]:
        """The kernel sandbox's PID namespace id (tests use it to check nothing survives)."""
        return self._sandbox.pid_namespace() if self._sandbox else None

    def close(self) -> None:
        """Kill the kernel and every process it started; delete the temporary files (and the
        data folder unless it was given)."""
        if self._closed:
            return
        self._closed = True
        sb = self._sandbox
        if sb is not None:
            sb.kill()  # first, without the lock: this also ends a cell running in another thread
        with self._lock:
            self._stop_kernel()
            self._finalizer()

    def __enter__(self) -> "PythonTool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _cleanup(path: str, sandboxes: list) -> None:
    """Kill what may still run and delete the instance folder (which holds /mnt/data unless a
    folder was given)."""
    for sb in sandboxes:
        if sb is not None:
            sb.kill()
    shutil.rmtree(path, ignore_errors=True)


def truncate_middle(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a marker."""
    if len(text) <= limit:
        return text
    marker = "\n[... {} characters truncated ...]\n"
    keep = limit - len(marker.format(len(text)))
    head, tail = keep * 2 // 3, keep - keep * 2 // 3
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail:]
