"""The sweep's router: one OpenAI-compatible front (aiohttp) for several replicas of one model.

Trials of a sweep cannot see each other, so they all talk to this one process, which

- caps the requests in flight on each replica (`max_in_flight`) whatever the number of trials: the rest
  wait here, in a queue, until a slot frees (or `queue_timeout_s` passes: 503 + Retry-After);
- sends each request to a replica with a free slot (a request never waits while one has): the least busy,
  except that requests sharing a system message (a GEPA candidate's instruction) take the free replicas in
  their rendezvous-hashing order, so vLLM's prefix cache is hit, skipping one that is more than
  `affinity_slack` requests busier than the least busy;
- health-checks every replica (GET <replica>/models; any answer below 500 counts as alive) and takes
  dead ones out of rotation; a request that fails on a replica for a connection error, a timeout,
  502/503/504 or 429 is retried on another one (failover, at most `max_attempts` replicas; each reply says in
  its X-Gepa-Lab-Failovers header how often its request moved, for the client's accounting);
- never cancels an upstream request when its client goes away: the slot is held until the replica
  answers, so a replica never sees more than `max_in_flight` requests at once;
- serves GET /router/stats (per replica: in_flight, peak_in_flight, requests, errors, failovers, ...; and
  in_flight_seconds, the integral of the requests in flight over time, for lm_utilization)
  and POST /router/replicas {"replicas": [urls]} (the replica supervisor swaps a restarted replica in);
- answers only clients that present its token (`Authorization: Bearer TOKEN`, the token in the environment
  variable `--token-env` names): anything else gets 401 and changes nothing; GET /health stays open (it tells
  only whether a replica is up). Upstream it sends the LM's key instead (from the variable `--upstream-key-env`
  names), so trials on any node hold a token, never the key.

Run: GEPA_LAB_ROUTER_TOKEN=... python -m gepa_lab.servers.router --replicas http://h1:8000/v1 http://h2:8000/v1
--max-in-flight 32 [options] (`--help` lists them: `RouterConfig`'s fields). `RouterProcess` does that from Python,
handing it the validated config, and restarts it on the same socket when it dies; with `workers` > 1 it starts that
many on one address, each capping its share of every replica's slots (one process's CPU is the limit otherwise).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from gepa_lab.api_keys import MissingKeyError, key_from_env
from gepa_lab.cli import LoggingOptions, add_model_options, model_argv, parse_model
from gepa_lab.lm.config import FAILOVERS_HEADER, RouterOptions
from gepa_lab.servers.process import ChildProcess

log = logging.getLogger("gepa_lab.servers.router")

TOKEN_ENV = "GEPA_LAB_ROUTER_TOKEN"

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
_FAILOVER_STATUSES = {429, 502, 503, 504}


class RouterConfig(RouterOptions, LoggingOptions):
    """Everything `python -m gepa_lab.servers.router` reads: an LM config's router options, plus what its launcher
    decides (the replicas, the LM's max_in_flight, where to report the port)."""

    replicas: list[str] = Field(default_factory=list, description="the replicas' OpenAI base URLs (http://host:port/v1)")
    max_in_flight: int = Field(ge=1, description="requests in flight per replica (the LM config's max_in_flight)")
    port_file: str | None = Field(None, description="write the bound port here once listening")
    token_env: str = Field(TOKEN_ENV, min_length=1,
                           description="environment variable holding the token every client must present (Bearer)")
    upstream_key_env: str | None = Field(None, description="environment variable holding the replicas' API key, "
                                                           "sent upstream in place of the client's token")
    listen_fd: int | None = Field(None, ge=0, description="serve on this inherited, already bound socket "
                                                          "(the launcher keeps it, so a restart keeps the address)")
    admin_fd: int | None = Field(None, ge=0, description="serve on this inherited loopback socket too: this process's "
                                                         "own address, where the launcher reads its stats and sends "
                                                         "replica changes when several workers share listen_fd")

    def bind_host(self) -> str:
        return self.host or "127.0.0.1"  # the launcher resolves host None for a multi-node cluster (serving.py)


@dataclass
class Replica:
    url: str  # OpenAI base, e.g. http://host:port/v1
    healthy: bool = True
    in_flight: int = 0
    peak_in_flight: int = 0
    requests: int = 0  # attempts sent to it
    completed: int = 0  # answered 2xx
    errors: int = 0  # connection errors, timeouts, >= 500, 429
    failovers: int = 0  # requests moved away from it after an error
    affinity_hits: int = 0
    health_failures: int = 0
    last_error: str | None = None
    latency_sum_s: float = 0.0
    retired: bool = False  # removed from the set; kept until its in-flight requests finish

    def public(self) -> dict[str, Any]:
        return {
            "url": self.url, "healthy": self.healthy, "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight,
            "requests": self.requests, "completed": self.completed, "errors": self.errors, "failovers": self.failovers,
            "affinity_hits": self.affinity_hits, "last_error": self.last_error,
            "mean_latency_s": round(self.latency_sum_s / self.completed, 6) if self.completed else 0.0,
        }


class NoReplica(Exception):
    pass


def affinity_key(body: bytes) -> str | None:
    """The system message of a chat request (dspy puts the candidate's instruction there)."""
    try:
        data = json.loads(body)
        for m in data.get("messages") or []:
            if isinstance(m, dict) and m.get("role") in ("system", "developer"):
                content = m.get("content")
                return content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    except (ValueError, AttributeError, TypeError):
        return None
    return None


def rendezvous_score(key: str, url: str) -> int:
    """The replica with the highest score for a key is that key's preferred replica."""
    return int.from_bytes(hashlib.blake2b(f"{key}\0{url.rstrip('/')}".encode(), digest_size=8).digest(), "big")


@dataclass
class RouterState:
    config: RouterConfig
    replicas: dict[str, Replica] = field(default_factory=dict)
    requests: int = 0
    failovers: int = 0
    rejected: int = 0
    waiting: int = 0
    peak_waiting: int = 0

    def __post_init__(self):
        self.cond = asyncio.Condition()
        self.in_flight = 0  # over every replica, retired ones included
        self.in_flight_seconds = 0.0  # the integral of in_flight over time (slot-seconds in use)
        self._since = time.monotonic()

    def _count(self, r: Replica, delta: int) -> None:
        """Every change of a replica's in-flight count goes through here, so the integral is exact."""
        now = time.monotonic()
        self.in_flight_seconds += self.in_flight * (now - self._since)
        self._since = now
        self.in_flight += delta
        r.in_flight += delta

    def set_replicas(self, urls: list[str]) -> None:
        urls = [u.rstrip("/") for u in urls]
        for url in urls:
            r = self.replicas.get(url)
            if r is None:
                self.replicas[url] = Replica(url)
            else:
                r.retired = False
        for url, r in list(self.replicas.items()):
            if url not in urls:
                r.retired = True

    def pick(self, key: str | None, exclude: set[str]) -> Replica | None:
        """The replica for this request now; None: all candidates are full (wait); NoReplica: no candidate.

        Whenever a candidate has a free slot the request takes one: affinity only orders the free replicas (the
        key's rendezvous order, as long as that replica is at most affinity_slack busier than the least busy one),
        so a request never waits while a slot is idle."""
        live = [r for r in self.replicas.values() if not r.retired and r.url not in exclude]
        cands = [r for r in live if r.healthy] or live  # all marked down: try them anyway (health may be stale)
        if not cands:
            raise NoReplica
        cap = self.config.max_in_flight
        free = [r for r in cands if r.in_flight < cap]
        if not free:
            return None
        least = min(free, key=lambda r: (r.in_flight, r.requests))
        if self.config.affinity and key is not None:
            rank = {r.url: rendezvous_score(key, r.url) for r in cands}
            near = [r for r in free if r.in_flight <= least.in_flight + self.config.affinity_slack]
            preferred = max(near, key=lambda r: rank[r.url])
            if rank[preferred.url] == max(rank.values()):  # the key's own replica, not a fallback
                preferred.affinity_hits += 1
            return preferred
        return least

    async def acquire(self, key: str | None, exclude: set[str]) -> Replica:
        deadline = time.monotonic() + self.config.queue_timeout_s
        async with self.cond:
            self.waiting += 1
            self.peak_waiting = max(self.peak_waiting, self.waiting)
            try:
                while True:
                    r = self.pick(key, exclude)
                    if r is not None:
                        self._count(r, +1)
                        r.requests += 1
                        r.peak_in_flight = max(r.peak_in_flight, r.in_flight)
                        return r
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    try:
                        await asyncio.wait_for(self.cond.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
            finally:
                self.waiting -= 1

    async def release(self, r: Replica) -> None:
        async with self.cond:
            self._count(r, -1)
            if r.retired and r.in_flight == 0:
                self.replicas.pop(r.url, None)
            self.cond.notify_all()

    async def mark(self, r: Replica, healthy: bool, error: str | None = None) -> None:
        async with self.cond:
            changed = r.healthy != healthy
            r.healthy = healthy
            if error:
                r.last_error = error
            if changed:
                log.warning("replica %s is now %s%s", r.url, "up" if healthy else "DOWN", f" ({error})" if error else "")
                self.cond.notify_all()

    def public(self) -> dict[str, Any]:
        live = [r for r in self.replicas.values() if not r.retired]
        now = time.monotonic()
        return {
            "max_in_flight": self.config.max_in_flight,
            "capacity": self.config.max_in_flight * len(live),
            "in_flight": self.in_flight,
            "in_flight_seconds": round(self.in_flight_seconds + self.in_flight * (now - self._since), 6),
            "requests": self.requests,
            "failovers": self.failovers,
            "rejected": self.rejected,
            "waiting": self.waiting,
            "peak_waiting": self.peak_waiting,
            "healthy_replicas": sum(1 for r in live if r.healthy),
            "replicas": [r.public() for r in live],
        }


class Router:
    """token: what every client must present; upstream_key: the LM's key, sent to the replicas instead (None: none)."""

    def __init__(self, config: RouterConfig, *, token: str, upstream_key: str | None = None):
        self.config = config
        self._expected = f"Bearer {token}".encode()
        self._upstream_auth = {"Authorization": f"Bearer {upstream_key}"} if upstream_key else {}
        self.state: RouterState | None = None
        self.session = None
        self._health_task = None

    def app(self):
        from aiohttp import web

        async def authorize(request, handler):  # a function: web.middleware marks it, which a bound method refuses
            return await self._authorize(request, handler)

        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[web.middleware(authorize)])
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        app.add_routes([
            web.get("/health", self.health),
            web.get("/router/stats", self.stats),
            web.post("/router/replicas", self.set_replicas),
            web.route("*", "/v1/{tail:.*}", self.proxy),
        ])
        return app

    async def _startup(self, app) -> None:
        import aiohttp

        self.state = RouterState(self.config)
        self.state.set_replicas(self.config.replicas)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False,
        )
        self._health_task = asyncio.create_task(self._health_loop())

    async def _cleanup(self, app) -> None:
        if self._health_task:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.session:
            await self.session.close()

    # admin ------------------------------------------------------------------------------------------
    def _authorized(self, request) -> bool:
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), self._expected)

    async def _authorize(self, request, handler):
        """Middleware: /health tells only whether a replica is up; everything else needs the token, checked before
        anything is read or counted."""
        from aiohttp import web

        if request.path != "/health" and not self._authorized(request):
            log.warning("refused %s %s from %s: no valid token", request.method, request.path, request.remote)
            return web.json_response(
                {"error": {"message": "router: this endpoint needs the sweep's token (Authorization: Bearer TOKEN)",
                           "type": "unauthorized"}},
                status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def health(self, request):
        from aiohttp import web

        healthy = sum(1 for r in self.state.replicas.values() if r.healthy and not r.retired)
        return web.json_response({"status": "ok" if healthy else "no healthy replica", "healthy_replicas": healthy},
                                 status=200)

    async def stats(self, request):
        from aiohttp import web

        return web.json_response(self.state.public())

    async def set_replicas(self, request):
        from aiohttp import web

        data = await request.json()
        urls = data.get("replicas")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            return web.json_response({"error": {"message": "body must be {\"replicas\": [url, ...]}"}}, status=400)
        async with self.state.cond:
            self.state.set_replicas(urls)
            self.state.cond.notify_all()
        asyncio.create_task(self._check_all())
        return web.json_response(self.state.public())

    # health -----------------------------------------------------------------------------------------
    async def _check(self, r: Replica) -> None:
        import aiohttp

        try:
            async with self.session.get(r.url + "/models", headers=self._upstream_auth,
                                        timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                ok = resp.status < 500
                err = None if ok else f"health check: HTTP {resp.status}"
        except Exception as e:  # noqa: BLE001 - any failure means not answering
            ok, err = False, f"health check: {type(e).__name__}: {e}"
        if ok:
            r.health_failures = 0
            if not r.healthy:
                await self.state.mark(r, True)
        else:
            r.health_failures += 1
            if r.healthy and r.health_failures >= 2:
                await self.state.mark(r, False, err)
            elif not r.healthy:
                r.last_error = err

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in list(self.state.replicas.values()) if not r.retired))

    async def _health_loop(self) -> None:
        while True:
            try:
                await self._check_all()
            except Exception:  # pragma: no cover - keep checking whatever happens
                log.exception("health check round failed")
            await asyncio.sleep(self.config.health_interval_s)

    # proxy ------------------------------------------------------------------------------------------
    async def _send(self, r: Replica, method: str, tail: str, body: bytes, headers: dict[str, str]):
        """One upstream attempt; holds r's slot until the replica answers, even if our client went away."""
        import aiohttp

        started = time.monotonic()
        try:
            async with self.session.request(method, f"{r.url}/{tail}", data=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=self.config.request_timeout_s)) as resp:
                data = await resp.read()
                out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
                if resp.status < 300:
                    r.completed += 1
                    r.latency_sum_s += time.monotonic() - started
                return resp.status, data, out_headers, None
        except asyncio.TimeoutError:
            return None, None, None, ("timeout", f"no answer within {self.config.request_timeout_s:g}s")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            return None, None, None, ("connection", f"{type(e).__name__}: {e}")
        finally:
            await self.state.release(r)

    async def proxy(self, request):
        from aiohttp import web

        state = self.state
        state.requests += 1
        tail = request.match_info["tail"]
        body = await request.read()
        # the client's token stays here; the replicas get the LM's key (if any)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS and k.lower() != "authorization"}
        headers.update(self._upstream_auth)
        key = affinity_key(body) if state.config.affinity and body else None
        tried: set[str] = set()
        last: tuple[int, bytes, dict[str, str]] | None = None
        last_error = "no replica"
        failed_on: Replica | None = None  # the replica the previous attempt failed on
        for attempt in range(state.config.max_attempts):
            try:
                r = await state.acquire(key, tried)
            except NoReplica:
                break
            except asyncio.TimeoutError:
                state.rejected += 1
                return web.json_response(
                    {"error": {"message": f"router: no replica slot free within {state.config.queue_timeout_s:g}s "
                                          f"(max_in_flight {state.config.max_in_flight} per replica)", "type": "overloaded"}},
                    status=503, headers={"Retry-After": "5", **_failovers_header(len(tried) - 1)})
            if failed_on is not None:  # counted only once another replica really takes the request
                failed_on.failovers += 1
                state.failovers += 1
            tried.add(r.url)
            task = asyncio.ensure_future(self._send(r, request.method, tail, body, headers))
            status, data, out_headers, failure = await asyncio.shield(task)
            if failure is None and status not in _FAILOVER_STATUSES:
                return web.Response(status=status, body=data, headers={**out_headers, **_failovers_header(len(tried) - 1)})
            r.errors += 1
            failed_on = r
            if failure is not None:
                kind, detail = failure
                last_error = f"{r.url}: {detail}"
                if kind == "connection":
                    await state.mark(r, False, detail)
                last = None
            else:
                last_error = f"{r.url}: HTTP {status}"
                last = (status, data, out_headers)
        failovers = _failovers_header(len(tried) - 1)
        if last is not None:
            status, data, out_headers = last
            return web.Response(status=status, body=data, headers={**out_headers, **failovers})
        live = [u for u, r in state.replicas.items() if not r.retired]
        return web.json_response(
            {"error": {"message": f"router: no replica could answer (tried {sorted(tried) or 'none'} of {live}); last error: {last_error}",
                       "type": "replicas_unavailable", "replicas": sorted(tried) or live}},
            status=503, headers={"Retry-After": "2", **failovers})


