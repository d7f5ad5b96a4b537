"""Start the simulator as a child process from Python.

    from gepa_lab.servers.simulator import start_simulator

    with start_simulator(max_in_flight=8, latency_ms=20) as sim:
        lm = dspy.LM("openai/sim", api_base=sim.url, api_key="x", cache=False)
        ...
        print(sim.stats()["peak_in_flight"])

The options are the simulator's own model (``gepa_lab.sim.config.SimConfig``), validated here; the child gets
them as the flags that differ from the defaults. It runs ``python -m gepa_lab.sim`` in its own process group
(``start_new_session=True``); ``stop()`` kills the whole group and waits. The API key travels in an environment
variable (``--api-key-env``), never on the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from gepa_lab.api_keys import MissingKeyError, key_from_env
from gepa_lab.cli import model_argv
from gepa_lab.servers.process import ChildProcess, free_port
from gepa_lab.sim.config import SimConfig

API_KEY_ENV = "GEPA_LAB_SIM_API_KEY"


class SimulatorStartError(RuntimeError):
    pass


def _get_json(url: str, timeout: float = 5.0, method: str = "GET") -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


class Simulator(ChildProcess):
    """A running simulator child process."""

    def __init__(self, argv: list[str], config: SimConfig, log_path: Path, own_log: bool, env: dict[str, str]):
        super().__init__(argv, log_path=log_path, env=env)
        self.config = config
        self.host = config.host
        self.port = config.port
        self._own_log = own_log

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI-style API base, e.g. ``http://127.0.0.1:PORT/v1`` (for ``dspy.LM(api_base=...)``)."""
        return f"{self.base}/v1"

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        return _get_json(f"{self.base}/health", timeout=timeout)

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        return _get_json(f"{self.base}/stats", timeout=timeout)

    def reset_stats(self, timeout: float = 5.0) -> dict[str, Any]:
        return _get_json(f"{self.base}/stats/reset", timeout=timeout, method="POST")

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the child's process group (SIGTERM, then SIGKILL) and wait for it; remove a log we made."""
        super().stop(timeout)
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __repr__(self) -> str:
        return f"Simulator(url={self.url!r}, pid={self.proc.pid}, alive={self.alive()})"


def start_simulator(
    port: int | None = None,
    *,
    api_key: str | None = None,
    log_path: str | os.PathLike | None = None,
    startup_timeout: float = 30.0,
    python: str | None = None,
    **options: Any,
) -> Simulator:
    """Spawn ``python -m gepa_lab.sim`` on ``port`` (a free one if None) and wait for ``/health``.

    ``options`` are ``SimConfig``'s fields (gepa_lab/sim/config.py: ``latency_ms``, ``max_in_flight``, ``error_rate``,
    ``hang_s``, ``model``, ``host``, ``api_key_env``, ``log_level``...); a bad one raises pydantic's ValidationError
    here. ``api_key`` is passed to the child through the environment variable ``GEPA_LAB_SIM_API_KEY``;
    ``api_key_env="NAME"`` instead makes the child read the key from the variable NAME of this process's
    environment (it must be set). The child's output goes to ``log_path`` (a temp file that is removed on
    ``stop()`` if not given). Raises ``SimulatorStartError`` with the log tail if the server does not answer
    ``/health`` within ``startup_timeout`` seconds.
    """
    api_key_env = options.get("api_key_env")
    if api_key and api_key_env:
        raise TypeError("give api_key or api_key_env, not both")
    try:
        key_from_env(api_key_env, needed_by="the simulator")  # fail here, not in the child
    except MissingKeyError as e:
        raise SimulatorStartError(str(e)) from None
    if api_key:
        options["api_key_env"] = API_KEY_ENV
    attempts = 1 if port is not None else 3
    last_error: Exception | None = None
    for _ in range(attempts):
        # free_port(""): free on every interface, whichever host the child binds
        config = SimConfig(port=port if port is not None else free_port(""), **options)
        try:
            return _start_once(config, api_key, log_path, startup_timeout, python)
        except SimulatorStartError as exc:  # a port race: try another free port
            last_error = exc
    assert last_error is not None
    raise last_error


def _start_once(config: SimConfig, api_key, log_path, startup_timeout, python) -> Simulator:
    cmd = [python or sys.executable, "-m", "gepa_lab.sim", *model_argv(config)]
    env = dict(os.environ)
    if api_key:
        env[API_KEY_ENV] = api_key
    elif config.api_key_env != API_KEY_ENV:
        env.pop(API_KEY_ENV, None)
    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix="gepa_lab_sim_", suffix=".log")
        os.close(fd)
        path = Path(name)
    else:
        path = Path(log_path)
    sim = Simulator(cmd, config, path, own_log, env)
    sim.wait_until(lambda: sim.health(timeout=1.0).get("status") == "ok", startup_timeout,
                   f"LM simulator on {config.host}:{config.port} (GET /health)", error=SimulatorStartError)
    return sim
