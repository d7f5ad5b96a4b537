"""A child process in its own process group, writing to a log file: how gepa_lab runs the servers it starts
(the simulator, the router, vLLM / llama.cpp replicas). `stop()` ends the whole group, so a server's own
children (vLLM's workers) go with it."""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _signal_when_parent_dies(sig: int):
    def set_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    return set_death_signal


class ChildProcess:
    """`argv` started with its output appended to `log_path`, in `env` (default: this process's environment),
    with this checkout importable (PYTHONPATH) so a `python -m gepa_lab...` child runs the same code. die_with_parent (Linux): killed when its parent dies,
    so a killed Ray actor leaves no orphaned GPU server behind (with SIGKILL, or death_signal for a child that then
    stops its own children)."""

    def __init__(self, argv: list[str], *, log_path: str | os.PathLike, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, die_with_parent: bool = False, death_signal: int = signal.SIGKILL):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                start_new_session=True,
                preexec_fn=_signal_when_parent_dies(death_signal) if die_with_parent and sys.platform.startswith("linux") else None,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole group at once (nothing in it needs a clean exit) and wait, a bounded while, until none
        of it is left."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader (our child)
                os.killpg(self.proc.pid, 0)  # raises ProcessLookupError once the group is empty
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the group, SIGKILL if it has not ended within `timeout` seconds."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # the leader is gone; its group may not be
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
