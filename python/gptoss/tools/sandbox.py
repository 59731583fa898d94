"""A Linux sandbox for untrusted code: bubblewrap namespaces plus resource limits.

Why bubblewrap (``bwrap``, Debian package ``bubblewrap``): it builds the sandbox's file system
from nothing (a fresh tmpfs root into which only the listed paths are bind-mounted, read-only),
puts the process in new PID, network, IPC and UTS namespaces, sets no-new-privileges, drops
capabilities, installs a seccomp filter and kills the whole sandbox when its parent dies. ``unshare`` alone gives the
namespaces but leaves the mount setup (pivot_root, binds, remounts) to a script of our own;
containers (docker, podman) need a daemon or images, which a plain ``pip install`` cannot bring.

Inside: the Python interpreter and its site-packages, the system's ``/usr`` and a few harmless
files of ``/etc``, all read-only; a per-sandbox writable ``/mnt/data`` (a host folder) and a
private, size-limited ``/tmp``; a network namespace with nothing but its own loopback; a
``/proc`` that sees only the sandbox. Limits (`SandboxLimits`) are rlimits set by a small
launcher inside the namespaces before it execs the real program, so the process-count limit is
counted per sandbox.

Two modes, chosen by who runs us:
- a normal user: unprivileged bwrap with a new user namespace (the user's own uid inside,
  nested user namespaces disabled);
- root (with CAP_SYS_ADMIN, as in CI containers): bwrap builds the namespaces with root's
  rights, and the launcher drops to a fresh unprivileged uid of its own before exec, so that
  the code runs with no capability, cannot read root-only files and is subject to the process
  limit (which the kernel never enforces for uid 0).
If neither works the sandbox refuses to start (`SandboxError`); nothing ever runs unsandboxed.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["SandboxError", "SandboxLimits", "Sandbox"]

MIB, GIB = 1 << 20, 1 << 30

# Read-only system trees (bound if they are directories, recreated if they are symlinks).
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc is not bound whole (it holds host secrets); these are what programs need to run.
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime",
              "timezone", "ssl", "ca-certificates", "mime.types", "fonts", "protocols",
              "services", "nsswitch.conf", "host.conf", "gai.conf", "magic", "os-release",
              "debian_version")

# Runs inside the namespaces: apply the limits, drop to the sandbox uid (root mode), exec.
_LAUNCHER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
uid = cfg["uid"]
if uid is not None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.chdir(cfg["cwd"])
os.execv(cfg["argv"][0], cfg["argv"])
"""


# A seccomp filter (classic BPF, as bwrap --seccomp takes it) that refuses new user namespaces:
# in the user namespace bwrap makes that is --disable-userns's job already, but as root the
# sandbox has none of its own, and a user namespace is where unprivileged code gains
# capabilities (and reaches more of the kernel). clone3 answers ENOSYS, so glibc falls back to
# clone, whose flags a filter can read. Foreign-architecture and x32 system calls are refused.
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 272, 56), "aarch64": (0xC00000B7, 97, 220)}
_CLONE3, _CLONE_NEWUSER, _X32_BIT = 435, 0x10000000, 0x40000000


