"""LM accounting: requests, cache hits, attempts, errors, retries, tokens, latency and cost, per role.

`UsageMeter` is a dspy callback (register it with `dspy.configure(callbacks=[meter])` or
`dspy.context(callbacks=[..., meter])`). dspy calls `on_lm_start`/`on_lm_end` around every LM call in
whatever thread makes it (Evaluate's workers included), and sets `ACTIVE_CALL_ID` while the call runs.
gepa_lab's engine (gepa_lab.lm.endpoint) reports what happened on the wire for that call id: how many
HTTP attempts, how many failed, the tokens the server billed. A call that never reached the engine was
answered by dspy's cache (memory or the sweep's shared rollout cache): a cache hit.

So, per role:  requests = LM calls made by the program (cache hits included)
               cache_hits + (calls that reached the server) = requests
               attempts = HTTP requests sent (= what the server received), retries = attempts - first tries
               failovers = attempts the router moved to another replica after that replica's error, so every
               error a server returned is either one of `errors` (the client saw it) or one of `failovers`
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dspy.utils.callback import BaseCallback
from dspy.utils.callback_context import ACTIVE_CALL_ID

# call id -> the open records of every meter watching that call (normally one)
_ACTIVE: dict[str, list["CallRecord"]] = {}
_ACTIVE_LOCK = threading.Lock()


@dataclass
class CallRecord:
    role: str
    started: float = field(default_factory=time.perf_counter)
    reached_server: bool = False
    attempts: int = 0
    errors: int = 0
    failovers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str | None = None


def report_attempts(
    *, attempts: int, errors: int, failovers: int = 0, prompt_tokens: int = 0, completion_tokens: int = 0,
    endpoint: str | None = None,
) -> None:
    """Called by the engine once per LM call that reached it (after its last attempt, success or not)."""
    call_id = ACTIVE_CALL_ID.get()
    if call_id is None:
        return
    with _ACTIVE_LOCK:
        records = list(_ACTIVE.get(call_id, ()))
    for rec in records:
        rec.reached_server = True
        rec.attempts += attempts
        rec.errors += errors
        rec.failovers += failovers
        rec.prompt_tokens += prompt_tokens
        rec.completion_tokens += completion_tokens
        rec.endpoint = endpoint


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass
class _RoleStats:
    requests: int = 0
    cache_hits: int = 0
    server_requests: int = 0
    attempts: int = 0
    errors: int = 0
    retries: int = 0
    failovers: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)


def _price(spec: Any) -> tuple[float, float]:
    """(per 1k prompt tokens, per 1k completion tokens) from an LMConfig, a dict or a pair."""
    if spec is None:
        return 0.0, 0.0
    if isinstance(spec, Mapping):
        return float(spec.get("price_per_1k_prompt_tokens", 0.0)), float(spec.get("price_per_1k_completion_tokens", 0.0))
    if isinstance(spec, (tuple, list)):
        return float(spec[0]), float(spec[1])
    return float(getattr(spec, "price_per_1k_prompt_tokens", 0.0)), float(getattr(spec, "price_per_1k_completion_tokens", 0.0))


class UsageMeter(BaseCallback):
    """Counts the LM calls of the LMs it is given, by role ("task", "reflection"); thread-safe.

    meter = UsageMeter({"task": task_lm, "reflection": reflection_lm}, prices={"task": cfg.lm, ...})
    with dspy.context(callbacks=[*dspy.settings.callbacks, meter]): ...
    meter.snapshot() -> {"task": {"requests": ..., "cache_hits": ..., ...}, "reflection": {...}}

    LM copies (`lm.copy(...)`) are recognised through the engine they share with the original."""

    def __init__(self, lms: Mapping[str, Any] | None = None, prices: Mapping[str, Any] | None = None):
        self._lock = threading.Lock()
        self._roles_by_lm: dict[int, str] = {}
        self._roles_by_engine: dict[int, str] = {}
        self._keep: list[Any] = []  # keep registered objects alive so their ids stay unique
        self._stats: dict[str, _RoleStats] = {}
        self._prices: dict[str, tuple[float, float]] = {}
        self._open: dict[str, CallRecord] = {}
        for role, lm in (lms or {}).items():
            self.add(role, lm, (prices or {}).get(role))
        for role, spec in (prices or {}).items():
            self._prices.setdefault(role, _price(spec))

    def add(self, role: str, lm: Any, price: Any = None) -> None:
        with self._lock:
            self._roles_by_lm[id(lm)] = role
            engine = getattr(lm, "_engine_spec", None)
            if engine is not None and not isinstance(engine, str):
                self._roles_by_engine[id(engine)] = role
            self._keep.append(lm)
            self._stats.setdefault(role, _RoleStats())
            self._prices[role] = _price(price)

    def role_of(self, instance: Any) -> str | None:
        role = self._roles_by_lm.get(id(instance))
        if role is None:
            engine = getattr(instance, "_engine_spec", None)
            if engine is not None and not isinstance(engine, str):
                role = self._roles_by_engine.get(id(engine))
        return role

    # dspy callback hooks -------------------------------------------------------------------------
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        role = self.role_of(instance)
        if role is None:
            return
        rec = CallRecord(role)
        with _ACTIVE_LOCK:
            _ACTIVE.setdefault(call_id, []).append(rec)
        with self._lock:
            self._open[call_id] = rec

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            rec = self._open.pop(call_id, None)
        if rec is None:
            return
        with _ACTIVE_LOCK:
            records = _ACTIVE.get(call_id)
            if records is not None:
                records[:] = [r for r in records if r is not rec]
                if not records:
                    del _ACTIVE[call_id]
        elapsed = time.perf_counter() - rec.started
        with self._lock:
            s = self._stats.setdefault(rec.role, _RoleStats())
            s.requests += 1
            if exception is not None:
                s.failed_requests += 1
            elif not rec.reached_server:
                s.cache_hits += 1
            if rec.reached_server:
                s.server_requests += 1
                s.attempts += rec.attempts
                s.errors += rec.errors
                s.retries += max(0, rec.attempts - 1)
                s.failovers += rec.failovers
                s.prompt_tokens += rec.prompt_tokens
                s.completion_tokens += rec.completion_tokens
                s.latencies.append(elapsed)

    # reading -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, float]]:
        """{role: flat numeric fields}. Latencies are per LM call that reached a server (retries included)."""
        with self._lock:
            out = {}
            for role in sorted(set(self._stats) | set(self._prices)):
                s = self._stats.get(role, _RoleStats())
                lat = sorted(s.latencies)
                p_in, p_out = self._prices.get(role, (0.0, 0.0))
                out[role] = {
                    "requests": s.requests,
                    "cache_hits": s.cache_hits,
                    "server_requests": s.server_requests,  # calls that reached a server (answered or not)
                    "attempts": s.attempts,
                    "errors": s.errors,
                    "retries": s.retries,
                    "failovers": s.failovers,  # the router's, behind this role's calls
                    "failed_requests": s.failed_requests,
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "total_tokens": s.prompt_tokens + s.completion_tokens,
                    "latency_p50_s": round(_percentile(lat, 0.50), 6),
                    "latency_p95_s": round(_percentile(lat, 0.95), 6),
                    "latency_mean_s": round(sum(lat) / len(lat), 6) if lat else 0.0,
                    "latency_max_s": round(lat[-1], 6) if lat else 0.0,
                    "latency_sum_s": round(sum(lat), 6),
                    "cost_usd": round(s.prompt_tokens / 1000 * p_in + s.completion_tokens / 1000 * p_out, 8),
                }
            return out

    def latencies(self, role: str) -> list[float]:
        with self._lock:
            return list(self._stats.get(role, _RoleStats()).latencies)


_SUMMED = (
    "requests", "cache_hits", "server_requests", "attempts", "errors", "retries", "failovers", "failed_requests",
    "prompt_tokens", "completion_tokens", "total_tokens", "latency_sum_s", "cost_usd",
)


def merge_usage(snapshots: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Sweep totals from trial snapshots. Counts, tokens and cost add up exactly; latency_mean_s is exact,
    latency_max_s the max; p50/p95 are the server-request-weighted means of the trials' percentiles (an
    approximation: percentiles do not add up)."""
    merged: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    for snap in snapshots:
        for role, fields in snap.items():
            m = merged.setdefault(role, {k: 0 for k in _SUMMED} | {"latency_p50_s": 0.0, "latency_p95_s": 0.0, "latency_max_s": 0.0})
            for k in _SUMMED:
                m[k] += fields.get(k, 0)
            w = fields.get("server_requests", 0)
            weights[role] = weights.get(role, 0) + w
            m["latency_p50_s"] += fields.get("latency_p50_s", 0.0) * w
            m["latency_p95_s"] += fields.get("latency_p95_s", 0.0) * w
            m["latency_max_s"] = max(m["latency_max_s"], fields.get("latency_max_s", 0.0))
    for role, m in merged.items():
        w = weights.get(role, 0)
        m["latency_p50_s"] = round(m["latency_p50_s"] / w, 6) if w else 0.0
        m["latency_p95_s"] = round(m["latency_p95_s"] / w, 6) if w else 0.0
        m["latency_mean_s"] = round(m["latency_sum_s"] / w, 6) if w else 0.0
    return merged
