"""A child process in its own process group, writing to a log file: how gepa_lab runs the servers it starts
(the simulator, the router, vLLM / llama.cpp replicas, Redis, a local Ray head). `stop()` ends the whole group, so a
server's own children (vLLM's workers) go with it.

Every child dies with the process that started it (Linux: PR_SET_PDEATHSIG), also when that process is killed
without a chance to stop it (SIGKILL, out of memory): a killed run, sweep or Ray actor leaves no orphaned simulator,
router, Redis or GPU server behind.

`ServerProcess` / `start_server` run an LM server's command (gepa_lab.servers.commands) on a free port and wait until
GET <url>/models answers. `check_endpoint` is the one "does this LM endpoint answer" check."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import httpx

from gepa_lab.errors import GepaLabError
from gepa_lab.lm.config import LMConfig
from gepa_lab.servers.commands import command_values, format_command, server_command

REPO_ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("gepa_lab.servers.process")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct TCP ports that were free a moment ago (bound to port 0 all at once, read, released). One at a
    time they could repeat: a port just released may be the next one the kernel hands out."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    return free_ports(1, host)[0]


def _signal_when_parent_dies(sig: int):
    parent = os.getpid()

    def set_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
        except Exception:
            return
        if os.getppid() != parent:  # the parent died before the prctl: nobody will send the signal
            os.kill(os.getpid(), sig)
    return set_death_signal


_spawn_requests: "queue.SimpleQueue[tuple[Callable[[], Any], Future]]" = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawn_forever() -> None:
    while True:
        start, result = _spawn_requests.get()
        try:
            result.set_result(start())
        except BaseException as e:  # noqa: BLE001 - handed to the thread that asked
            result.set_exception(e)


def on_lasting_thread(start: Callable[[], Any]) -> Any:
    """start() on a thread that lasts as long as this process; its result (or exception).

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a child started from a
    short-lived thread (a Ray Tune trial's, the router's supervisor, a pool's) would be killed with that thread. So
    such children are forked from the main thread, or else from one daemon thread kept for that."""
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return start()
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_spawn_forever, name="gepa_lab-child-spawner", daemon=True)
            _spawner.start()
    result: Future = Future()
    _spawn_requests.put((start, result))
    return result.result()


def popen_dying_with_parent(argv: list[str], *, death_signal: int = signal.SIGKILL, **popen_kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen(argv, **popen_kwargs), for a child that must not outlive this process: on Linux it gets
    death_signal when this process dies (SIGKILL by default; SIGTERM for a child that then stops its own children)."""
    if sys.platform.startswith("linux"):
        popen_kwargs["preexec_fn"] = _signal_when_parent_dies(death_signal)
    return on_lasting_thread(lambda: subprocess.Popen(argv, **popen_kwargs))


class ChildProcess:
    """`argv` started with its output appended to `log_path`, in `env` (default: this process's environment),
    with this checkout importable (PYTHONPATH) so a `python -m gepa_lab...` child runs the same code. die_with_parent
    (Linux; the default): killed when this process dies (popen_dying_with_parent; with SIGKILL, or death_signal for a
    child that then stops its own children). pass_fds: file descriptors the child inherits (a listening socket its
    parent keeps). stdin: bytes written to the child's standard input, then closed (a secret it must not find on its
    command line, in its environment or in a file)."""

    def __init__(self, argv: list[str], *, log_path: str | os.PathLike, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, die_with_parent: bool = True, death_signal: int = signal.SIGKILL,
                 pass_fds: tuple[int, ...] = (), stdin: bytes | None = None):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            options = dict(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                           env=full_env, cwd=cwd, start_new_session=True, pass_fds=pass_fds)
            self.proc = (popen_dying_with_parent(self.argv, death_signal=death_signal, **options) if die_with_parent
                         else subprocess.Popen(self.argv, **options))
        if stdin is not None:
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()

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

    def wait_until(self, ready: Callable[[], Any], timeout_s: float, what: str, *, error: type[Exception] = RuntimeError,
                   interval_s: float = 0.05) -> None:
        """Poll `ready()` until it returns a true value (an exception from it means: not yet; the last one is
        reported). If the child exits first, or timeout_s passes, stop it and raise `error`: `what` (the child and
        what ready means), why, and the tail of its log."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            if not self.alive():
                why = f"exited with code {self.proc.returncode} before it was ready"
                break
            try:
                if ready():
                    return
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = f" (last: {e})" if str(e) else f" (last: {type(e).__name__})"
            if time.monotonic() >= deadline:
                why = f"was not ready within {timeout_s:g}s{last}"
                break
            time.sleep(interval_s)
        tail = self.log_tail()
        self.stop()
        raise error(f"{what} {why}. Log tail ({self.log_path}):\n{tail}")

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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()  # a subclass's stop() (a log or temp dir to remove) runs too


class ServerStartError(RuntimeError):
    pass


class EndpointError(GepaLabError):
    """An LM endpoint that does not answer (or refuses the key): one line naming it."""


def check_endpoint(api_base: str, timeout_s: float = 10.0, api_key: str | None = None, model: str | None = None, *,
                   running_is_up: bool = False) -> None:
    """GET <api_base>/models; raises EndpointError, one line naming the URL, unless the endpoint is up.

    Up, for what is about to send it requests: HTTP 200 with the key accepted (a model it does not list is only
    warned about). running_is_up, for a server being started or supervised: any reply below 500, since a server
    that refuses the path or the key is running all the same."""
    url = api_base.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url, timeout=timeout_s, headers=headers)
    except httpx.HTTPError as e:
        raise EndpointError(f"LM endpoint {api_base} does not answer (GET {url}): {type(e).__name__}: {e}") from None
    if running_is_up and r.status_code < 500:
        return
    if r.status_code in (401, 403):
        raise EndpointError(f"LM endpoint {api_base} refuses the API key (GET {url}: HTTP {r.status_code}); check api_key_env")
    if r.status_code != 200:
        raise EndpointError(f"LM endpoint {api_base} answers GET {url} with HTTP {r.status_code}: {r.text[:200]}")
    if model is not None:
        try:
            served = [m.get("id") for m in r.json().get("data", [])]
        except (ValueError, AttributeError):
            served = []
        if served and model not in served:
            log.warning("LM endpoint %s serves %s, not %r: requests for %r may fail", api_base, served, model, model)


class ServerProcess(ChildProcess):
    """One server command as a child process (own process group, dies with this process), with a log file."""

    def __init__(self, argv: list[str], *, url: str, log_path: str | os.PathLike, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None):
        self.url = url
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
        try:
            super().__init__(argv, log_path=log_path, env={**os.environ, **(env or {})}, cwd=cwd)
        except OSError as e:
            raise ServerStartError(f"cannot run {argv[0]!r} for {url}: {e}") from None

    def wait_ready(self, timeout_s: float, api_key: str | None = None) -> None:
        def answers() -> bool:
            check_endpoint(self.url, timeout_s=2.0, api_key=api_key, running_is_up=True)
            return True

        self.wait_until(answers, timeout_s, f"server for {self.url} (GET /models; command: {' '.join(self.argv)})",
                        error=ServerStartError, interval_s=0.2)

    def stop(self, timeout: float = 15.0) -> None:  # a GPU server may take a while to free its memory
        super().stop(timeout)


def key_environment(cfg: LMConfig, api_key: str | None) -> dict[str, str]:
    """The variables that hand a server command its key: the one api_key_env names (the simulator's --api-key-env
    reads it) and VLLM_API_KEY (vLLM requires that key when it is set). Environment only: never the command line."""
    if not api_key:
        return {}
    return {**({cfg.api_key_env: api_key} if cfg.api_key_env else {}), "VLLM_API_KEY": api_key}


def start_server(cfg: LMConfig, *, host: str, log_dir: str | os.PathLike, name: str, url_host: str | None = None,
                 env: dict[str, str] | None = None, attempts: int = 3, api_key: str | None = None) -> ServerProcess:
    """Start cfg's server command on a free port of this machine and wait until it answers. api_key: the key it must
    require (a replica actor on another node gets it in memory from the driver); None: api_key_env's here, if set."""
    api_key = api_key or cfg.api_key()
    last: Exception | None = None
    for i in range(attempts):
        port = free_port("" if host in ("0.0.0.0", "") else host)
        argv = format_command(server_command(cfg), command_values(cfg, host, port))
        url = f"http://{url_host or ('127.0.0.1' if host in ('0.0.0.0', '') else host)}:{port}/v1"
        proc = ServerProcess(argv, url=url, log_path=Path(log_dir) / f"{name}.log",
                             env={**cfg.server.env, **key_environment(cfg, api_key), **(env or {})})
        try:
            proc.wait_ready(cfg.server.startup_timeout_s, api_key=api_key)
            return proc
        except ServerStartError as e:  # wait_ready stopped it
            last = e
            if "Address already in use" not in proc.log_tail():
                break  # not a port race: do not retry
    assert last is not None
    raise last
