"""Capacity, latency, faults and the API key of the LM simulator (real server processes, real HTTP)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from gepa_lab.servers.process import free_port
from gepa_lab.servers.simulator import SimulatorStartError, start_simulator

REPO = Path(__file__).resolve().parents[2]


def body(i: int = 0, query: str = "my card has not arrived") -> dict:
    system = (
        "Your input fields are:\n1. `query` (str):\nYour output fields are:\n1. `intent` (Literal['card_arrival', "
        "'cancel_transfer']):\nAll interactions will be structured in the following way, with the appropriate "
        "values filled in.\n\n[[ ## query ## ]]\n{query}\n\n[[ ## intent ## ]]\n{intent}\n\n[[ ## completed ## ]]\n"
        "In adhering to this structure, your objective is: \n        Classify the query."
    )
    return {
        "model": "sim",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"[[ ## query ## ]]\n{query} #{i}\n\nRespond with the corresponding output fields."},
        ],
    }


async def fire(url: str, n: int, timeout: float = 30.0) -> list[int]:
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=200)) as client:
        resps = await asyncio.gather(*(client.post(url, json=body(i)) for i in range(n)))
    return [r.status_code for r in resps]


def test_capacity_limits_in_flight_and_queues_the_rest():
    k, latency = 4, 0.25
    with start_simulator(max_in_flight=k, latency_ms=latency * 1000) as sim:
        t0 = time.monotonic()
        codes = asyncio.run(fire(sim.url + "/chat/completions", 3 * k))
        elapsed = time.monotonic() - t0
        stats = sim.stats()
    assert codes == [200] * (3 * k)
    assert stats["peak_in_flight"] == k  # never above, and reached
    assert stats["peak_queued"] >= k
    assert elapsed >= 3 * latency * 0.95  # three waves of k
    assert 0 < stats["mean_in_flight"] <= k
    assert stats["mean_in_flight"] > k * 0.7  # busy time was spent mostly at full capacity
    assert stats["busy_seconds"] >= 3 * latency * 0.9
    assert stats["requests_served"] == 3 * k


def test_many_concurrent_connections():
    with start_simulator(max_in_flight=64, latency_ms=100) as sim:
        t0 = time.monotonic()
        codes = asyncio.run(fire(sim.url + "/chat/completions", 60))
        elapsed = time.monotonic() - t0
        stats = sim.stats()
    assert codes == [200] * 60
    assert stats["peak_in_flight"] >= 30
    assert elapsed < 5


def test_latency_fixed_and_per_token():
    with start_simulator(latency_ms=300) as sim:
        t0 = time.monotonic()
        r = httpx.post(sim.url + "/chat/completions", json=body(), timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - t0 >= 0.3
    with start_simulator(per_token_ms=50) as sim:
        t0 = time.monotonic()
        r = httpx.post(sim.url + "/chat/completions", json=body(), timeout=10)
        tokens = r.json()["usage"]["completion_tokens"]
        assert tokens > 5
        assert time.monotonic() - t0 >= tokens * 0.05


def statuses(sim, indices) -> list[int]:
    with httpx.Client(timeout=10) as client:
        return [client.post(sim.url + "/chat/completions", json=body(i)).status_code for i in indices]


def test_http_500_faults_are_deterministic_and_retries_can_succeed():
    with start_simulator(error_rate=0.5, seed=7) as sim:
        codes = statuses(sim, range(24))
        stats = sim.stats()
        assert set(codes) == {200, 500}
        assert stats["errors"]["500"] == codes.count(500)
        assert stats["requests_served"] == codes.count(200)
        # retrying one failed body eventually succeeds (the draw includes a per-body counter)
        failed = codes.index(500)
        assert 200 in statuses(sim, [failed] * 12)
        # same seed after a reset (counters cleared) -> same faults for the same request sequence
        sim.reset_stats()
        assert statuses(sim, range(24)) == codes
    with start_simulator(error_rate=0.5, seed=8) as sim:
        assert statuses(sim, range(24)) != codes


def test_http_429_with_retry_after():
    with start_simulator(rate_limit_rate=1.0, retry_after_s=3) as sim:
        assert statuses(sim, range(3)) == [429, 429, 429]
        r = httpx.post(sim.url + "/chat/completions", json=body(), timeout=10)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "3"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert sim.stats()["errors"]["429"] == 4


def test_hang_outlasts_the_client_timeout():
    with start_simulator(hang_rate=1.0, hang_s=5) as sim:
        t0 = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            httpx.post(sim.url + "/chat/completions", json=body(), timeout=0.5)
        assert time.monotonic() - t0 < 3
        assert sim.stats()["errors"]["hang"] == 1
        assert httpx.get(sim.base + "/health", timeout=2).status_code == 200  # the server itself is fine


def test_api_key_required_and_never_exposed(tmp_path):
    key = "sk-sim-test-" + "9f3c1a7e"
    log = tmp_path / "sim.log"
    with start_simulator(api_key=key, log_path=log) as sim:
        url = sim.url + "/chat/completions"
        assert httpx.post(url, json=body(), timeout=10).status_code == 401
        bad = httpx.post(url, json=body(), headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert bad.status_code == 401
        ok = httpx.post(url, json=body(), headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200
        assert httpx.get(sim.url + "/models", timeout=10).status_code == 401
        assert httpx.get(sim.base + "/health", timeout=10).status_code == 200
        stats = sim.stats()
        assert stats["errors"]["401"] == 3
        assert key not in str(stats)
        cmdline = Path(f"/proc/{sim.pid}/cmdline").read_bytes().decode(errors="replace")
        assert key not in cmdline and "--api-key-env" in cmdline
    assert key not in log.read_text()


def test_cli_api_key_env_and_bad_arguments():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NO_SUCH_VAR_FOR_SIM", None)
    r = subprocess.run(
        [sys.executable, "-m", "gepa_lab.sim", "--port", str(port), "--api-key-env", "NO_SUCH_VAR_FOR_SIM"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2 and "NO_SUCH_VAR_FOR_SIM" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "gepa_lab.sim", "--port", str(port), "--error-rate", "1.5"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2
    r = subprocess.run(
        [sys.executable, "-m", "gepa_lab.sim", "--port", str(port), "--max-in-flight", "0"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 2 and "--max-in-flight" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_options_are_refused_and_a_start_failure_reports_the_log_tail():
    with pytest.raises(ValidationError, match="max_in_flight"):  # validated by the options model, before any start
        start_simulator(port=free_port(), max_in_flight=0, startup_timeout=10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SimulatorStartError) as exc:
            start_simulator(port=taken.getsockname()[1], startup_timeout=10)
    assert "exited with code" in str(exc.value) and "already in use" in str(exc.value).lower()  # the child's log tail


def test_stop_kills_the_process_group():
    sim = start_simulator()
    pid = sim.pid
    sim.stop()
    assert not sim.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_api_key_env_is_read_from_this_process_environment(monkeypatch):
    key = "sk-sim-env-" + "51d2"
    monkeypatch.setenv("GEPA_LAB_TEST_SIM_KEY", key)
    with start_simulator(api_key_env="GEPA_LAB_TEST_SIM_KEY") as sim:
        url = sim.url + "/chat/completions"
        assert httpx.post(url, json=body(), timeout=10).status_code == 401
        ok = httpx.post(url, json=body(), headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200
        assert key not in Path(f"/proc/{sim.pid}/cmdline").read_bytes().decode(errors="replace")
    monkeypatch.delenv("GEPA_LAB_TEST_SIM_KEY")
    with pytest.raises(SimulatorStartError):
        start_simulator(api_key_env="GEPA_LAB_TEST_SIM_KEY")
