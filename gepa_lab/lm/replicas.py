"""Managed LM servers: a server command as a child process, and vllm_ray's replica set on a Ray cluster.

`ServerProcess`  runs any OpenAI-compatible server command (vLLM, llama.cpp, the simulator) as a child
                 process in its own process group, logs to a file, waits until GET <url>/models answers,
                 and kills the whole group on stop. On Linux the child also dies with its parent
                 (PR_SET_PDEATHSIG), so a killed Ray actor leaves no orphaned GPU server behind.
`ReplicaActor`   a Ray actor holding one replica's resources (num_gpus / custom resources), running its
                 server as a ServerProcess on whatever node Ray placed it.
`ReplicaSet`     starts `server.replicas` actors, waits until every one answers (or says which did not
                 and why, with the server's log tail), then supervises them: a replica whose process or
                 actor died, or that stopped answering, is replaced by a fresh actor and the router is
                 told the new URL. On exit it stops them all, unless `server.keep_running` (then the
                 actors are detached and named, and the next sweep with the same config reuses them).

vLLM itself is not a dependency: the command is whatever `server.command` says (default: `vllm serve`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from gepa_lab.lm.config import LMConfig
from gepa_lab.lm.process import ChildProcess, free_port

log = logging.getLogger("gepa_lab.lm.replicas")


class ServerStartError(RuntimeError):
    pass


def format_command(template: list[str], values: dict[str, Any]) -> list[str]:
    """Substitute {name} placeholders; an argument that is exactly a placeholder whose value is None is
    dropped together with the flag before it (e.g. --max-model-len {max_model_len} when unset)."""
    out: list[str] = []
    for arg in template:
        stripped = arg.strip()
        if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in values and values[stripped[1:-1]] is None:
            if out and out[-1].startswith("-"):
                out.pop()
            continue
        out.append(arg.format(**{k: ("" if v is None else v) for k, v in values.items()}))
    return out


def command_values(cfg: LMConfig, host: str, port: int) -> dict[str, Any]:
    s = cfg.server
    return {
        "model": cfg.model,
        "model_path": s.model_path or cfg.model,
        "host": host,
        "port": port,
        "tensor_parallel_size": s.tensor_parallel_size,
        "max_model_len": s.max_model_len,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_in_flight": cfg.max_in_flight,
        "n_ctx": s.n_ctx,
        "n_threads": s.n_threads,
        "python": sys.executable,
    }


def vllm_command(cfg: LMConfig) -> list[str]:
    """`vllm serve` with the flags from config (the default command of kind vllm_ray)."""
    cmd = ["vllm", "serve", "{model_path}", "--served-model-name", "{model}", "--host", "{host}", "--port", "{port}",
           "--tensor-parallel-size", "{tensor_parallel_size}", "--gpu-memory-utilization", "{gpu_memory_utilization}",
           "--max-model-len", "{max_model_len}", "--max-num-seqs", "{max_in_flight}", "--distributed-executor-backend", "mp"]
    if cfg.server.enable_prefix_caching:
        cmd.append("--enable-prefix-caching")
    return cmd


def sim_command(cfg: LMConfig) -> list[str]:
    """The LM simulator as a server command (kind sim with several replicas; tests of vllm_ray)."""
    cmd = ["{python}", "-m", "gepa_lab.lm.sim", "--host", "{host}", "--port", "{port}", "--model", "{model}",
           "--max-in-flight", "{max_in_flight}"]
    for name, value in cfg.sim.model_dump().items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    if cfg.api_key_env:
        cmd += ["--api-key-env", cfg.api_key_env]
    return cmd


def server_command(cfg: LMConfig) -> list[str]:
    if cfg.server.command:
        return list(cfg.server.command) + list(cfg.server.extra_args)
    if cfg.kind == "vllm_ray":
        return vllm_command(cfg) + list(cfg.server.extra_args)
    if cfg.kind == "sim":
        return sim_command(cfg) + list(cfg.server.extra_args)
    if cfg.kind == "llamacpp":
        from gepa_lab.lm.llamacpp import llamacpp_command

        return llamacpp_command(cfg) + list(cfg.server.extra_args)
    raise ValueError(f"lm kind {cfg.kind!r} has no server command")


def answers(url: str, timeout: float = 5.0, api_key: str | None = None) -> tuple[bool, str]:
    """Does an OpenAI base URL answer GET /models? (any reply below 500 counts: the server is up)"""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(url.rstrip("/") + "/models", timeout=timeout, headers=headers)
        return r.status_code < 500, f"HTTP {r.status_code}"
    except httpx.HTTPError as e:
        return False, f"{type(e).__name__}: {e}"


class ServerProcess(ChildProcess):
    """One server command as a child process (own process group, dies with its parent), with a log file."""

    def __init__(self, argv: list[str], *, url: str, log_path: str | os.PathLike, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None):
        self.url = url
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
        try:
            super().__init__(argv, log_path=log_path, env={**os.environ, **(env or {})}, cwd=cwd, die_with_parent=True)
        except OSError as e:
            raise ServerStartError(f"cannot run {argv[0]!r} for {url}: {e}") from None

    def wait_ready(self, timeout_s: float, api_key: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        last = "not started"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerStartError(
                    f"server for {self.url} exited with code {self.proc.returncode} before answering. "
                    f"Command: {' '.join(self.argv)}\nLog tail ({self.log_path}):\n{self.log_tail()}"
                )
            ok, last = answers(self.url, timeout=2.0, api_key=api_key)
            if ok:
                return
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise ServerStartError(
            f"server for {self.url} did not answer GET /models within {timeout_s:g}s (last: {last}). "
            f"Command: {' '.join(self.argv)}\nLog tail ({self.log_path}):\n{tail}"
        )

    def stop(self, timeout: float = 15.0) -> None:  # a GPU server may take a while to free its memory
        super().stop(timeout)


def start_server(cfg: LMConfig, *, host: str, log_dir: str | os.PathLike, name: str, url_host: str | None = None,
                 env: dict[str, str] | None = None, attempts: int = 3) -> ServerProcess:
    """Start cfg's server command on a free port of this machine and wait until it answers."""
    api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    last: Exception | None = None
    for i in range(attempts):
        port = free_port("" if host in ("0.0.0.0", "") else host)
        argv = format_command(server_command(cfg), command_values(cfg, host, port))
        url = f"http://{url_host or ('127.0.0.1' if host in ('0.0.0.0', '') else host)}:{port}/v1"
        proc = ServerProcess(argv, url=url, log_path=Path(log_dir) / f"{name}.log", env={**cfg.server.env, **(env or {})})
        try:
            proc.wait_ready(cfg.server.startup_timeout_s, api_key=api_key)
            return proc
        except ServerStartError as e:
            proc.stop()
            last = e
            if "Address already in use" not in proc.log_tail():
                break  # not a port race: do not retry
    assert last is not None
    raise last


