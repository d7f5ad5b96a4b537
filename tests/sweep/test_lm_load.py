"""How hard a sweep drives its task LM: evaluation threads from the endpoint's total capacity, and lm_utilization
measured from a real router's in-flight integral over the trials' windows, across a router restart."""
from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from gepa_lab.lm.config import LMConfig
from gepa_lab.servers.router import RouterConfig, RouterProcess
from gepa_lab.servers.serving import Endpoint
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.sweep.lm_load import LoadProbe, eval_threads, union, utilization

pytestmark = pytest.mark.timeout(180)


def test_threads_come_from_the_total_capacity_shared_among_trials():
    cfg = LMConfig(kind="sim", model="sim", max_in_flight=4, server={"replicas": 3})
    assert cfg.capacity == 12
    assert LMConfig(kind="vllm", model="m", max_in_flight=8, api_base=["http://a:1/v1", "http://b:1/v1"]).capacity == 16
    assert LMConfig(kind="llamacpp", model="m", max_in_flight=2, server={"replicas": 3}).capacity == 2  # it starts one
    assert eval_threads(12, 6) == 6  # three times a sixth: the others' idle slots get taken
    assert eval_threads(12, 3) == eval_threads(12, 1) == 12  # never beyond the whole capacity
    assert eval_threads(12, 40) == 1 and eval_threads(1, 4) == 1


def test_utilization_is_the_in_flight_integral_over_the_union_of_the_windows():
    samples = [(float(t), 6.0 * t) for t in range(11)]  # 6 slots busy all along
    assert union([(3, 6), (2, 4), (8, 9), (7, 7)]) == [(2, 4 + 2), (8, 9)]
    got = utilization(samples, [(2, 4), (3, 6)], capacity=12)
    assert got == pytest.approx({"utilization": 0.5, "busy_slot_s": 24.0, "window_s": 4.0})
    assert utilization(samples, [(-5, 1)], capacity=6)["window_s"] == 1.0  # before sampling began: clipped
    assert utilization(samples, [(20, 30)], capacity=6) is None and utilization(samples[:1], [(0, 1)], 6) is None


def _busy_clients(router: RouterProcess, n: int, per_client: int) -> tuple[float, float]:
    body = {"model": "sim", "messages": [{"role": "user", "content": "hello"}]}
    started = time.time()

    def client() -> None:
        with httpx.Client(timeout=60, headers=router.auth) as c:
            for _ in range(per_client):
                assert c.post(router.url + "/chat/completions", json=body).status_code == 200

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started, time.time()


def test_the_probe_measures_a_full_router_and_stitches_over_its_restart():
    with start_simulator(latency_ms=300, max_in_flight=8) as sim, \
            RouterProcess(RouterConfig(replicas=[sim.url], max_in_flight=4)) as router:
        endpoint = Endpoint(LMConfig(kind="sim", model="sim", max_in_flight=4), router.url, (sim.url,), routed=True,
                            token=router.token)
        with LoadProbe([endpoint], interval_s=0.2) as probe:
            window = _busy_clients(router, 6, 6)  # 6 clients on 4 slots: two always queued, so full the whole time
            before_kill = probe.samples[-1][1]
            os.killpg(router.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not router.restarts or not router.alive():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            _busy_clients(router, 4, 4)
        full = utilization(probe.samples, [window], capacity=4)
        assert full["utilization"] >= 0.8, full
        totals = [v for _, v in probe.samples]
        assert totals == sorted(totals)  # the restarted router's count starts at 0: stitched, never a drop
        assert totals[-1] - before_kill >= 16 * 0.3  # the second round's 16 requests, 0.3 s each at the server