def _seccomp_program() -> Optional[bytes]:
    """The filter for this machine's architecture (None where it is not known)."""
    import struct

    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, nr_unshare, nr_clone = arch
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, deny, nosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # ALLOW, EPERM, ENOSYS
    prog = [
        (ld, 0, 0, 4),                    # 0: A = arch
        (jeq, 1, 0, audit_arch),          # 1: ours -> 3
        (ret, 0, 0, deny),                # 2
        (ld, 0, 0, 0),                    # 3: A = syscall number
        (jset, 0, 1, _X32_BIT),           # 4: x32 -> 5, else 6
        (ret, 0, 0, deny),                # 5
        (jeq, 0, 1, _CLONE3),             # 6: clone3 -> 7, else 8
        (ret, 0, 0, nosys),               # 7
        (jeq, 1, 0, nr_unshare),          # 8: unshare -> 10
        (jeq, 0, 3, nr_clone),            # 9: clone -> 10, else 13
        (ld, 0, 0, 16),                   # 10: A = low word of the flags (args[0])
        (jset, 0, 1, _CLONE_NEWUSER),     # 11: new user namespace -> 12, else 13
        (ret, 0, 0, deny),                # 12
        (ret, 0, 0, allow),               # 13
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class SandboxError(RuntimeError):
    """The sandbox cannot be set up on this machine (the code is then not run at all)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox. Memory, CPU time and file size are per process (rlimits);
    `processes` counts the sandbox's processes and threads together."""

    memory_bytes: int = 4 * GIB        # address space of each process (RLIMIT_AS)
    cpu_seconds: int = 3600            # CPU time of each process over its life (RLIMIT_CPU)
    processes: int = 256               # processes + threads in the sandbox (RLIMIT_NPROC)
    file_size_bytes: int = 1 * GIB     # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024             # RLIMIT_NOFILE
    tmp_bytes: int = 512 * MIB         # size of the private /tmp (tmpfs, in memory)

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "cpu_seconds", "processes", "file_size_bytes",
                     "open_files", "tmp_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive integer, got {v!r}")
        if self.processes < 16:
            raise ValueError("SandboxLimits.processes must be at least 16 (a Jupyter kernel alone "
                             f"runs ~10 threads), got {self.processes}")

    def rlimits(self) -> dict[str, int]:
        return {"RLIMIT_AS": self.memory_bytes, "RLIMIT_CPU": self.cpu_seconds,
                "RLIMIT_NPROC": self.processes, "RLIMIT_FSIZE": self.file_size_bytes,
                "RLIMIT_NOFILE": self.open_files, "RLIMIT_CORE": 0}


# bwrap --die-with-parent ties the sandbox to the *thread* that forked it (PR_SET_PDEATHSIG), so
# all sandboxes are started from one long-lived thread: a sandbox made in a short-lived worker
# thread would otherwise die with that thread. The thread ends at interpreter exit, and with it
# every sandbox still running.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptoss-sandbox-spawner")


def _has_cap_sys_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 21))
    except OSError:
        pass
    return False


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """(first, count) of the ids usable in our user namespace."""
    try:
        return [(int(a), int(c)) for a, _, c in
                (line.split() for line in Path(path).read_text().splitlines() if line.strip())]
    except (OSError, ValueError):
        return [(0, 1 << 32)]


def _fresh_id() -> int:
    """An unused-looking uid/gid for one sandbox (root mode): random in the largest range that
    both our uid and gid maps allow, above the system and regular-user ids."""
    lo, hi = 100_000, 2**31 - 2
    ranges = []
    for path in ("/proc/self/uid_map", "/proc/self/gid_map"):
        best = max(_mapped_ranges(path), key=lambda r: r[1])
        ranges.append((best[0], best[0] + best[1] - 1))
    lo = max([lo] + [a for a, _ in ranges])
    hi = min([hi] + [b for _, b in ranges])
    if hi - lo < 1000:
        lo, hi = max(a for a, _ in ranges) + 1, min(b for _, b in ranges)
    if hi <= lo:
        raise SandboxError("no unprivileged user id is available for the sandbox in this user "
                           "namespace (see /proc/self/uid_map)")
    return lo + secrets.randbelow(hi - lo)


_PATHS_PROBE = ("import json, os, site, sys\n"
                "u = site.getusersitepackages() if site.ENABLE_USER_SITE else None\n"
                "print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix,"
                " sys.base_exec_prefix, *site.getsitepackages(), *([u] if u else [])]))")
_paths_cache: dict[str, list[str]] = {}


