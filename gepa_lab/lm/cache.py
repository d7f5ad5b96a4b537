"""The rollout cache a run or a sweep shares: identical LM requests are answered once.

It is dspy's own cache (`dspy.cache`, a `dspy.clients.cache.Cache`) with the on-disk tier swapped for a
store every trial of the sweep sees:

- disk:  a diskcache file inside the sweep's output_dir (trials are separate Ray worker processes on
         one machine; diskcache is multi-process safe), written in batches by one thread per process;
- redis: a Redis server (a cluster: every node reaches it). `gepa_lab.servers.redis.cache_service` starts one next to the
         driver when asked (`start_redis`), or use your own (`redis_url`);
- memory / off: per process only / nothing.

dspy's cache key is the request: model name, messages and every sampling parameter (temperature,
max_tokens, response_format, extra_body, and the `rollout_id` that build_lm sets from the trial's seed at
temperature > 0). It ignores api_key/api_base: all replicas of an endpoint serve the same model, so their
answers are interchangeable; two *different* servers with the same model name in one sweep would share
entries too (give them different model names).

Driver:   with cache_service(LMCacheConfig(...), sweep_dir) as cache_kwargs: ...  ctx.cache = cache_kwargs
Trial:    use_cache(trial_dir, **ctx.cache)      (installs dspy.cache in this process; idempotent)
Report:   cache_stats()  -> this process's hits/misses;  shared_cache_stats(**ctx.cache) -> the whole sweep's
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dspy
from dspy.clients.cache import Cache

from gepa_lab.errors import GepaLabError
from gepa_lab.lm.config import LMCacheConfig

_STAT_PREFIX = "__gepa_lab_stats__:"
_PENDING_PREFIX = "__gepa_lab_pending__:"
_FLUSH_EVERY_S = 1.0
PENDING_TTL_S = 20.0  # a claim lives this long unless its process keeps refreshing it (so a killed trial's claims expire)
MAX_WAIT_S = 1800.0  # never wait longer than this for another process's answer
_BATCH_WINDOW_S = 0.05  # a disk writer waits this long for more answers before it commits
CLAIM_MAX_AGE_S = 900.0  # a claim is refreshed at most this long (longer than any LM call with its retries)


def _owner() -> str:
    """Who claims: the LM call (dspy's ACTIVE_CALL_ID, set when callbacks are active), else this thread."""
    from dspy.utils.callback_context import ACTIVE_CALL_ID

    return ACTIVE_CALL_ID.get() or f"thread-{threading.get_ident()}"


class CacheUnavailable(GepaLabError, ConnectionError):
    """The shared cache's store cannot be reached: one line for the user, before any trial starts."""


class RedisStore:
    """The minimal dict-like face dspy's Cache uses for its disk tier (get/set/delete/in), on Redis."""

    def __init__(self, url: str, namespace: str, ttl_s: float | None = None):
        self.url = url
        self.namespace = namespace
        self.ttl_s = ttl_s
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        return self._client

    def __getstate__(self):
        return {"url": self.url, "namespace": self.namespace, "ttl_s": self.ttl_s, "_client": None}

    def _k(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.client.get(self._k(key))
        return default if raw is None else pickle.loads(raw)

    def set(self, key: str, value: Any) -> bool:
        px = int(self.ttl_s * 1000) if self.ttl_s else None
        return bool(self.client.set(self._k(key), pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), px=px))

    def delete(self, key: str) -> bool:
        return bool(self.client.delete(self._k(key)))

    def __contains__(self, key: str) -> bool:
        return bool(self.client.exists(self._k(key)))

    def incr(self, key: str, delta: int = 1) -> int:
        return int(self.client.incrby(self._k(key), delta))

    def ping(self) -> bool:
        return bool(self.client.ping())

    # single-flight claims: a key that expires unless its owner refreshes it
    def claim(self, key: str, ttl_s: float) -> bool:
        return bool(self.client.set(self._k(_PENDING_PREFIX + key), os.getpid(), nx=True, px=int(ttl_s * 1000)))

    def refresh_claim(self, key: str, ttl_s: float) -> None:
        self.client.pexpire(self._k(_PENDING_PREFIX + key), int(ttl_s * 1000))

    def release_claim(self, key: str) -> None:
        self.client.delete(self._k(_PENDING_PREFIX + key))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _disk_store(directory: str, size_limit_bytes: int):
    from diskcache import Cache as DiskCache

    # one SQLite file, not a FanoutCache: dspy opens a new thread pool per evaluation, and every new thread
    # opens its own connection to every shard it touches (with 16 shards a 2,000-call run took 84 s; 48 s uncached)
    return DiskCache(directory=directory, timeout=10, size_limit=size_limit_bytes)


class DiskStore:
    """The disk tier: answers in one diskcache file, written by one thread in batches; claims as files.

    SQLite has one write lock per file. Evaluation threads that each commit their own small write (an answer,
    a claim, its release) queue on it for far longer than the write takes: in a run of 2,000 LM calls they
    waited 140 ms per claim. So answers are queued and one writer thread commits them many per transaction
    (reads see this process's queued answers first; `drain()` waits for the rest), and a claim is a file
    created with O_EXCL (atomic across processes, no lock held), refreshed by its mtime, removed on release."""

    def __init__(self, directory: str, size_limit_bytes: int):
        self.cache = _disk_store(directory, size_limit_bytes)
        self.claims_dir = Path(directory) / "claims"
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        self._queued: dict[str, Any] = {}
        self._writing: dict[str, Any] = {}  # the batch being committed
        self._release_after: set[str] = set()  # claims to drop once their answer is committed
        self._cond = threading.Condition()
        threading.Thread(target=self._write_forever, name="rollout-cache-writer", daemon=True).start()

    def _pending(self, key: str) -> Any:
        return self._queued.get(key, self._writing.get(key))

    def get(self, key: str, default: Any = None) -> Any:
        with self._cond:
            value = self._pending(key)
        return self.cache.get(key, default) if value is None else value

    def __contains__(self, key: str) -> bool:
        with self._cond:
            if self._pending(key) is not None:
                return True
        return key in self.cache

    def set(self, key: str, value: Any) -> bool:
        with self._cond:
            self._queued[key] = value
            self._cond.notify_all()
        return True

    def incr(self, key: str, delta: int = 1) -> int:
        return self.cache.incr(key, delta)

    def _write_forever(self) -> None:
        while True:
            with self._cond:
                while not self._queued:
                    self._cond.wait()
            time.sleep(_BATCH_WINDOW_S)  # let answers gather: one commit for many
            with self._cond:
                self._writing, self._queued = self._queued, {}
            try:
                with self.cache.transact(retry=True):
                    for key, value in self._writing.items():
                        self.cache.set(key, value, retry=True)
            except Exception:  # a failed cache write loses a cache entry, never an LM call
                pass
            with self._cond:  # atomically: a claim released from now on finds its answer committed
                released = self._release_after & self._writing.keys()
                self._release_after -= released
                for key in released:
                    self._unlink_claim(key)
                self._writing = {}
                self._cond.notify_all()

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every queued answer is in the shared file."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queued and not self._writing, timeout=timeout)

    # single-flight claims (keys are dspy's sha256 cache keys: safe file names)
    def claim(self, key: str, ttl_s: float) -> bool:
        path = self.claims_dir / key
        for _ in range(2):
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                try:
                    if time.time() - path.stat().st_mtime <= ttl_s:
                        return False
                    path.unlink()  # its owner died without releasing it: take over
                except FileNotFoundError:
                    pass  # released meanwhile: try again
        return False

    def refresh_claim(self, key: str, ttl_s: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.claims_dir / key)

    def release_claim(self, key: str) -> None:
        """Once the key's answer is in the shared file: a waiter that finds no claim must find the answer."""
        with self._cond:
            if self._pending(key) is not None:
                self._release_after.add(key)
                return
        self._unlink_claim(key)

    def _unlink_claim(self, key: str) -> None:
        (self.claims_dir / key).unlink(missing_ok=True)


class RolloutCache(Cache):
    """dspy's Cache with a shared store as its second tier, counting hits per tier (this process) and
    adding them to counters kept in the shared store (the whole sweep)."""

    def __init__(self, store: Any | None, *, memory: bool = True, description: str = "", memory_max_entries: int = 1_000_000):
        super().__init__(
            enable_disk_cache=False,
            enable_memory_cache=memory,
            disk_cache_dir=None,
            memory_max_entries=memory_max_entries,
        )
        if store is not None:
            self.disk_cache = store
            self.enable_disk_cache = True
        self.description = description
        self._counts = {"lookups": 0, "memory_hits": 0, "shared_hits": 0, "misses": 0, "puts": 0, "waited": 0}
        self._pending = {"hits": 0, "shared_hits": 0, "puts": 0}
        self._count_lock = threading.Lock()
        self._last_flush = time.monotonic()
        # single-flight across processes: the first process to miss a key claims it in the shared store; the
        # others wait for its answer instead of sending the same request (trials start together and all
        # evaluate the seed program on the same valset at once)
        self.coalesce = store is not None and hasattr(store, "claim")
        self._claims: dict[str, tuple[str, float]] = {}  # key -> (owner: LM call id or thread, claimed at)
        self._claims_lock = threading.Lock()
        self._refresher: threading.Thread | None = None

    # counting ---------------------------------------------------------------------------------------
    def _count(self, name: str, pending: tuple[str, ...] = ()) -> None:
        with self._count_lock:
            self._counts[name] += 1
            for p in pending:
                self._pending[p] += 1
            due = self.enable_disk_cache and time.monotonic() - self._last_flush >= _FLUSH_EVERY_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Add this process's not yet reported hits/puts to the shared counters."""
        if not self.enable_disk_cache or not hasattr(self.disk_cache, "incr"):
            return
        with self._count_lock:
            pending, self._pending = self._pending, {k: 0 for k in self._pending}
            self._last_flush = time.monotonic()
        try:
            for name, n in pending.items():
                if n:
                    self.disk_cache.incr(_STAT_PREFIX + name, n)
        except Exception:  # counters are advisory: never fail an LM call over them
            pass

    def sync(self) -> None:
        """This process's queued writes and counters reach the shared store now."""
        if hasattr(self.disk_cache, "drain"):
            self.disk_cache.drain()
        self.flush()

    def stats(self) -> dict[str, Any]:
        with self._count_lock:
            counts = dict(self._counts)
        hits = counts["memory_hits"] + counts["shared_hits"]
        return {**counts, "hits": hits, "requests_saved": hits, "backend": self.description}

    # dspy's Cache interface -------------------------------------------------------------------------
    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        if not self.enable_memory_cache and not self.enable_disk_cache:
            return None
        try:
            key = self.cache_key(request, ignored_args_for_cache_key)
        except Exception:
            return None
        with self._count_lock:
            self._counts["lookups"] += 1
        if self.enable_memory_cache:
            with self._lock:
                response = self.memory_cache.get(key)
            if response is not None:
                self._count("memory_hits", ("hits",))
                return self._prepare_cached_response(response)
        if self.enable_disk_cache:
            try:
                response = self.disk_cache.get(key)
            except Exception:
                response = None
            if response is not None:
                if self.enable_memory_cache:
                    with self._lock:
                        self.memory_cache[key] = response
                self._count("shared_hits", ("hits", "shared_hits"))
                return self._prepare_cached_response(response)
            if self.coalesce:
                response = self._claim_or_wait(key)
                if response is not None:
                    if self.enable_memory_cache:
                        with self._lock:
                            self.memory_cache[key] = response
                    self._count("waited")
                    self._count("shared_hits", ("hits", "shared_hits"))
                    return self._prepare_cached_response(response)
        self._count("misses")
        return None

    def put(self, request, value, ignored_args_for_cache_key=None, enable_memory_cache: bool = True) -> None:
        super().put(request, value, ignored_args_for_cache_key, enable_memory_cache)
        if self.enable_memory_cache or self.enable_disk_cache:
            self._count("puts", ("puts",))
        if self.coalesce and self._claims:
            try:
                key = self.cache_key(request, ignored_args_for_cache_key)
            except Exception:
                return
            self._release(key)

    # single-flight ------------------------------------------------------------------------------------
    def _claim(self, key: str) -> bool:
        try:
            won = self.disk_cache.claim(key, PENDING_TTL_S)
        except Exception:
            return False
        if won:
            with self._claims_lock:
                self._claims[key] = (_owner(), time.monotonic())
                if self._refresher is None or not self._refresher.is_alive():
                    self._refresher = threading.Thread(target=self._refresh_claims, name="rollout-cache-claims", daemon=True)
                    self._refresher.start()
        return won

    def _claim_or_wait(self, key: str) -> Any:
        """None: this process claimed the key (it sends the request, then put() releases the claim) or gave up
        waiting; else another process's answer."""
        if self._claim(key):
            return self._recheck(key)
        deadline = time.monotonic() + MAX_WAIT_S
        pause = 0.01
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)
            try:
                response = self.disk_cache.get(key)
                if response is not None:
                    return response
                if self._claim(key):
                    return self._recheck(key)  # the claimant finished or gave up: check, else our turn
            except Exception:
                return None
        return None

    def _recheck(self, key: str) -> Any:
        """Just claimed: the answer may have landed between our miss and our claim."""
        try:
            response = self.disk_cache.get(key)
        except Exception:
            response = None
        if response is not None:
            self._release(key)
        return response

    def _release(self, key: str) -> None:
        with self._claims_lock:
            if self._claims.pop(key, None) is None:
                return
        try:
            self.disk_cache.release_claim(key)
        except Exception:
            pass

    def release_call(self, owner: str) -> None:
        """Drop the claims of an LM call that failed (the engine calls this), so waiters take over at once."""
        if not self._claims:
            return
        with self._claims_lock:
            keys = [k for k, (o, _) in self._claims.items() if o == owner]
        for key in keys:
            self._release(key)

    def _refresh_claims(self) -> None:
        while True:
            time.sleep(PENDING_TTL_S / 4)
            now = time.monotonic()
            with self._claims_lock:
                for key in [k for k, (_, at) in self._claims.items() if now - at > CLAIM_MAX_AGE_S]:
                    del self._claims[key]  # never answered nor failed visibly: let it expire
                keys = list(self._claims)
            for key in keys:
                try:
                    self.disk_cache.refresh_claim(key, PENDING_TTL_S)
                except Exception:
                    pass