def _failovers_header(failovers: int) -> dict[str, str]:
    """How many times this request moved to another replica after an error: the client's accounting adds it up, so
    every error a replica returned is seen either by the client or as a failover (gepa_lab.lm.accounting)."""
    return {FAILOVERS_HEADER: str(failovers)} if failovers > 0 else {}


def listening_socket(host: str, port: int | None, *, reuse_port: bool = False) -> socket.socket:
    """reuse_port: several sockets share the port, and the kernel spreads the connections over them evenly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port or 0))
    sock.listen(1024)
    return sock


def serve(router: Router) -> None:
    from aiohttp import web

    config = router.config
    host, port_file = config.bind_host(), config.port_file
    if config.listen_fd is not None:  # bound by the launcher, which keeps it open across our restarts
        sock = socket.socket(fileno=config.listen_fd)
    else:
        sock = listening_socket(host, config.port)
    actual = sock.getsockname()[1]

    async def main():
        runner = web.AppRunner(router.app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        if config.admin_fd is not None:
            await web.SockSite(runner, socket.socket(fileno=config.admin_fd)).start()
        if port_file:
            tmp = f"{port_file}.tmp"
            Path(tmp).write_text(str(actual))
            os.replace(tmp, port_file)
        print(f"gepa_lab router on http://{host}:{actual}/v1 -> {config.replicas}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gepa_lab.servers.router", description=__doc__.split("\n")[0])
    add_model_options(parser, RouterConfig)
    config = parse_model(parser, RouterConfig, argv)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        token = key_from_env(config.token_env, needed_by="the router (the token its clients present)")
        upstream_key = key_from_env(config.upstream_key_env, needed_by="the router (the replicas' API key)")
    except MissingKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(Router(config, token=token, upstream_key=upstream_key))
    return 0


# --------------------------------------------------------------------------------------------------
# Launching it from Python, supervised


class RouterError(RuntimeError):
    pass


class RouterProcess:
    """The router as child processes of the sweep driver (each in its own process group): `config.workers` of them
    serve one address, handed `config` as the flags that differ from its defaults, the token (`token`, or a fresh
    random one) in their environment, the LM's key in the variable `config.upstream_key_env` names (inherited from
    this process's environment, never on a command line).

    This process binds the listening sockets and keeps them: one per worker, all on one port (SO_REUSEPORT: the
    kernel spreads the connections over them evenly), and a supervisor thread starts a new worker on its socket
    within a fraction of a second when one dies, with the replica list it last had. Connections made meanwhile wait in the socket's backlog
    instead of being refused, and the LM edge (gepa_lab.lm.endpoint) retries the requests that were in flight.
    Each worker holds an equal share of every replica's max_in_flight slots, so together they never exceed it, and
    also serves on a loopback socket of its own, where `stats()` (summed) and `set_replicas()` reach every worker.
    `stop()` ends it all."""

    def __init__(self, config: RouterConfig, *, token: str | None = None, advertise_host: str | None = None,
                 log_path: str | os.PathLike | None = None, startup_timeout_s: float = 30.0, supervise: bool = True,
                 check_interval_s: float = 0.1):
        if config.workers > config.max_in_flight:
            raise RouterError(f"router: {config.workers} workers need at least as many slots per replica "
                              f"(max_in_flight {config.max_in_flight})")
        self._tmp = tempfile.TemporaryDirectory(prefix="gepa_lab_router_")
        self.token = token or secrets.token_urlsafe(32)
        self.host = config.bind_host()
        self.advertise_host = advertise_host or ("127.0.0.1" if self.host in ("0.0.0.0", "") else self.host)
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "router.log"
        self.startup_timeout_s = startup_timeout_s
        shared = config.workers > 1
        first = listening_socket(self.host, config.port, reuse_port=shared)
        self.port = first.getsockname()[1]
        self._socks = [first, *(listening_socket(self.host, self.port, reuse_port=True) for _ in range(config.workers - 1))]
        self._admin = [listening_socket("127.0.0.1", None) for _ in range(config.workers)]
        whole, rest = divmod(config.max_in_flight, config.workers)
        self._shares = [whole + (i < rest) for i in range(config.workers)]
        self.config = config
        self.restarts: list[float] = []  # wall times of the restarts, for reports and tests
        self._lock = threading.Lock()
        self._admin_client = None  # httpx.Client for the workers' admin sockets, made on first use
        self._stopping = threading.Event()
        self.children: list[ChildProcess | None] = [None] * config.workers
        try:
            for i in range(config.workers):
                self._start_child(i)
        except RouterError:
            self._stop_children(10.0)
            self._close()
            raise
        self._supervisor = None
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise, args=(check_interval_s,), name=f"router-{self.port}",
                                                daemon=True)
            self._supervisor.start()

    def _start_child(self, i: int) -> None:
        port_file = Path(self._tmp.name) / f"port-{i}"
        port_file.unlink(missing_ok=True)
        with self._lock:
            config = self.config.model_copy(update={"workers": 1, "max_in_flight": self._shares[i], "port_file": str(port_file),
                                                    "listen_fd": self._socks[i].fileno(), "admin_fd": self._admin[i].fileno()})
        cmd = [sys.executable, "-m", "gepa_lab.servers.router", *model_argv(config)]
        log_path = self.log_path if i == 0 else self.log_path.with_name(f"{self.log_path.stem}-{i}{self.log_path.suffix}")
        child = ChildProcess(cmd, log_path=log_path, env={**os.environ, config.token_env: self.token},
                             pass_fds=(self._socks[i].fileno(), self._admin[i].fileno()))
        self.children[i] = child
        child.wait_until(port_file.exists, self.startup_timeout_s, "the LM router (writing its port file)", error=RouterError)

    def _supervise(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            for i, child in enumerate(self.children):
                if child.alive():
                    continue
                if child.proc.returncode == 0:
                    # it exits 0 only when told to (SIGTERM, SIGINT): a stop sent to every process of the sweep (`ray
                    # job stop`, Slurm's scancel), whose driver is stopping too; a restart would undo that stop
                    log.info("the LM router on port %d was stopped by a signal: not restarted", self.port)
                    return
                log.warning("the LM router on port %d exited (code %s): restarting it on the same socket",
                            self.port, child.proc.returncode)
                self.restarts.append(time.time())
                try:
                    self._start_child(i)
                except RouterError as e:  # try again on the next round; say why now
                    log.error("%s", e)
                    self._stopping.wait(1.0)

    @property
    def pid(self) -> int:
        return self.children[0].pid

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def alive(self) -> bool:
        return all(child is not None and child.alive() for child in self.children)

    @property
    def base(self) -> str:
        return f"http://{self.advertise_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def auth(self) -> dict[str, str]:
        """The header every request to the router needs."""
        return {"Authorization": f"Bearer {self.token}"}

    def _each_worker(self, method: str, path: str, timeout: float, **kwargs: Any) -> list[dict[str, Any]]:
        import httpx

        with self._lock:
            if self._admin_client is None:  # one client: a new one per call builds an SSL context (~0.1 s of CPU)
                self._admin_client = httpx.Client(headers=self.auth)
        return [self._admin_client.request(method, f"http://127.0.0.1:{sock.getsockname()[1]}{path}", timeout=timeout,
                                           **kwargs).raise_for_status().json() for sock in self._admin]

    def worker_stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Each worker's own /router/stats."""
        return self._each_worker("GET", "/router/stats", timeout)

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """/router/stats over every worker (merged_stats)."""
        return merged_stats(self.worker_stats(timeout))

    def set_replicas(self, urls: list[str], timeout: float = 10.0) -> dict[str, Any]:
        """Route to `urls` from now on (and after a restart)."""
        with self._lock:
            self.config = self.config.model_copy(update={"replicas": list(urls)})
        return merged_stats(self._each_worker("POST", "/router/replicas", timeout, json={"replicas": list(urls)}))

    def _stop_children(self, timeout: float) -> None:
        for child in self.children:
            if child is not None:
                child.stop(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=self.startup_timeout_s + 5)
        self._stop_children(timeout)
        self._close()

    def _close(self) -> None:
        if self._admin_client is not None:
            self._admin_client.close()
        for sock in (*self._socks, *self._admin):
            sock.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "RouterProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RouterProcess(url={self.url!r}, pids={self.pids})"