def _python_paths(python: str) -> list[str]:
    """Folders the interpreter needs: its prefixes, site-packages and the executable's folder
    (asked of the interpreter itself when it is not this one)."""
    key = os.path.abspath(python)
    if key not in _paths_cache:
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                     *site.getsitepackages()]
            if site.ENABLE_USER_SITE:
                found.append(site.getusersitepackages())
        else:
            try:
                out = subprocess.run([python, "-c", _PATHS_PROBE], capture_output=True,
                                     text=True, timeout=60, check=True).stdout
                found = json.loads(out)
            except (OSError, subprocess.SubprocessError, ValueError) as e:
                raise SandboxError(f"cannot run the python tool's interpreter {python!r}: "
                                   f"{e}") from e
        found += [os.path.dirname(key), os.path.dirname(os.path.realpath(python))]
        _paths_cache[key] = sorted({os.path.realpath(p) for p in found if os.path.isdir(p)})
    return _paths_cache[key]


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class Sandbox:
    """One running sandboxed program. `Sandbox.start(argv, ...)`; `kill()` ends it and every
    process in it; `alive` tells whether it still runs.

    data_dir: host folder mounted writable at /mnt/data. extra_rw: (host folder, sandbox path)
    pairs also mounted writable (the kernel's connection sockets). state_dir: a host folder that
    outlives the sandbox, for its own /etc files. log: file for the program's stdout/stderr.
    env: variables set inside (nothing of the host's environment leaks in).
    """

    MNT_DATA = "/mnt/data"

    def __init__(self, proc: subprocess.Popen, child_pid: Optional[int], uid: Optional[int]):
        self.proc = proc
        self.child_pid = child_pid  # host pid of the sandbox's init (PID 1 inside)
        self.uid = uid
        self._owner = os.getpid()  # a forked copy of this object must not kill our sandbox
        self._kill_lock = threading.Lock()
        self._pidfd: Optional[int] = None
        if child_pid is not None:
            try:
                self._pidfd = os.pidfd_open(child_pid)
            except (OSError, AttributeError):
                self._pidfd = None

    # ------------------------------------------------------------------ setup
    @staticmethod
    def mode() -> str:
        """"user" (unprivileged user namespace) or "root" (root builds it, code runs as a fresh
        uid); raises `SandboxError` when this machine can do neither."""
        if shutil.which("bwrap") is None:
            raise SandboxError("the python tool's sandbox needs bubblewrap, which is not installed "
                               "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
                               "bubblewrap)")
        if os.geteuid() != 0:
            return "user"
        if not _has_cap_sys_admin():
            raise SandboxError("running as root without CAP_SYS_ADMIN: the sandbox cannot create "
                               "its namespaces this way, and as uid 0 its process limit would "
                               "not hold; run as a non-root user (or give the container "
                               "CAP_SYS_ADMIN)")
        return "root"

    @classmethod
    def start(cls, argv: Sequence[str], *, data_dir: str, state_dir: str,
              extra_rw: Sequence[tuple[str, str]] = (),
              limits: SandboxLimits = SandboxLimits(), env: Optional[dict[str, str]] = None,
              log: Optional[str] = None, python: Optional[str] = None,
              uid: Optional[int] = None) -> "Sandbox":
        python = python or sys.executable
        mode = cls.mode()
        if mode == "root" and uid is None:
            uid = _fresh_id()
        if mode == "user":
            uid = None
        etc_dir = os.path.join(state_dir, "etc")
        os.makedirs(etc_dir, exist_ok=True)
        args = cls._bwrap_args(python, data_dir, extra_rw, limits, env or {}, mode, uid, etc_dir)
        if uid is not None:
            for d in [data_dir, *(h for h, _ in extra_rw)]:
                os.chown(d, uid, uid)
        cfg = {"rlimits": limits.rlimits(), "uid": uid, "cwd": cls.MNT_DATA,
               "argv": [python, *argv]}
        info_r, info_w = os.pipe()
        fds = [info_w]
        args[1:1] = ["--info-fd", str(info_w)]
        program = _seccomp_program()
        if program is not None:
            path = os.path.join(state_dir, "seccomp.bpf")
            with open(path, "wb") as f:
                f.write(program)
            fds.append(os.open(path, os.O_RDONLY))
            args[1:1] = ["--seccomp", str(fds[-1])]
        cmd = args + [python, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)]
        logf = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = _spawner.submit(
                subprocess.Popen, cmd, stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, pass_fds=tuple(fds), close_fds=True).result()
        except BaseException:
            os.close(info_r)
            raise
        finally:
            for fd in fds:
                os.close(fd)
            if log:
                logf.close()  # type: ignore[union-attr]
        return cls(proc, cls._read_child_pid(info_r, proc), uid)

    @staticmethod
    def _read_child_pid(fd: int, proc: subprocess.Popen, timeout: float = 30.0) -> Optional[int]:
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([fd], [], [], 0.1)
                if r:
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        break
                    buf += chunk
                    try:
                        return int(json.loads(buf)["child-pid"])
                    except (ValueError, KeyError):
                        continue
                elif proc.poll() is not None:
                    break
        finally:
            os.close(fd)
        return None

    @staticmethod
    def _bwrap_args(python: str, data_dir: str, extra_rw: Sequence[tuple[str, str]],
                    limits: SandboxLimits, env: dict[str, str], mode: str, uid: Optional[int],
                    etc_dir: str) -> list[str]:
        a = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent",
             "--new-session", "--clearenv", "--cap-drop", "ALL"]
        if mode == "user":
            a += ["--unshare-user", "--disable-userns"]
        else:  # root: the launcher needs these two to drop to the sandbox uid, then has none
            a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        bound: list[str] = []
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
                bound.append(d)
        a += ["--perms", "0755", "--dir", "/etc"]
        for name in _ETC_FILES:
            a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        # Our own passwd/group: the sandbox user has a name, the host's accounts stay unseen.
        inside_uid = uid if uid is not None else os.getuid()
        inside_gid = uid if uid is not None else os.getgid()
        Path(etc_dir, "passwd").write_text(
            f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{inside_uid}:{inside_gid}:sandbox:"
            f"/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
        Path(etc_dir, "group").write_text(
            f"root:x:0:\nsandbox:x:{inside_gid}:\nnogroup:x:65534:\n")
        Path(etc_dir, "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
        for name in ("passwd", "group", "hosts"):
            a += ["--ro-bind", os.path.join(etc_dir, name), f"/etc/{name}"]
        a += ["--proc", "/proc", "--dev", "/dev",
              "--perms", "1777", "--size", str(64 * MIB), "--tmpfs", "/dev/shm",
              "--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
              "--perms", "0755", "--dir", "/mnt",
              "--bind", data_dir, Sandbox.MNT_DATA]
        # The interpreter's folders, at their own paths, mounted after the private /tmp so that
        # a virtual environment under /tmp stays visible; their parents are made traversable
        # (bwrap would create them mode 0700, unreadable for the sandbox user).
        py = [p for p in _python_paths(python) if not _under(p, bound)]
        py = [p for p in py if not _under(p, [q for q in py if q != p])]
        made: set[str] = set()
        for p in py:
            parents = []
            q = os.path.dirname(p)
            while q not in ("/", "/tmp", "") and not _under(q, bound):
                parents.append(q)
                q = os.path.dirname(q)
            for d in reversed(parents):
                if d not in made:
                    a += ["--perms", "0755", "--dir", d]
                    made.add(d)
            a += ["--ro-bind", p, p]
        for host, inside in extra_rw:
            a += ["--perms", "0755", "--dir", os.path.dirname(inside), "--bind", host, inside]
        a += ["--remount-ro", "/", "--chdir", "/"]
        base_env = {"PATH": f"{os.path.dirname(os.path.abspath(python))}:/usr/local/bin:"
                            "/usr/bin:/bin",
                    "HOME": "/tmp", "USER": "sandbox", "LOGNAME": "sandbox", "LANG": "C.UTF-8",
                    "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
        base_env.update(env)
        for k, v in base_env.items():
            a += ["--setenv", k, v]
        return a

    # ------------------------------------------------------------------ running
    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def pid_namespace(self) -> Optional[str]:
        """The sandbox's PID namespace ("pid:[inode]"), for checking that nothing survives."""
        if self.child_pid is None:
            return None
        try:
            return os.readlink(f"/proc/{self.child_pid}/ns/pid")
        except OSError:
            return None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the sandbox's init: the kernel then kills every process in its namespace, and
        the init exits (and bwrap with it) only once they are all gone; this waits for that."""
        if os.getpid() != self._owner:
            return
        with self._kill_lock:
            self._kill(timeout)

    def _kill(self, timeout: float) -> None:
        signalled = False
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                select.select([self._pidfd], [], [], timeout)  # readable once it has exited
                signalled = True
            except (OSError, AttributeError):
                pass
        if signalled:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self.proc.poll() is None:
            try:
                self.proc.kill()  # bwrap itself; --die-with-parent takes the sandbox along
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):  # pragma: no cover
                pass
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

