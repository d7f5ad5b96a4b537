"""Bring up what an LM config needs for a run or a sweep, check it answers, and tear it down after.

    with serve_all({"task": cfg.lm, "reflection": cfg.reflection_lm}, workdir=out) as endpoints:
        lm = build_lm(cfg.lm, endpoints["task"].api_base, role="task", seed=...)

What `serve` starts, by kind (an explicit `api_base` always means: external, start nothing):
  sim                one simulator, or `server.replicas` of them behind the router
  openai_compatible  nothing: checks every api_base answers
  vllm               nothing: checks every replica (api_base list) answers; the router in front of them
  vllm_ray           `server.replicas` replica actors on the Ray cluster (gepa_lab.servers.replicas), supervised,
                     behind the router (always: a restarted replica has a new URL)
  llamacpp           llama.cpp's OpenAI-compatible server on this machine (gepa_lab.servers.llamacpp)
The router (gepa_lab.servers.router) runs, with router.enabled: auto, when there is more than one replica, when the
LM has a key (api_key_env: the router holds it and trials present the run's token instead, so the key never has to
exist where trials run), and for a sweep (its trials share the endpoint: the router caps each replica, holds the
excess, measures lm_utilization, and is reachable from every node); always; or never. It is supervised: restarted
on the same socket when it dies (gepa_lab.servers.router.RouterProcess).
An endpoint that does not answer is reported here, naming it, before anything else starts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

from gepa_lab.lm.config import LMConfig, RouterOptions
from gepa_lab.servers.process import EndpointError, check_endpoint
from gepa_lab.servers.ray_cluster import reachable_host

log = logging.getLogger("gepa_lab.servers.serving")


@dataclass(frozen=True)
class Endpoint:
    cfg: LMConfig
    api_base: str  # what dspy.LM talks to: http://host:port/v1 (the router when routed)
    replicas: tuple[str, ...] = ()  # the servers behind it
    routed: bool = False
    replica_set: Any = dataclasses.field(default=None, compare=False)  # vllm_ray: the supervised ReplicaSet behind it
    router: Any = dataclasses.field(default=None, compare=False)  # the RouterProcess this process started, if routed
    # routed: what clients present to the router instead of the LM's key. A per-run secret of the router alone
    # (worthless once the run ends) that travels with the pickled endpoint; gepa_lab writes it to no file.
    token: str | None = dataclasses.field(default=None, repr=False)

    def __reduce__(self):  # a trial gets the address and token (pickled); the ReplicaSet and router stay with their supervisor
        return Endpoint, (self.cfg, self.api_base, self.replicas, self.routed, None, None, self.token)

    def direct_base(self) -> str:
        """A server behind the endpoint (the first replica now up), for the driver's own calls: it holds the key."""
        urls = self.replica_set.urls if self.replica_set is not None else list(self.replicas)
        return urls[0] if urls else self.api_base

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """The router's /router/stats when routed (summed over its workers where it was started here); else the
        server's /stats (the simulator has one)."""
        if self.router is not None:
            return self.router.stats(timeout)
        base = self.api_base.rstrip("/").removesuffix("/v1")
        url = f"{base}/router/stats" if self.routed else f"{base}/stats"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(url, headers=headers, timeout=timeout).raise_for_status().json()


def check_external(configs: dict[str, LMConfig]) -> None:
    """Every already-running endpoint (an explicit api_base) answers: checked before anything is started."""
    for cfg in configs.values():
        for base in cfg.api_bases:
            check_endpoint(base, api_key=cfg.api_key(), model=cfg.model)


def _router_host(cfg: LMConfig) -> tuple[str, str | None]:
    """(bind host, advertised host) for the router."""
    host = cfg.router.host or reachable_host()
    advertise = None
    if host in ("0.0.0.0", ""):
        try:
            import ray

            advertise = ray.util.get_node_ip_address() if ray.is_initialized() else None
        except Exception:  # noqa: BLE001
            advertise = None
    return host, advertise


def _start_router(cfg: LMConfig, replicas: list[str], workdir: Path, name: str, token: str):
    from gepa_lab.servers.router import RouterConfig, RouterProcess

    host, advertise = _router_host(cfg)
    options = cfg.router.model_dump(include=set(RouterOptions.model_fields))
    # the key stays in this process's environment, which the router inherits: only the variable's name is passed
    config = RouterConfig(**{**options, "host": host}, replicas=replicas, max_in_flight=cfg.max_in_flight,
                          upstream_key_env=cfg.api_key_env)
    return RouterProcess(config, token=token, advertise_host=advertise, log_path=workdir / f"{name}-router.log")


