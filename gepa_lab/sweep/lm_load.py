"""How hard a sweep drives its task LM: evaluation threads from the endpoint's capacity, and lm_utilization.

Capacity = the sum of the task LM's replicas' max_in_flight (LMConfig.capacity). Each of `concurrent` trials gets
three times its share of it as evaluation threads (at most the whole capacity): GEPA's trials alternate between
evaluating and reflecting (and preparing their next evaluation), so at any moment some are not evaluating, and the
others' extra threads take the slots they leave; with up to three trials, one alone can fill the endpoint. The
router caps every replica at its max_in_flight and queues the excess, so the servers are never flooded and a
request waits at most about two service times there. The reflection LM is sized on its own: GEPA sends it one
request at a time per trial.

lm_utilization = (integral of the requests in flight at the task LM's servers over W) / (capacity x |W|), where W
is the union of the trials' windows: from each trial's trial_started event to its trial_finished (or
trial_failed) event, the started_at / ended_at of the results' trials table, i.e. while it evaluates the seed,
runs the GEPA compile and scores the winner. The in-flight integral is the router's own (`in_flight_seconds` in
/router/stats: exact, counted at every request's start and end), sampled by the driver every half second; a
window's integral is interpolated between samples, and a router restart (its integral starts again at 0) is
stitched over. No router in front of the task LM (router.enabled: never): not measured (None).
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from gepa_lab.servers.serving import Endpoint

OVERSUBSCRIPTION = 3  # evaluation threads per trial, in shares of the capacity (see above)


def eval_threads(capacity: int, concurrent: int) -> int:
    """Evaluation threads for each of `concurrent` trials sharing an endpoint that takes `capacity` requests at once."""
    return max(1, min(capacity, math.ceil(OVERSUBSCRIPTION * capacity / max(1, concurrent))))


class LoadProbe:
    """Samples the summed in-flight integral (slot-seconds) of the routed endpoints every interval_s, in a thread,
    while the `with` block runs (and once more at its end)."""

    def __init__(self, endpoints: Sequence["Endpoint"], interval_s: float = 0.5):
        self.endpoints = [e for e in endpoints if e.routed]
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (time.time(), cumulative in-flight seconds over all endpoints)
        self._last = [0.0] * len(self.endpoints)  # each router's last reading
        self.last_stats: list[dict[str, Any]] = [{} for _ in self.endpoints]  # each router's last /router/stats
        self._carried = [0.0] * len(self.endpoints)  # what earlier lives of a restarted router had counted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        for i, endpoint in enumerate(self.endpoints):
            try:
                stats = endpoint.stats(timeout=5)
                value = float(stats["in_flight_seconds"])
            except Exception:  # noqa: BLE001 - a router being restarted: keep its last reading
                continue
            self.last_stats[i] = stats
            if value < self._last[i]:  # restarted: its count began again at 0
                self._carried[i] += self._last[i]
            self._last[i] = value
        self.samples.append((time.time(), sum(self._carried) + sum(self._last)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "LoadProbe":
        if self.endpoints:
            self._sample()
            self._thread = threading.Thread(target=self._run, name="lm-load-probe", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()


def union(windows: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(w for w in windows if w[1] > w[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def utilization(samples: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]],
                capacity: int) -> dict[str, float] | None:
    """{utilization, busy_slot_s, window_s} over the union of `windows`, clipped to the sampled span (a resumed
    sweep's earlier trials ran before this driver sampled anything); None when nothing overlaps."""
    if len(samples) < 2 or capacity < 1:
        return None
    times, totals = np.array([t for t, _ in samples]), np.array([v for _, v in samples])
    clipped = [(max(a, times[0]), min(b, times[-1])) for a, b in union(windows)]
    clipped = [(a, b) for a, b in clipped if b > a]
    span = sum(b - a for a, b in clipped)
    if span <= 0:
        return None
    busy = sum(float(np.interp(b, times, totals) - np.interp(a, times, totals)) for a, b in clipped)
    return {"utilization": busy / (capacity * span), "busy_slot_s": busy, "window_s": span}


def trial_windows(con) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of every trial that started and ended, from the results' trials table."""
    rows = con.sql("SELECT epoch(started_at), epoch(ended_at) FROM trials "
                   "WHERE started_at IS NOT NULL AND ended_at IS NOT NULL").fetchall()
    return [(float(a), float(b)) for a, b in rows]


def lm_load(probe: LoadProbe, con, *, capacity: int, threads: dict[str, int]) -> dict[str, Any]:
    """The summary's lm_utilization (None: not measured) and lm_load (what it was computed from)."""
    measured = utilization(probe.samples, trial_windows(con), capacity) if probe.endpoints else None
    load: dict[str, Any] = {"capacity": capacity, "eval_threads": sorted(set(threads.values()))}
    if probe.endpoints:  # how the routers spread the load: each replica's peak, and the most requests they held back
        load["replicas"] = [{k: r[k] for k in ("url", "peak_in_flight", "requests", "completed", "errors")}
                            for stats in probe.last_stats for r in stats.get("replicas", [])]
        load["peak_waiting"] = max((stats.get("peak_waiting", 0) for stats in probe.last_stats), default=0)
    if measured is None:
        load["not_measured"] = ("no router in front of the task LM (router.enabled: never)" if not probe.endpoints
                                else "no trial ran while the driver sampled the router")
        return {"lm_utilization": None, "lm_load": load}
    load.update(busy_slot_s=round(measured["busy_slot_s"], 3), window_s=round(measured["window_s"], 3))
    return {"lm_utilization": round(measured["utilization"], 4), "lm_load": load}


def utilization_line(summary: dict[str, Any]) -> str:
    """One line for the sweep's final output."""
    load = summary.get("lm_load") or {}
    if summary.get("lm_utilization") is None:
        return f"task LM utilization: not measured ({load.get('not_measured', 'no data')})"
    return (f"task LM utilization: {summary['lm_utilization']:.2f} of {load['capacity']} slots over "
            f"{load['window_s']:.1f} s of trial time (evaluation threads per trial: "
            f"{', '.join(map(str, load['eval_threads']))})")
