"""A Redis server for the sweep's rollout cache (Debian's redis-server; scripts/ensure_redis.sh installs it), and
`cache_service`, which starts one when the cache config asks for it."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from gepa_lab.lm.cache import build_cache, cache_settings
from gepa_lab.lm.config import LMCacheConfig
from gepa_lab.servers.process import ChildProcess, free_port
from gepa_lab.servers.ray_cluster import reachable_host




class RedisServer(ChildProcess):
    """`redis-server` as a child process: no persistence (a cache), its own process group, stopped on exit.
    It answers only clients that give its password (default: a fresh random one, held in this process's memory and
    handed to redis-server on its standard input, never on its command line or in a file).

    with RedisServer() as r: r.url  -> "redis://:PASSWORD@127.0.0.1:PORT/0"
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", workdir: str | os.PathLike | None = None,
                 max_memory: str | None = None, password: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed: run scripts/ensure_redis.sh (Debian package redis-server)")
        self.host = host
        self.port = port or free_port("127.0.0.1" if host in ("127.0.0.1", "localhost") else "")
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gepa_lab_redis_")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"redis-{self.port}.log"
        self.password = password or secrets.token_urlsafe(32)
        # "-": the config (the password) comes on stdin; the options after it add to it
        cmd = [binary, "-", "--port", str(self.port), "--bind", host, "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--logfile", str(self.log_path), "--daemonize", "no"]
        if host not in ("127.0.0.1", "localhost"):
            cmd += ["--protected-mode", "no"]
        if max_memory:
            cmd += ["--maxmemory", max_memory, "--maxmemory-policy", "allkeys-lru"]
        super().__init__(cmd, log_path=self.log_path, stdin=f"requirepass {self.password}\n".encode())
        self.url = f"redis://:{self.password}@{'127.0.0.1' if host in ('0.0.0.0', 'localhost') else host}:{self.port}/0"
        self._wait()

    def _wait(self, timeout: float = 20.0) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1" if self.host in ("0.0.0.0", "localhost") else self.host, port=self.port,
                             password=self.password, socket_timeout=1, socket_connect_timeout=1)
        try:
            self.wait_until(client.ping, timeout, f"redis-server on {self.host}:{self.port} (PING)")
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextlib.contextmanager
def cache_service(cfg: LMCacheConfig | dict | None, output_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """For the sweep driver: start what the cache needs (a Redis server when `start_redis` and no
    `redis_url`), check it answers, and yield the keyword arguments every trial passes to `use_cache`
    (absolute folder / URL filled in). Stops the Redis server it started on exit."""
    if cfg is None:
        cfg = LMCacheConfig()
    elif isinstance(cfg, dict):
        cfg = LMCacheConfig(**cfg)
    server = None
    try:
        if cfg.resolved_mode() == "redis" and not cfg.redis_url:
            server = RedisServer(host=reachable_host(), workdir=Path(output_dir) / "redis")
            cfg = cfg.model_copy(update={"redis_url": server.url})
        settings = cache_settings(Path(output_dir).resolve(), cfg)
        build_cache(settings)  # fail here, before any trial, if the store cannot be opened or reached
        kwargs = {k: v for k, v in settings.items() if k in LMCacheConfig.model_fields}
        yield kwargs
    finally:
        if server is not None:
            server.stop()