_SUMMED = ("max_in_flight", "capacity", "in_flight", "in_flight_seconds", "requests", "failovers", "rejected", "waiting",
           "peak_waiting")
_REPLICA_SUMMED = ("in_flight", "peak_in_flight", "requests", "completed", "errors", "failovers", "affinity_hits")


def merged_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One /router/stats for workers sharing an address: counts and slot-seconds add up, max_in_flight and capacity
    are the shares' sums; a replica is healthy when every worker finds it so. Peaks are the sums of the workers'
    peaks: a bound (each worker stays within its share), not a moment every worker reached at once."""
    if len(parts) == 1:
        return parts[0]
    out = {key: sum(p[key] for p in parts) for key in _SUMMED}
    out["in_flight_seconds"] = round(out["in_flight_seconds"], 6)
    replicas: dict[str, dict[str, Any]] = {}
    for part in parts:
        for r in part["replicas"]:
            m = replicas.get(r["url"])
            if m is None:
                replicas[r["url"]] = {**r, "latency_s": r["mean_latency_s"] * r["completed"]}
                continue
            for key in _REPLICA_SUMMED:
                m[key] += r[key]
            m["healthy"] = m["healthy"] and r["healthy"]
            m["last_error"] = m["last_error"] or r["last_error"]
            m["latency_s"] += r["mean_latency_s"] * r["completed"]
    for m in replicas.values():
        m["mean_latency_s"] = round(m.pop("latency_s") / m["completed"], 6) if m["completed"] else 0.0
    out["healthy_replicas"] = sum(1 for m in replicas.values() if m["healthy"])
    out["replicas"] = list(replicas.values())
    return out


if __name__ == "__main__":
    sys.exit(main())