# --------------------------------------------------------------------------------------------------
# Ray: one actor per replica


class ReplicaActor:
    """Holds one replica's Ray resources and runs its server as a child process (decorated lazily)."""

    def __init__(self, cfg_json: str, name: str, log_dir: str):
        self.cfg = LMConfig.model_validate_json(cfg_json)
        self.name = name
        self.log_dir = log_dir
        self.proc: ServerProcess | None = None

    def start(self) -> dict[str, Any]:
        import ray

        node_ip = ray.util.get_node_ip_address()
        host = self.cfg.server.host
        url_host = node_ip if host in ("0.0.0.0", "") else host
        self.proc = start_server(self.cfg, host=host, log_dir=self.log_dir, name=self.name, url_host=url_host)
        return self.info()

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "name": self.name,
            "url": self.proc.url if self.proc else None,
            "pid": self.proc.pid if self.proc else None,
            "alive": bool(self.proc and self.proc.alive()),
            "node_ip": ray.util.get_node_ip_address(),
            "log": str(self.proc.log_path) if self.proc else None,
            "gpu_ids": list(ray.get_gpu_ids()),
        }

    def alive(self) -> bool:
        return bool(self.proc and self.proc.alive())

    def log_tail(self, n: int = 3000) -> str:
        return self.proc.log_tail(n) if self.proc else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


