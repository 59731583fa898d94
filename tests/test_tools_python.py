"""The python tool: a real Jupyter kernel in a real bubblewrap sandbox.

Each check is about what the sandbox must guarantee (state, output, timeouts, memory, network,
files, processes, parallel instances), with the kernel started for real. Needs bubblewrap
(`.ci/run` installs it), ipykernel and jupyter-client.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import sys
import threading
import uuid

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")
if shutil.which("bwrap") is None:  # pragma: no cover - CI installs it
    pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)", allow_module_level=True)

from gptoss.tools import PythonTool, SandboxError, SandboxLimits  # noqa: E402
from gptoss.tools import python_tool  # noqa: E402

MIB = 1 << 20
LIMITS = SandboxLimits(memory_bytes=1024 * MIB, processes=64, file_size_bytes=16 * MIB,
                       cpu_seconds=600)


@pytest.fixture(scope="module")
def py():
    with PythonTool(limits=LIMITS) as tool:
        yield tool


def procs_in_namespace(ns: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == ns:
                    out.append(int(p))
            except OSError:
                pass
    return out


# ---------------------------------------------------------------- notebook behaviour
def test_state_persists_between_calls(py):
    py.execute("import math\nvalues = [3, 4]\ndef hyp(a, b):\n    return math.hypot(a, b)")
    assert py.execute("hyp(*values)") == "5.0\n"
    py.execute("values.append(12)")
    assert py.execute("print(len(values), sum(values))") == "3 19\n"


def test_output_capture(py):
    out = py.execute("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\n"
                     "{'answer': 6 * 7}")
    assert out == "to stdout\nto stderr\n{'answer': 42}\n"
    # Output of child processes (file descriptor level) is captured too.
    assert "from a child" in py.execute("import subprocess\n"
                                       "_ = subprocess.run(['echo', 'from a child'])")
    err = py.execute("def f():\n    return 1 / 0\nf()")
    assert "ZeroDivisionError" in err and "division by zero" in err and "return 1 / 0" in err
    assert "\x1b[" not in err  # no terminal colour codes for the model
    assert py.execute("y = 1") == python_tool.NO_OUTPUT
    assert py.execute("y") == "1\n"  # the failed cell did not lose the state


def test_long_output_is_truncated_in_the_middle(py):
    out = py.execute("print('HEAD' + 'x' * 100_000 + 'TAIL')")
    assert len(out) <= py.max_output_chars
    assert out.startswith("HEAD") and out.rstrip().endswith("TAIL")
    assert "characters truncated" in out


def test_tool_description_is_harmonys(py):
    oh = pytest.importorskip("openai_harmony")
    assert py.description == oh.ToolNamespaceConfig.python().description


# ---------------------------------------------------------------- limits
def test_timeout_interrupts_then_restarts(monkeypatch):
    monkeypatch.setattr(python_tool, "_INTERRUPT_GRACE", 2.0)
    with PythonTool(timeout=2, limits=LIMITS) as tool:
        assert "time out after 2.0 seconds" in tool.description  # told its real timeout
        tool.execute("kept = 'still here'")
        res = tool.run("while True:\n    pass")
        assert res.status == "timeout"
        assert "KeyboardInterrupt" in res.output and "timed out after 2 seconds" in res.output
        assert tool.execute("kept") == "'still here'\n"  # interrupted: state kept
        # A loop inside one C call holds the interpreter and ignores the interrupt: restart.
        res = tool.run("sum(range(10 ** 13))")
        assert res.status == "restarted" and "restarted" in res.output
        assert "NameError" in tool.execute("kept")  # a fresh kernel
        assert tool.execute("print(2 + 2)") == "4\n"  # and it works


def test_out_of_memory_fails_inside_only(py):
    host_limit = resource.getrlimit(resource.RLIMIT_AS)
    py.execute("marker = 'survived'")
    out = py.execute("big = bytearray(3 * 1024 ** 3)")  # 3 GiB: fine for the host, not here
    assert "MemoryError" in out
    out = py.execute("import numpy as np\na = np.ones(400_000_000)")
    assert "MemoryError" in out
    assert py.execute("marker") == "'survived'\n"  # same kernel, state intact
    assert py.execute("len(bytearray(64 * 1024 ** 2))") == "67108864\n"
    assert resource.getrlimit(resource.RLIMIT_AS) == host_limit


def test_limits_hold_inside_and_cannot_be_raised(py):
    out = py.execute(
        "import resource\n"
        "names = ['RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_CPU']\n"
        "print([resource.getrlimit(getattr(resource, n)) for n in names])\n"
        "for n in names:\n"
        "    soft, hard = resource.getrlimit(getattr(resource, n))\n"
        "    try:\n"
        "        resource.setrlimit(getattr(resource, n), (hard + 1, hard + 1))\n"
        "        print('raised', n)\n"
        "    except (ValueError, OSError):\n"
        "        pass")
    assert out == (f"[({LIMITS.memory_bytes}, {LIMITS.memory_bytes}), (64, 64), "
                   f"({16 * MIB}, {16 * MIB}), (600, 600)]\n")


def test_process_and_file_size_limits(py):
    out = py.execute(
        "import subprocess\nkids = []\n"
        "try:\n"
        "    for _ in range(200):\n"
        "        kids.append(subprocess.Popen(['sleep', '60']))\n"
        "except OSError as e:\n"
        "    print('stopped at', len(kids), type(e).__name__)\n"
        "for k in kids:\n"
        "    k.kill(); k.wait()")
    assert out.startswith("stopped at") and "BlockingIOError" in out
    assert int(out.split()[2]) < 64
    out = py.execute("with open('/mnt/data/big.bin', 'wb') as f:\n"
                     "    f.write(b'x' * (32 * 1024 ** 2))")
    assert "File too large" in out
    assert py.execute("print(1)") == "1\n"


def test_cpu_time_limit_kills_a_spinning_child():
    limits = SandboxLimits(memory_bytes=1024 * MIB, cpu_seconds=3)
    with PythonTool(timeout=60, limits=limits) as tool:
        out = tool.execute("import subprocess, sys\n"
                           "r = subprocess.run([sys.executable, '-c', 'while True: pass'])\n"
                           "print(r.returncode)")
        assert out in ("-9\n", "-24\n")  # killed at the limit (SIGKILL or SIGXCPU)


# ---------------------------------------------------------------- isolation
def test_no_network(py):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        out = py.execute("import socket\ns = socket.socket()\ns.settimeout(3)\n"
                         f"try:\n    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n"
                         "except OSError as e:\n    print(type(e).__name__)\n"
                         "print(sorted(n for _, n in socket.if_nameindex()))")
        assert "CONNECTED" not in out and "ConnectionRefusedError" in out
        assert out.endswith("['lo']\n")  # nothing but its own loopback
        with pytest.raises(BlockingIOError):
            srv.accept()  # nothing reached the host's listener
    finally:
        srv.close()


def test_host_files_are_invisible(py, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    here = os.path.dirname(os.path.abspath(__file__))
    out = py.execute(
        "import os\n"
        f"for p in [{str(secret)!r}, {here!r}, '/etc/shadow', '/root/.bash_history',"
        " '/home']:\n"
        "    print(p, os.path.exists(p))\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 20)")
    assert out.count(" False\n") == 5 and out.endswith("True\n"), out
    assert "sandbox:x:" in py.execute("print(open('/etc/passwd').read())")  # its own, not ours


def test_writes_only_to_mnt_data_and_private_tmp(py):
    name = f"f-{uuid.uuid4().hex}"
    site_dir = os.path.dirname(os.__file__)
    out = py.execute(
        "import os\n"
        f"for d in ['/usr', '/etc', '/', {sys.prefix!r}, {site_dir!r}, '/mnt']:\n"
        "    try:\n"
        f"        open(os.path.join(d, {name!r}), 'w').write('x')\n"
        "        print('WROTE', d)\n"
        "    except OSError as e:\n"
        "        print('refused', d)\n"
        f"open('/mnt/data/{name}', 'w').write('kept')\n"
        f"open('/tmp/{name}', 'w').write('private')\n"
        "print(os.getcwd())")
    assert "WROTE" not in out and out.count("refused") == 6
    # Read-only mounts, not merely permissions.
    flags = py.execute("import os\n"
                       f"print([bool(os.statvfs(d).f_flag & os.ST_RDONLY) for d in "
                       f"['/usr', '/etc/ld.so.cache', '/', {sys.prefix!r}, '/mnt/data', '/tmp']])")
    assert flags == "[True, True, True, True, False, False]\n"
    assert out.endswith("/mnt/data\n")
    assert open(os.path.join(py.data_dir, name)).read() == "kept"  # the host sees /mnt/data
    assert not os.path.exists(f"/tmp/{name}")  # but not the sandbox's /tmp


def test_no_nested_user_namespaces(py):
    """A user namespace would give the code capabilities (in it) and more of the kernel to
    attack: refused, by bwrap (unprivileged) or by the seccomp filter (as root)."""
    out = py.execute("import subprocess\n"
                     "r = subprocess.run(['unshare', '--user', '--map-root-user', 'id', '-u'],"
                     " capture_output=True, text=True)\n"
                     "print(r.returncode, r.stdout.strip())")
    assert out.split()[0] != "0" and "0" not in out.split()[1:], out
    assert py.execute("import threading\nt = threading.Thread(target=print, args=('ok',))\n"
                      "t.start(); t.join()") == "ok\n"  # threads (clone3 -> clone) still work


def test_close_leaves_no_process_and_no_files():
    tool = PythonTool(limits=LIMITS)
    tool.execute("import subprocess, os\n"
                 "child = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
                 "if os.fork() == 0:\n"  # a daemon that escapes its parent
                 "    os.setsid()\n"
                 "    if os.fork() == 0:\n"
                 "        import time; time.sleep(1000)\n"
                 "    os._exit(0)\n")
    ns = tool.pid_namespace()
    data = tool.data_dir
    assert ns is not None and len(procs_in_namespace(ns)) >= 4  # init, kernel, sleep, daemon
    tool.close()
    assert procs_in_namespace(ns) == []
    assert not os.path.exists(data)
    with pytest.raises(RuntimeError, match="closed"):
        tool.execute("1")
    tool.close()  # twice is fine


def test_close_from_another_thread_ends_a_running_cell():
    tool = PythonTool(limits=LIMITS)
    ns = tool.pid_namespace()
    threading.Timer(1.0, tool.close).start()
    with pytest.raises(RuntimeError, match="closed"):  # not after 100 s: the sleep was ended
        tool.execute("import time\ntime.sleep(100)")
    assert procs_in_namespace(ns) == []


def test_a_kernel_that_died_is_restarted_and_says_so():
    with PythonTool(limits=LIMITS) as tool:
        tool.execute("v = 1")
        tool._sandbox.kill()  # as if killed from outside between two calls
        res = tool.run("print('hello')")
        assert res.status == "restarted" and res.output.startswith("[WARN] The Python kernel")
        assert res.output.endswith("hello\n")
        assert "NameError" in tool.execute("v")


def test_many_tools_in_parallel():
    """Started from threads that then end (the kernels must outlive them), used in parallel,
    each with its own state and its own /mnt/data."""
    n = 4
    tools: list = [None] * n

    def make(i):
        tools[i] = PythonTool(limits=LIMITS)
        tools[i].execute(f"me = {i}")  # state made in a thread that then ends

    threads = [threading.Thread(target=make, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        outs: list = [None] * n

        def use(i):
            tools[i].execute("open('/mnt/data/mine.txt', 'w').write(str(me))")
            outs[i] = tools[i].execute("import os\nprint(me, os.listdir('/mnt/data'), "
                                       "open('/mnt/data/mine.txt').read())")

        threads = [threading.Thread(target=use, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outs == [f"{i} ['mine.txt'] {i}\n" for i in range(n)]
        assert len({t.data_dir for t in tools}) == n
    finally:
        for t in tools:
            if t is not None:
                t.close()


# ---------------------------------------------------------------- refusing to run unsandboxed
def test_refuses_without_bubblewrap(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxError, match="bubblewrap"):
        PythonTool()


def test_refuses_when_the_sandbox_cannot_start(monkeypatch, tmp_path):
    """A bwrap that fails (as it does where namespaces are not allowed): a clear error that
    quotes it, and no kernel running anywhere."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxError, match="No permissions to create new namespace"):
        PythonTool(startup_timeout=10)


def test_another_interpreter(tmp_path):
    """python=: that interpreter's own folders are mounted; one without ipykernel is refused
    with the kernel's own complaint."""
    other = "/usr/bin/python3"
    if not os.path.exists(other) or os.path.realpath(other) == os.path.realpath(sys.executable):
        pytest.skip("no second Python interpreter here")
    try:
        tool = PythonTool(python=other, startup_timeout=30)
    except SandboxError as e:
        assert "ipykernel" in str(e)
    else:
        with tool:
            assert tool.execute("import sys; sys.executable") == f"{other!r}\n"


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout"):
        PythonTool(timeout=0)
    with pytest.raises(ValueError, match="processes"):
        SandboxLimits(processes=4)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=-1)
