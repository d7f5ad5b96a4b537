"""The ceilings of each hop between a trial and the LM servers (issue 16, item 2).

- the client: CPU seconds per LM call of a trial (dspy's Predict + our edge: engine, accounting, rollout-cache lookup),
  of dspy with our engine alone (no accounting, no cache), and of a bare httpx client posting the same bodies;
- the router: requests per second it forwards to 1, 2 and 4 simulator replicas, against the same load sent
  to the replicas directly, and the router process's CPU per request;
- the simulator: its own rate and CPU per request.
CPU time is read per process (time.process_time here, /proc through psutil for the servers): on a shared machine
it is a steadier figure than a rate, which the other processes' load bends.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
import time
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import psutil

from gepa_lab.lm.config import LMConfig, RouterOptions

TINY_BODY = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}).encode()


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def task_program(overrides: tuple[str, ...] = ("task=banking77",)):
    """A task's seed program and its val inputs (the first input field), as a run with `overrides` would build them."""
    from gepa_lab.compose import compose
    from gepa_lab.config.schema import RunConfig
    from gepa_lab.corpus import ensure_prepared, read_manifest, read_split
    from gepa_lab.tasks.task import build_program

    cfg = RunConfig.model_validate(compose("run", [*overrides, "output_dir=/tmp/gepa-lab-bench-unused"]))
    corpus = ensure_prepared(cfg.corpus, quiet=True)
    manifest = read_manifest(corpus)
    field = manifest["inputs"][0]
    return build_program(cfg.task, manifest), field, [row[field] for row in read_split(corpus, "val")]


def client_cpu(calls: int) -> dict[str, Any]:
    """CPU milliseconds per LM call, one thread, against a simulator with no latency (every call a distinct request,
    so none is answered from the cache)."""
    import dspy
    import httpx

    from gepa_lab.lm.accounting import UsageMeter
    from gepa_lab.lm.cache import use_cache
    from gepa_lab.lm.endpoint import build_lm
    from gepa_lab.servers.simulator import start_simulator

    program, field, queries = task_program()
    inputs = [f"{queries[i % len(queries)]} (request {i})" for i in range(calls)]
    cfg = LMConfig(kind="sim", model="sim")
    out: dict[str, Any] = {"calls": calls}
    with start_simulator(max_in_flight=64, latency_ms=0) as sim, tempfile.TemporaryDirectory() as tmp:
        def timed(run, label: str) -> None:
            run(inputs[:5])  # warm: imports, connection, first parse
            cpu, wall = time.process_time(), time.perf_counter()
            run(inputs)
            out[f"{label}_cpu_ms"] = round(1000 * (time.process_time() - cpu) / calls, 3)
            out[f"{label}_wall_ms"] = round(1000 * (time.perf_counter() - wall) / calls, 3)

        meter_lm = build_lm(cfg, sim.url, role="task")
        meter = UsageMeter({"task": meter_lm})

        def trial(batch):  # what a trial does per call: dspy + our engine + accounting + the rollout cache
            with dspy.context(lm=meter_lm, callbacks=[meter]):
                for text in batch:
                    program(**{field: text})

        def dspy_alone(batch):  # dspy + our engine, no accounting, no cache
            lm = build_lm(cfg, sim.url, role="task")
            lm.cache = False
            with dspy.context(lm=lm):
                for text in batch:
                    program(**{field: text})

        use_cache(tmp, mode="disk")
        served = sim.stats()["requests_served"]
        timed(trial, "trial")
        # cross-check: the requests the trial's accounting says reached a server are those the simulator served
        out["trial_server_requests"] = meter.snapshot()["task"]["server_requests"]
        out["trial_simulator_served"] = sim.stats()["requests_served"] - served
        use_cache(tmp, mode="off")
        timed(dspy_alone, "dspy")
        # the bare client posts the bodies dspy sent, captured once (capturing is not timed)
        bodies: list[bytes] = []
        lm = build_lm(cfg, sim.url, role="task")
        lm.cache = False
        engine = lm._engine_spec
        send = engine.complete
        engine.complete = lambda request: (bodies.append(json.dumps(engine.body(request)).encode()), send(request))[1]
        with dspy.context(lm=lm):
            for text in inputs:
                program(**{field: text})
        with httpx.Client() as client:
            def bare(batch):
                for body in (bodies if len(batch) == len(inputs) else bodies[: len(batch)]):
                    client.post(f"{sim.url}/chat/completions", content=body,
                                headers={"Content-Type": "application/json"}).raise_for_status()

            timed(bare, "httpx")
    out["client_cpu_ms_per_call"] = out["trial_cpu_ms"]
    out["client_calls_per_s_per_core"] = round(1000 / out["trial_cpu_ms"], 1) if out["trial_cpu_ms"] else None
    out["httpx_calls_per_s_per_core"] = round(1000 / out["httpx_cpu_ms"], 1) if out["httpx_cpu_ms"] else None
    return out


