"""The sweep's router in front of real simulator replicas: a per-replica in-flight cap under load from several
clients, failover when a replica is killed mid-traffic, prefix affinity, dead endpoints reported at start."""
from __future__ import annotations

import os
import signal
import threading
import time

import dspy
import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.cache import use_cache  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.router import RouterConfig, RouterProcess, rendezvous_score  # noqa: E402
from gepa_lab.servers.process import EndpointError  # noqa: E402
from gepa_lab.servers.serving import serve  # noqa: E402
from gepa_lab.servers.process import free_port  # noqa: E402
from gepa_lab.servers.simulator import start_simulator  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def _body(system: str, user: str) -> dict:
    return {"model": "sim", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def _run_clients(n_clients: int, per_client: int, router: RouterProcess, system_of=lambda i, j: f"instruction {i}-{j}") -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    url = router.url

    def client(i: int) -> None:
        with httpx.Client(timeout=120, headers=router.auth) as c:
            for j in range(per_client):
                r = c.post(url + "/chat/completions", json=_body(system_of(i, j), f"question {i}/{j}"))
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def test_router_caps_in_flight_per_replica_under_load():
    # the simulators would take 64 at once; the router must never give either more than 3
    with start_simulator(max_in_flight=64, latency_ms=60) as a, start_simulator(max_in_flight=64, latency_ms=60) as b:
        with RouterProcess(RouterConfig(replicas=[a.url, b.url], max_in_flight=3, affinity_slack=1)) as router:
            statuses = _run_clients(12, 6, router)
            stats = router.stats()
        assert statuses == [200] * 72
        for sim in (a, b):
            s = sim.stats()
            assert 1 <= s["peak_in_flight"] <= 3, s
            assert s["peak_queued"] <= 1, s  # nothing waited inside the server beyond the request being admitted
        assert a.stats()["requests_served"] + b.stats()["requests_served"] == 72
        assert stats["peak_waiting"] > 0  # the cap was actually exercised: requests queued in the router
        assert all(r["peak_in_flight"] <= 3 for r in stats["replicas"])
        assert min(r["requests"] for r in stats["replicas"]) > 0  # both replicas used


def test_router_workers_share_one_address_and_each_replica_s_slots():
    # 3 slots per replica over 2 workers: shares of 2 and 1, so together they never give a replica more than 3
    with start_simulator(max_in_flight=64, latency_ms=60) as a, start_simulator(max_in_flight=64, latency_ms=60) as b:
        with RouterProcess(RouterConfig(replicas=[a.url, b.url], max_in_flight=3, workers=2)) as router:
            statuses = _run_clients(12, 6, router)
            workers, merged = router.worker_stats(), router.stats()
            first = router.pids[1]
            os.killpg(first, signal.SIGKILL)  # a worker dies: restarted on its own socket, with its share
            deadline = time.monotonic() + 30
            while not router.restarts or not router.alive():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            router.set_replicas([a.url])
            statuses += _run_clients(12, 2, router)
            after = router.worker_stats()
        assert statuses == [200] * 96
        assert [w["max_in_flight"] for w in workers] == [2, 1] and merged["max_in_flight"] == 3
        assert all(w["requests"] > 0 for w in workers)  # the kernel spread the connections over both
        for w in workers:
            assert all(r["peak_in_flight"] <= w["max_in_flight"] for r in w["replicas"]), w
        for sim in (a, b):
            assert sim.stats()["peak_in_flight"] <= 3, sim.stats()
        assert merged["requests"] == 72 == sum(w["requests"] for w in workers)
        assert a.stats()["requests_served"] + b.stats()["requests_served"] == 96
        assert router.pids[1] != first and [w["max_in_flight"] for w in after] == [2, 1]
        assert all([r["url"] for r in w["replicas"]] == [a.url] for w in after)  # the new set reached every worker


def test_failover_when_a_replica_dies_mid_traffic(tmp_path):
    use_cache(tmp_path, mode="off")
    with start_simulator(latency_ms=80, max_in_flight=64) as a, start_simulator(latency_ms=80, max_in_flight=64) as b:
        with RouterProcess(RouterConfig(replicas=[a.url, b.url], max_in_flight=4, health_interval_s=0.5, affinity=False)) as router:
            # no client-side retries: every call must succeed through the router's failover alone
            lm = build_lm(LMConfig(kind="sim", model="sim", num_retries=0), router.url, role="task", token=router.token)
            meter = UsageMeter({"task": lm})
            errors: list[str] = []
            done = [0]

            def client(i: int) -> None:
                with dspy.context(callbacks=[meter]):
                    for j in range(12):
                        try:
                            lm(f"client {i} request {j}")
                            done[0] += 1
                        except Exception as e:  # noqa: BLE001
                            errors.append(str(e))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while a.stats()["requests_served"] < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            served_by_a = a.stats()["requests_served"]
            a.stop()  # kill replica a while requests are in flight
            for t in threads:
                t.join()
            stats = router.stats()
        assert not errors, errors[:3]
        assert done[0] == 72
        assert served_by_a >= 5
        dead, alive = stats["replicas"]
        assert dead["url"] == a.url and not dead["healthy"] and dead["last_error"]
        assert alive["healthy"] and alive["completed"] == b.stats()["requests_served"]
        assert dead["completed"] >= served_by_a and dead["completed"] + alive["completed"] == 72
        assert alive["completed"] > 72 - dead["completed"] - 1 and alive["completed"] >= 72 - served_by_a - 4
        s = meter.snapshot()["task"]
        assert s["requests"] == 72 and s["failed_requests"] == 0 and s["retries"] == 0


def test_prefix_affinity_keeps_an_instruction_on_one_replica():
    with start_simulator() as a, start_simulator() as b:
        urls = [a.url, b.url]
        # six instructions whose rendezvous-preferred replicas cover both (the ports are random, so pick them)
        texts = (f"Candidate instruction number {k}: classify the intent." for k in range(1000))
        by_replica: dict[int, list[str]] = {0: [], 1: []}
        for system in texts:
            home = max((0, 1), key=lambda i: rendezvous_score(system, urls[i]))
            if len(by_replica[home]) < 3:
                by_replica[home].append(system)
        instructions = [(home, s) for home, group in by_replica.items() for s in group]
        with RouterProcess(RouterConfig(replicas=urls, max_in_flight=8)) as router, httpx.Client(timeout=60, headers=router.auth) as c:
            for home, system in instructions:
                before = (a.stats()["requests_received"], b.stats()["requests_received"])
                for j in range(4):  # sequential: no load, so affinity decides alone
                    assert c.post(router.url + "/chat/completions", json=_body(system, f"q{j}")).status_code == 200
                after = (a.stats()["requests_received"], b.stats()["requests_received"])
                delta = (after[0] - before[0], after[1] - before[1])
                assert sorted(delta) == [0, 4], delta  # all four requests of this instruction on one replica
                assert delta.index(4) == home  # the replica rendezvous hashing prefers: spread over both
            assert sum(r["affinity_hits"] for r in router.stats()["replicas"]) == 24


def test_routed_endpoints_and_dead_replicas_reported_at_start(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with start_simulator() as a:
        with pytest.raises(EndpointError) as err:
            with serve(LMConfig(kind="vllm", model="sim", api_base=[a.url, dead])):
                pass
        assert dead in str(err.value) and a.url not in str(err.value)
        # an external single endpoint behind the router when asked (router.enabled: always)
        with serve(LMConfig(kind="openai_compatible", model="sim", api_base=a.url, router={"enabled": "always"})) as ep:
            assert ep.routed and ep.replicas == (a.url,)
            lm = build_lm(ep.cfg, ep.api_base, token=ep.token)
            assert lm("hello")[0]
            assert ep.stats()["requests"] == 2  # the start-up check (GET /models) and the call
    # several simulators started by gepa_lab itself, behind the router
    with serve(LMConfig(kind="sim", model="sim", server={"replicas": 2}), workdir=tmp_path) as ep:
        assert ep.routed and len(ep.replicas) == 2
        assert build_lm(ep.cfg, ep.api_base, token=ep.token)("hello there")[0]
        assert {r["url"] for r in ep.stats()["replicas"]} == set(ep.replicas)
    with pytest.raises(httpx.HTTPError):
        httpx.get(ep.api_base + "/models", timeout=2)


def _faulty(seed: int) -> dict:
    return dict(error_rate=0.1, rate_limit_rate=0.15, retry_after_s=0.01, hang_rate=0.05, hang_s=0.3, seed=seed)


def test_every_error_a_replica_returns_reaches_the_client_or_is_a_failover(tmp_path):
    """Accounting holds exactly behind the router: the replicas' errors (500, 429, hangs) = the errors the client saw
    + the router's failovers, which the client's lm_usage counts from each reply. With a single replica there is
    nothing to fail over to: no failover is counted."""
    use_cache(tmp_path, mode="off")
    with start_simulator(max_in_flight=16, **_faulty(1)) as a, start_simulator(max_in_flight=16, **_faulty(2)) as b:
        with RouterProcess(RouterConfig(replicas=[a.url, b.url], max_in_flight=4, affinity=False)) as router:
            lm = build_lm(LMConfig(kind="sim", model="sim", num_retries=12, retry_backoff_s=0.01), router.url,
                          role="task", token=router.token)
            meter = UsageMeter({"task": lm})

            def client(i: int) -> None:
                with dspy.context(callbacks=[meter]):
                    for j in range(15):
                        lm(f"client {i} request {j}")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            routed = router.stats()
        usage = meter.snapshot()["task"]
        errors = {kind: a.stats()["errors"][kind] + b.stats()["errors"][kind] for kind in ("500", "429", "hang")}
        assert usage["requests"] == 60 and usage["failed_requests"] == 0, usage
        assert all(errors.values()) and usage["failovers"] > 0 and usage["errors"] > 0, (errors, usage)
        assert sum(errors.values()) == usage["errors"] + usage["failovers"], (errors, usage)
        assert usage["failovers"] == routed["failovers"]
        assert usage["attempts"] + usage["failovers"] == a.stats()["requests_received"] + b.stats()["requests_received"]

    with start_simulator(rate_limit_rate=1.0) as alone:
        with RouterProcess(RouterConfig(replicas=[alone.url], max_in_flight=4, max_attempts=3)) as router:
            lm = build_lm(LMConfig(kind="sim", model="sim", num_retries=1, retry_backoff_s=0.01), router.url,
                          role="task", token=router.token)
            meter = UsageMeter({"task": lm})
            with dspy.context(callbacks=[meter]), pytest.raises(Exception, match="HTTP 429"):
                lm("always rate limited")
            assert router.stats()["failovers"] == 0
        usage = meter.snapshot()["task"]
        assert alone.stats()["errors"]["429"] == usage["errors"] == 2 and usage["failovers"] == 0