# one installed cache per process, reused when the same settings are asked for again
_INSTALLED: tuple[str, RolloutCache] | None = None
_INSTALL_LOCK = threading.Lock()


def cache_settings(output_dir: str | os.PathLike | None, cfg: LMCacheConfig) -> dict[str, Any]:
    mode = cfg.resolved_mode()
    out: dict[str, Any] = {"mode": mode, "memory": cfg.memory}
    if mode == "disk":
        if cfg.dir is None and output_dir is None:
            raise ValueError("the disk rollout cache needs a folder: set cache.dir or give an output_dir")
        out["dir"] = str(Path(cfg.dir) if cfg.dir else Path(output_dir) / ".dspy_cache")
        out["size_limit_gb"] = cfg.size_limit_gb
    elif mode == "redis":
        if not cfg.redis_url:
            raise ValueError("the redis rollout cache needs redis_url (cache_service starts a server and fills it in)")
        out["redis_url"] = cfg.redis_url
        out["namespace"] = cfg.namespace or (Path(output_dir).name if output_dir else "gepa_lab")
        out["ttl_s"] = cfg.ttl_s
    return out


def shown_url(url: str) -> str:
    """A Redis URL as it may be logged or recorded: its password (the sweep's Redis has one) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def build_cache(settings: dict[str, Any]) -> RolloutCache:
    mode = settings["mode"]
    memory = settings["memory"]
    if mode == "off":
        return RolloutCache(None, memory=False, description="off")
    if mode == "memory":
        return RolloutCache(None, memory=True, description="memory")
    if mode == "disk":
        store = DiskStore(settings["dir"], int(settings["size_limit_gb"] * 1e9))
        return RolloutCache(store, memory=memory, description=f"disk:{settings['dir']}")
    if mode == "redis":
        store = RedisStore(settings["redis_url"], settings["namespace"], settings.get("ttl_s"))
        try:
            store.ping()
        except Exception as e:
            raise CacheUnavailable(f"rollout cache: Redis at {shown_url(settings['redis_url'])} does not answer: {e}") from None
        return RolloutCache(store, memory=memory, description=f"redis:{shown_url(settings['redis_url'])}/{settings['namespace']}")
    raise ValueError(f"unknown cache mode {mode!r}")


def use_cache(output_dir: str | os.PathLike | None = None, **options: Any) -> RolloutCache:
    """Install the rollout cache as `dspy.cache` in this process and return it.

    options are LMCacheConfig fields (mode, dir, redis_url, namespace, memory, size_limit_gb, ttl_s); with none,
    a disk cache in <output_dir>/.dspy_cache (DSPY_CACHEDIR points there too). Calling it again with the same settings keeps the installed cache
    (and its in-memory layer)."""
    global _INSTALLED
    options = {k: v for k, v in options.items() if k in LMCacheConfig.model_fields}
    settings = cache_settings(output_dir, LMCacheConfig(**options))
    if settings["mode"] == "disk":  # anything that opens dspy's cache later lands here too, never in ~/.dspy_cache
        os.environ["DSPY_CACHEDIR"] = settings["dir"]
    key = repr(sorted(settings.items()))
    with _INSTALL_LOCK:
        if _INSTALLED is not None and _INSTALLED[0] == key and dspy.cache is _INSTALLED[1]:
            return _INSTALLED[1]
        if _INSTALLED is not None:
            _INSTALLED[1].sync()
        cache = build_cache(settings)
        with dspy._cache_lock:
            dspy.cache = cache
        _INSTALLED = (key, cache)
        return cache


def installed_cache() -> RolloutCache | None:
    return _INSTALLED[1] if _INSTALLED is not None else None


def release_failed_call() -> None:
    """Called by the engine when an LM call fails for good: its single-flight claims are dropped."""
    cache = dspy.cache
    if isinstance(cache, RolloutCache) and cache.coalesce:
        cache.release_call(_owner())


def sync_cache() -> None:
    """This process's queued cache writes and counters reach the shared store now (a trial's end)."""
    cache = installed_cache()
    if cache is not None:
        cache.sync()


def cache_stats() -> dict[str, Any]:
    """This process's rollout-cache counters (flushing them to the shared counters)."""
    cache = installed_cache()
    if cache is None:
        return {}
    cache.sync()
    return cache.stats()