async def _load(urls: list[str], seconds: float, concurrency: int, headers: dict[str, str]) -> tuple[int, int, float]:
    """Closed-loop load: `concurrency` keep-alive connections, spread evenly over `urls`, each posting TINY_BODY back
    to back for `seconds`; (answered 200, other answers and errors, elapsed). Each request's bytes are built once and
    a reply read as status line, Content-Length and body: a load generator much cheaper per request than an HTTP
    client library (about a third of aiohttp's CPU), so this machine's cores go to the processes measured."""
    ok = errors = 0
    stop = time.perf_counter() + seconds

    async def worker(url: str):
        nonlocal ok, errors
        u = urlsplit(url)
        fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n{fields}Content-Length: {len(TINY_BODY)}\r\n\r\n"
                   .encode() + TINY_BODY)
        while time.perf_counter() < stop:
            try:
                reader, writer = await asyncio.open_connection(u.hostname, u.port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.perf_counter() < stop:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.split(b"\r\n")
                    length = next(int(line.split(b":", 1)[1]) for line in lines if line[:15].lower() == b"content-length:")
                    await reader.readexactly(length)
                    if lines[0].split(b" ", 2)[1] == b"200":
                        ok += 1
                    else:
                        errors += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, StopIteration, ValueError):
                errors += 1
            finally:
                writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(urls[i % len(urls)]) for i in range(concurrency)))
    return ok, errors, time.perf_counter() - started


def _measure(urls: list[str], seconds: float, concurrency: int, pids: list[int], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Rate and CPU per request of the processes `pids` (warm-up requests counted in `sent`, not in the rate)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    warm_ok, warm_errors, _ = asyncio.run(_load(urls, min(0.5, seconds), concurrency, headers))  # connections, first requests
    cpu = _cpu_s(pids)
    ok, errors, elapsed = asyncio.run(_load(urls, seconds, concurrency, headers))
    return {"rps": round(ok / elapsed, 1), "errors": warm_errors + errors, "sent": warm_ok + ok,
            "cpu_ms_per_request": round(1000 * (_cpu_s(pids) - cpu) / max(1, ok), 4)}


def router_rates(replica_counts: tuple[int, ...], seconds: float, concurrency: int = 64,
                 workers: tuple[int, ...] = (2,)) -> dict[str, Any]:
    """Requests/s through the router at each replica count, and sent straight to the same replicas (the connections
    spread evenly over them); the router's and the simulators' CPU per request; then the router with several
    `workers` at the largest replica count. Every request is counted against what the simulators' /stats say they
    served."""
    from gepa_lab.servers.router import RouterConfig, RouterProcess
    from gepa_lab.servers.simulator import start_simulator

    out: dict[str, Any] = {"seconds_per_point": seconds, "concurrency": concurrency, "points": {}, "workers": {}}
    with ExitStack() as stack:
        sims = [stack.enter_context(start_simulator(max_in_flight=concurrency, latency_ms=0)) for _ in range(max(replica_counts))]

        def routed(group, n_workers: int) -> dict[str, Any]:
            for s in group:
                s.reset_stats()
            config = RouterConfig(**RouterOptions(workers=n_workers).model_dump(), replicas=[s.url for s in group],
                                  max_in_flight=concurrency)
            with RouterProcess(config, supervise=False) as router:
                rates = _measure([f"{router.url}/chat/completions"], seconds, concurrency, router.pids, router.auth)
                counted = router.stats()["requests"]
            return {"router_rps": rates["rps"], "router_cpu_ms_per_request": rates["cpu_ms_per_request"],
                    "errors": rates["errors"], "requests_sent": rates["sent"], "router_counted": counted,
                    "simulator_served": sum(s.stats()["requests_served"] for s in group)}

        for n in replica_counts:
            group = sims[:n]
            for s in group:
                s.reset_stats()
            direct = _measure([f"{s.url}/chat/completions" for s in group], seconds, concurrency, [s.pid for s in group])
            served = sum(s.stats()["requests_served"] for s in group)
            point = routed(group, 1)
            out["points"][n] = {"direct_rps": direct["rps"], "router_rps": point["router_rps"],
                                "router_cpu_ms_per_request": point["router_cpu_ms_per_request"],
                                "sim_cpu_ms_per_request": direct["cpu_ms_per_request"],
                                "errors": direct["errors"] + point["errors"],
                                "requests_sent": direct["sent"] + point["requests_sent"],
                                "router_counted": point["router_counted"],
                                "simulator_served": served + point["simulator_served"]}
        for w in workers:
            out["workers"][w] = {"replicas": max(replica_counts), **routed(sims, w)}
    pts = out["points"]
    out["router_max_rps"] = max(p["router_rps"] for p in [*pts.values(), *out["workers"].values()])
    out["router_cpu_ms_per_request"] = min(p["router_cpu_ms_per_request"] for p in pts.values())
    out["router_cpu_ceiling_rps"] = round(1000 / out["router_cpu_ms_per_request"], 1)  # one core to itself
    out["simulator_rps"] = pts[min(pts)]["direct_rps"]
    out["simulator_cpu_ms_per_request"] = pts[min(pts)]["sim_cpu_ms_per_request"]
    return out