_REMOTE = None


def _remote_actor_class():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(max_restarts=0, max_concurrency=1)(ReplicaActor)
    return _REMOTE


class ReplicaError(RuntimeError):
    pass


class ReplicaSet:
    """`cfg.server.replicas` replica actors on the Ray cluster, supervised. Ray must be initialised."""

    NAMESPACE = "gepa_lab"

    def __init__(self, cfg: LMConfig, *, workdir: str | os.PathLike, on_change: Callable[[list[str]], None] | None = None,
                 label: str | None = None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.on_change = on_change
        self.label = label or cfg.model.replace("/", "_")
        self.actors: list[Any] = [None] * cfg.server.replicas
        self.infos: list[dict[str, Any] | None] = [None] * cfg.server.replicas
        self.restarts = [0] * cfg.server.replicas
        self.events: list[dict[str, Any]] = []  # restarts and failures, for reports and tests
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        import ray

        self._driver_ip = ray.util.get_node_ip_address()

    # placement ----------------------------------------------------------------------------------
    def _options(self, index: int) -> dict[str, Any]:
        s = self.cfg.server
        opts: dict[str, Any] = {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus}
        if s.resources:
            opts["resources"] = dict(s.resources)
        if s.keep_running:
            opts.update(name=self._actor_name(index), namespace=self.NAMESPACE, lifetime="detached", get_if_exists=True)
        return opts

    def _actor_name(self, index: int) -> str:
        import hashlib

        digest = hashlib.sha1(self.cfg.server_key().encode()).hexdigest()[:10]
        return f"gepa_lab-{self.label}-{digest}-{index}"

    def check_feasible(self) -> None:
        """Fail early, naming what is missing, when the cluster can never hold the replicas."""
        import ray

        s = self.cfg.server
        total = ray.cluster_resources()
        need = {"GPU": s.num_gpus * s.replicas, "CPU": s.num_cpus * s.replicas,
                **{k: v * s.replicas for k, v in s.resources.items()}}
        missing = {k: (v, total.get(k, 0)) for k, v in need.items() if v > 0 and total.get(k, 0) + 1e-9 < v}
        if missing:
            detail = ", ".join(f"{k}: needs {v:g}, cluster has {have:g}" for k, (v, have) in missing.items())
            raise ReplicaError(
                f"lm '{self.cfg.model}' (vllm_ray): {s.replicas} replica(s) cannot be placed on this Ray cluster ({detail}). "
                "Add GPU nodes (ray start ... --num-gpus N) or lower server.replicas / server.num_gpus."
            )

    def _url_for(self, info: dict[str, Any]) -> str:
        url = info["url"]
        if info.get("node_ip") == self._driver_ip and f"//{self._driver_ip}:" in url:
            url = url.replace(f"//{self._driver_ip}:", "//127.0.0.1:")
        return url

    # lifecycle ------------------------------------------------------------------------------------
    def _launch(self, index: int) -> tuple[Any, Any]:
        actor = _remote_actor_class().options(**self._options(index)).remote(
            self.cfg.model_dump_json(), f"{self.label}-replica{index}-{int(time.time())}", str(self.workdir / "replicas"))
        return actor, actor.start.remote()

    def start(self) -> list[str]:
        import ray

        self.check_feasible()
        (self.workdir / "replicas").mkdir(parents=True, exist_ok=True)
        pending = {}
        for i in range(self.cfg.server.replicas):
            if self.cfg.server.keep_running:
                reused = self._reuse(i)
                if reused:
                    continue
            actor, ref = self._launch(i)
            self.actors[i] = actor
            pending[i] = ref
        deadline = self.cfg.server.startup_timeout_s + 60  # Ray placement plus the server's own start
        failures = []
        for i, ref in pending.items():
            try:
                self.infos[i] = ray.get(ref, timeout=deadline)
            except ray.exceptions.GetTimeoutError:
                failures.append(f"replica {i}: not placed or not started within {deadline:g}s "
                                f"(needs {self._options(i)}; cluster has {ray.available_resources()})")
            except Exception as e:  # noqa: BLE001 - report every replica's failure
                failures.append(f"replica {i}: {_root_message(e)}")
        if failures:
            self.stop(force=True)
            raise ReplicaError(f"lm '{self.cfg.model}' (vllm_ray): replicas did not come up:\n" + "\n".join(failures))
        self._thread = threading.Thread(target=self._supervise, name=f"replicas-{self.label}", daemon=True)
        self._thread.start()
        return self.urls

    def _reuse(self, index: int) -> bool:
        import ray

        try:
            actor = ray.get_actor(self._actor_name(index), namespace=self.NAMESPACE)
            info = ray.get(actor.info.remote(), timeout=30)
        except Exception:
            return False
        if not info.get("alive") or not answers(self._url_for(info))[0]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            return False
        self.actors[index], self.infos[index] = actor, info
        log.info("reusing replica %s at %s", self._actor_name(index), info["url"])
        return True

    @property
    def urls(self) -> list[str]:
        with self._lock:
            return [self._url_for(info) for info in self.infos if info]

    def replica_info(self) -> list[dict[str, Any] | None]:
        with self._lock:
            return [dict(i) if i else None for i in self.infos]

    def _healthy(self, index: int, fails: list[int]) -> bool:
        import ray

        actor = self.actors[index]
        try:
            alive = ray.get(actor.alive.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - the actor (or its node) is gone
            self.events.append({"replica": index, "event": "actor_lost", "detail": _root_message(e), "time": time.time()})
            return False
        if not alive:
            self.events.append({"replica": index, "event": "process_exited", "time": time.time()})
            return False
        ok, detail = answers(self._url_for(self.infos[index]), timeout=10.0,
                             api_key=os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None)
        fails[index] = 0 if ok else fails[index] + 1
        if fails[index] >= 3:
            self.events.append({"replica": index, "event": "not_answering", "detail": detail, "time": time.time()})
            return False
        return True

    def _restart(self, index: int) -> None:
        import ray

        old = self.actors[index]
        with contextlib.suppress(Exception):
            ray.get(old.stop.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(old)
        if self.restarts[index] >= self.cfg.server.max_restarts:
            self.events.append({"replica": index, "event": "gave_up", "time": time.time()})
            with self._lock:
                self.infos[index] = None
            self._notify()
            return
        self.restarts[index] += 1
        with self._lock:
            self.infos[index] = None
        self._notify()  # take it out of rotation now
        try:
            actor, ref = self._launch(index)
            self.actors[index] = actor
            info = ray.get(ref, timeout=self.cfg.server.startup_timeout_s + 60)
        except Exception as e:  # noqa: BLE001
            self.events.append({"replica": index, "event": "restart_failed", "detail": _root_message(e), "time": time.time()})
            return  # the next supervision round tries again
        with self._lock:
            self.infos[index] = info
        self.events.append({"replica": index, "event": "restarted", "url": info["url"], "time": time.time()})
        log.warning("replica %d of %s restarted at %s", index, self.cfg.model, info["url"])
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.urls)
            except Exception:  # noqa: BLE001
                log.exception("could not update the router's replica list")

    def _supervise(self) -> None:
        fails = [0] * len(self.actors)
        while not self._stop.wait(self.cfg.server.health_interval_s):
            for i in range(len(self.actors)):
                if self._stop.is_set():
                    return
                if self.actors[i] is None:
                    continue
                if self.infos[i] is None or not self._healthy(i, fails):
                    if self.infos[i] is None and self.restarts[i] >= self.cfg.server.max_restarts:
                        continue
                    fails[i] = 0
                    self._restart(i)

    def stop(self, force: bool = False) -> None:
        import ray

        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        if self.cfg.server.keep_running and not force:
            log.info("leaving %d replica(s) of %s running (server.keep_running)", len(self.actors), self.cfg.model)
            return
        refs = []
        for actor in self.actors:
            if actor is not None:
                refs.append(actor.stop.remote())
        with contextlib.suppress(Exception):
            ray.get(refs, timeout=60)
        for actor in self.actors:
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self.actors = [None] * len(self.actors)


def _root_message(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    text = str(cause if cause is not None else e)
    return text.strip()[-3000:]