def shared_cache_stats(output_dir: str | os.PathLike | None = None, **options: Any) -> dict[str, int]:
    """The whole sweep's counters kept in the shared store: hits (requests saved), shared_hits, puts, entries."""
    options = {k: v for k, v in options.items() if k in LMCacheConfig.model_fields}
    settings = cache_settings(output_dir, LMCacheConfig(**options))
    if settings["mode"] not in ("disk", "redis"):
        return {}
    sync_cache()
    if settings["mode"] == "disk":
        store = _disk_store(settings["dir"], int(settings["size_limit_gb"] * 1e9))
        get = lambda k: int(store.get(_STAT_PREFIX + k, 0) or 0)  # noqa: E731
        entries = sum(1 for k in iter(store) if not str(k).startswith(_STAT_PREFIX))  # claims are files, not rows
    else:
        store = RedisStore(settings["redis_url"], settings["namespace"])
        get = lambda k: int(store.client.get(store._k(_STAT_PREFIX + k)) or 0)  # noqa: E731
        prefix = f"{settings['namespace']}:"
        entries = sum(1 for k in store.client.scan_iter(match=prefix + "*", count=1000)
                      if not k.decode().removeprefix(prefix).startswith(("__gepa_lab_stats__:", _PENDING_PREFIX)))
    try:
        return {"hits": get("hits"), "requests_saved": get("hits"), "shared_hits": get("shared_hits"), "puts": get("puts"), "entries": entries}
    finally:
        store.close()


@atexit.register
def _flush_at_exit() -> None:  # pragma: no cover - process teardown
    sync_cache()