def _use_router(cfg: LMConfig, n_replicas: int, shared: bool) -> bool:
    if cfg.kind == "vllm_ray" and not cfg.api_bases:
        return cfg.router.enabled != "never" or n_replicas > 1
    if cfg.router.enabled == "auto":
        return n_replicas > 1 or bool(cfg.api_key_env) or shared
    return cfg.router.enabled == "always"


@contextlib.contextmanager
def _ray_ready(workdir: Path) -> Iterator[None]:
    """vllm_ray needs Ray: use the caller's (the sweep's), or connect for this run only (a local head if no cluster)."""
    from gepa_lab.servers.ray_cluster import RayConfig, ray_session

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with ray_session(RayConfig(), workdir):
        yield


@contextlib.contextmanager
def serve(cfg: LMConfig, *, workdir: str | os.PathLike | None = None, name: str | None = None, token: str | None = None,
          shared: bool = False) -> Iterator[Endpoint]:
    """Start (or check) what `cfg` needs; yield its Endpoint; stop what was started. token: what clients present to
    the router (default: a fresh random one); shared: the endpoint serves a sweep's trials (router.enabled auto
    then routes it)."""
    name = name or cfg.model.replace("/", "_")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gepa_lab_lm_"))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        replica_set = None
        if cfg.api_bases:
            dead = []
            for base in cfg.api_bases:
                try:
                    check_endpoint(base, api_key=cfg.api_key(), model=cfg.model)
                except EndpointError as e:
                    dead.append(str(e))
            if dead:
                raise EndpointError(f"lm '{cfg.model}' ({cfg.kind}): " + "; ".join(dead))
            replicas = list(cfg.api_bases)
        elif cfg.kind == "sim":
            from gepa_lab.servers.simulator import start_simulator

            replicas = []
            for i in range(cfg.server.replicas):
                sim = stack.enter_context(start_simulator(
                    model=cfg.model, max_in_flight=cfg.max_in_flight, api_key=cfg.api_key(),
                    log_path=workdir / f"{name}-sim{i}.log", **cfg.sim.model_dump(),
                ))
                replicas.append(sim.url)
        elif cfg.kind == "llamacpp":
            from gepa_lab.servers.llamacpp import start_llamacpp

            proc = start_llamacpp(cfg, log_dir=workdir, name=name)
            stack.callback(proc.stop)
            replicas = [proc.url]
        elif cfg.kind == "vllm_ray":
            from gepa_lab.servers.replicas import ReplicaError, ReplicaSet

            stack.enter_context(_ray_ready(Path(workdir)))
            holder: dict[str, Any] = {}
            replica_set = ReplicaSet(cfg, workdir=workdir, label=name,
                                     on_change=lambda urls: holder["router"].set_replicas(urls) if "router" in holder else None)
            try:
                replicas = replica_set.start()
            except ReplicaError as e:
                raise EndpointError(str(e)) from None
            stack.callback(replica_set.stop)
        else:
            raise EndpointError(f"lm kind '{cfg.kind}' needs api_base")

        if _use_router(cfg, len(replicas), shared):
            router = _start_router(cfg, replicas, workdir, name, token or secrets.token_urlsafe(32))
            stack.callback(router.stop)
            if replica_set is not None:
                holder["router"] = router
                router.set_replicas(replica_set.urls)  # in case one was restarted meanwhile
            check_endpoint(router.url, api_key=router.token)
            endpoint = Endpoint(cfg, router.url, tuple(replicas), routed=True, replica_set=replica_set, router=router,
                                token=router.token)
        else:
            endpoint = Endpoint(cfg, replicas[0], tuple(replicas), routed=False, replica_set=replica_set)
        log.info("lm '%s' (%s) at %s", cfg.model, cfg.kind, endpoint.api_base)
        yield endpoint


@contextlib.contextmanager
def serve_all(configs: dict[str, LMConfig], *, workdir: str | os.PathLike | None = None,
              shared: bool = False) -> Iterator[dict[str, Endpoint]]:
    """Serve each entry's LM; entries whose configs name the same server(s) (LMConfig.server_key: equal but
    for client-side settings like temperature) share one endpoint. Keys are kept as given (roles, or config
    JSON in a sweep). Every router started here accepts one token, generated here (a sweep's token); shared: as
    for serve(). Everything is up and answering when this yields; all of it stops on exit."""
    token = secrets.token_urlsafe(32)
    with contextlib.ExitStack() as stack:
        by_server: dict[str, Endpoint] = {}
        endpoints = {}
        for key, cfg in configs.items():
            skey = cfg.server_key()
            if skey not in by_server:
                sub = Path(workdir) / f"lm{len(by_server)}" if workdir is not None else None
                by_server[skey] = stack.enter_context(serve(cfg, workdir=sub, token=token, shared=shared))
            ep = by_server[skey]
            endpoints[key] = ep if ep.cfg == cfg else dataclasses.replace(ep, cfg=cfg)
        yield endpoints
