"""vllm_ray's replica set on a Ray cluster: each replica a server command (gepa_lab.servers.process) on a node.

`ReplicaActor`   a Ray actor holding one replica's resources (num_gpus / custom resources), running its
                 server as a ServerProcess on whatever node Ray placed it.
`ReplicaSet`     starts `server.replicas` actors, waits until every one answers (or says which did not
                 and why, with the server's log tail), then supervises them: a replica whose process or
                 actor died, or that stopped answering, is replaced by a fresh actor and the router is
                 told the new URL. Each replacement runs in its own thread, so several run at once and
                 the others' health checks go on meanwhile. On exit it stops them all, unless
                 `server.keep_running` (then the actors are detached and named, and the next sweep with
                 the same config reuses them).

The LM's key (api_key_env) exists in the driver's environment only: each actor gets it in memory, as the argument
of its `start` call (not of its constructor, which Ray keeps for restarts), and hands it to its server in the
server's environment (gepa_lab.servers.process.key_environment). It is never on a command line or in a file.

vLLM itself is not a dependency: the command is whatever `server.command` says (default: `vllm serve`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable


from gepa_lab.lm.config import LMConfig
from gepa_lab.servers.process import EndpointError, ServerProcess, check_endpoint, start_server

log = logging.getLogger("gepa_lab.servers.replicas")


# --------------------------------------------------------------------------------------------------
# Ray: one actor per replica


class ReplicaActor:
    """Holds one replica's Ray resources and runs its server as a child process (decorated lazily)."""

    def __init__(self, cfg_json: str, name: str, log_dir: str):
        self.cfg = LMConfig.model_validate_json(cfg_json)
        self.name = name
        self.log_dir = log_dir
        self.proc: ServerProcess | None = None

    def start(self, api_key: str | None = None) -> dict[str, Any]:
        import ray

        node_ip = ray.util.get_node_ip_address()
        host = self.cfg.server.host or node_ip
        url_host = node_ip if host in ("0.0.0.0", "") else host
        self.proc = start_server(self.cfg, host=host, log_dir=self.log_dir, name=self.name, url_host=url_host, api_key=api_key)
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
        self.last_check = [0.0] * cfg.server.replicas  # time.time() of each replica's last finished health check
        self._restarting: dict[int, threading.Thread] = {}  # replica index -> the thread replacing it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._notify_lock = threading.Lock()
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
        return actor, actor.start.remote(self.cfg.api_key())

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
        try:
            if not info.get("alive"):
                raise EndpointError(f"{info.get('url')}: its server has exited")
            check_endpoint(self._url_for(info), timeout_s=5.0, running_is_up=True)
        except EndpointError:
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
        try:
            check_endpoint(self._url_for(self.infos[index]), timeout_s=10.0, api_key=self.cfg.api_key(), running_is_up=True)
            fails[index] = 0
        except EndpointError as e:
            fails[index] += 1
            if fails[index] >= 3:
                self.events.append({"replica": index, "event": "not_answering", "detail": str(e), "time": time.time()})
                return False
        finally:
            self.last_check[index] = time.time()
        return True

    def _restart(self, index: int) -> None:
        """Replace replica `index` (in its own thread: _supervise keeps checking the others meanwhile)."""
        import ray

        self.events.append({"replica": index, "event": "restarting", "time": time.time()})
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
            with self._lock:  # stop() kills what self.actors holds: launch nothing once it has begun
                if self._stop.is_set():
                    return
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
        if self.on_change is not None and not self._stop.is_set():
            with self._notify_lock:  # restarts finish in several threads: the router gets the lists in order
                try:
                    self.on_change(self.urls)
                except Exception:  # noqa: BLE001
                    log.exception("could not update the router's replica list")

    def _supervise(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        fails = [0] * len(self.actors)
        with ThreadPoolExecutor(max_workers=len(self.actors), thread_name_prefix=f"health-{self.label}") as pool:
            while not self._stop.wait(self.cfg.server.health_interval_s):
                self._restarting = {i: t for i, t in self._restarting.items() if t.is_alive()}
                # every replica not being replaced is checked at once: a slow check or a restart delays no other
                due = [i for i in range(len(self.actors)) if self.actors[i] is not None and i not in self._restarting]
                healthy = dict(zip(due, pool.map(lambda i: self.infos[i] is not None and self._healthy(i, fails), due)))
                for i, ok in healthy.items():
                    if ok or self._stop.is_set():
                        continue
                    if self.infos[i] is None and self.restarts[i] >= self.cfg.server.max_restarts:
                        continue
                    fails[i] = 0
                    thread = threading.Thread(target=self._restart, args=(i,), name=f"restart-{self.label}-{i}", daemon=True)
                    self._restarting[i] = thread
                    thread.start()

    def stop(self, force: bool = False) -> None:
        import ray

        with self._lock:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        restarting = list(self._restarting.values())
        if self.cfg.server.keep_running and not force:
            for thread in restarting:  # let a replacement under way finish: it is kept too
                thread.join(timeout=self.cfg.server.startup_timeout_s + 90)
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
        for thread in restarting:  # their actors are gone: each ends as soon as its wait for one fails
            thread.join(timeout=60)
        self.actors = [None] * len(self.actors)


def _root_message(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    text = str(cause if cause is not None else e)
    return text.strip()[-3000:]
