"""vllm_ray's managed replicas on a real local Ray, with the simulator as the served command and a custom
resource ("fake_gpu") standing in for the GPU: placement, readiness, a killed replica restarted and swapped
into the router while traffic continues, two killed at once replaced together while the third serves, the key
handed to each replica in memory and written nowhere, everything stopped at the end, kept when asked."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import dspy  # noqa: E402
import ray  # noqa: E402

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.cache import use_cache  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.commands import format_command, vllm_command  # noqa: E402
from gepa_lab.servers.replicas import ReplicaSet  # noqa: E402
from gepa_lab.servers.process import EndpointError  # noqa: E402
from gepa_lab.servers.serving import serve  # noqa: E402
from gepa_lab.servers.ray_cluster import local_head  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SIM_COMMAND = ["{python}", "-m", "gepa_lab.sim", "--host", "{host}", "--port", "{port}", "--model", "{model}",
               "--max-in-flight", "{max_in_flight}", "--latency-ms", "30"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    with local_head(tmp_path_factory.mktemp("ray") / "head.log", num_cpus=2, resources={"fake_gpu": 2}) as address:
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}})
        yield
        ray.shutdown()


def _cfg(**server) -> LMConfig:
    return LMConfig(kind="vllm_ray", model="sim", max_in_flight=4, num_retries=0, server={
        "command": SIM_COMMAND, "replicas": 2, "num_gpus": 0, "resources": {"fake_gpu": 1}, "host": "127.0.0.1",
        "startup_timeout_s": 120, "health_interval_s": 0.5, **server})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_default_vllm_command_has_the_configured_flags():
    cfg = LMConfig(kind="vllm_ray", model="Qwen/Qwen2.5-7B-Instruct", max_in_flight=32,
                   server={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85, "num_gpus": 2})
    argv = format_command(vllm_command(cfg), {"model": cfg.model, "model_path": cfg.model, "host": "0.0.0.0", "port": 8001,
                                              "tensor_parallel_size": 2, "max_model_len": None,
                                              "gpu_memory_utilization": 0.85, "max_in_flight": 32})
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    joined = " ".join(argv)
    assert "--tensor-parallel-size 2" in joined and "--gpu-memory-utilization 0.85" in joined
    assert "--enable-prefix-caching" in argv and "--port 8001" in joined and "--max-num-seqs 32" in joined
    assert "--max-model-len" not in argv  # unset: left to vLLM


def test_managed_replicas_restart_a_dead_one_while_traffic_flows(local_ray, tmp_path):
    use_cache(tmp_path, mode="off")
    cfg = _cfg()
    with serve(cfg, workdir=tmp_path) as ep:
        rs = ep.replica_set
        assert ep.routed and len(ep.replicas) == 2
        infos = rs.replica_info()
        assert ray.available_resources().get("fake_gpu", 0) == 0  # each replica actor holds one "GPU"
        pids = [i["pid"] for i in infos]
        assert all(_pid_alive(p) for p in pids)

        # client-side retries on: while a replica is down, a request may land in the gap before the router
        # notices; the router's failover and the client's retries must absorb it
        lm = build_lm(cfg.model_copy(update={"num_retries": 5, "retry_backoff_s": 0.2}), ep.api_base, role="task", token=ep.token)
        meter = UsageMeter({"task": lm})
        errors: list[str] = []

        def client(i: int) -> None:
            with dspy.context(callbacks=[meter]):
                for j in range(25):
                    try:
                        lm(f"client {i} call {j}")
                    except Exception as e:  # noqa: BLE001
                        errors.append(str(e))
                    time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)  # replica 0's server dies
        deadline = time.monotonic() + 120
        while not any(e["event"] == "restarted" for e in rs.events) and time.monotonic() < deadline:
            time.sleep(0.2)
        for t in threads:
            t.join()
        restarted = [e for e in rs.events if e["event"] == "restarted"]
        assert restarted and restarted[0]["replica"] == 0, rs.events
        assert any(e["event"] == "process_exited" for e in rs.events)
        new_infos = rs.replica_info()
        assert new_infos[0]["pid"] != pids[0] and _pid_alive(new_infos[0]["pid"])
        assert new_infos[1]["pid"] == pids[1]
        # the router was told: it routes to the new replica 0 and the surviving replica 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            urls = {r["url"] for r in ep.stats()["replicas"]}
            if urls == set(rs.urls):
                break
            time.sleep(0.2)
        assert urls == set(rs.urls) and new_infos[0]["url"].endswith("/v1") and len(urls) == 2
        with dspy.context(callbacks=[meter]):
            assert lm("after the restart")[0]
        assert not errors, errors[:3]
        assert meter.snapshot()["task"]["requests"] == 101

        # a killed replica *actor* takes its server with it and is replaced too
        actor1_pid = new_infos[1]["pid"]
        ray.kill(rs.actors[1])
        deadline = time.monotonic() + 120
        while sum(e["event"] == "restarted" for e in rs.events) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(e["event"] == "restarted" for e in rs.events) == 2, rs.events
        assert not _pid_alive(actor1_pid) or _wait_dead(actor1_pid)
        final_pids = [i["pid"] for i in rs.replica_info()]
    # all stopped at the end: servers gone, GPU resources released
    assert all(not _pid_alive(p) or _wait_dead(p) for p in final_pids)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("fake_gpu", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("fake_gpu", 0) == 2


def _wait_dead(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_keep_running_replicas_are_reused_then_stopped(local_ray, tmp_path):
    cfg = _cfg(replicas=1, keep_running=True)
    with serve(cfg, workdir=tmp_path / "a") as ep:
        first = ep.replica_set.replica_info()[0]
    assert _pid_alive(first["pid"])  # left running
    with serve(cfg, workdir=tmp_path / "b") as ep:
        rs = ep.replica_set
        assert rs.replica_info()[0]["pid"] == first["pid"]  # reused, not started again
        assert build_lm(cfg, ep.api_base, token=ep.token)("still there?")[0]
        rs.stop(force=True)
    assert _wait_dead(first["pid"])


def test_impossible_placement_is_reported_before_anything_starts(local_ray, tmp_path):
    with pytest.raises(EndpointError, match=r"fake_gpu: needs 3, cluster has 2"):
        with serve(_cfg(replicas=3), workdir=tmp_path):
            pass
    bad = _cfg(replicas=1, command=["{python}", "-c", "import sys; print('no such model'); sys.exit(3)"])
    with pytest.raises(EndpointError) as err:
        with serve(bad, workdir=tmp_path):
            pass
    assert "exited with code 3" in str(err.value) and "no such model" in str(err.value)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("fake_gpu", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("fake_gpu", 0) == 2


def test_replica_set_used_directly(local_ray, tmp_path):
    rs = ReplicaSet(_cfg(replicas=1), workdir=tmp_path)
    try:
        urls = rs.start()
        assert len(urls) == 1 and urls[0].startswith("http://127.0.0.1:")
        info = rs.replica_info()[0]
        assert info["node_ip"] == ray.util.get_node_ip_address() and info["alive"]
        assert (tmp_path / "replicas").is_dir() and any((tmp_path / "replicas").glob("*.log"))
    finally:
        rs.stop()
    assert _wait_dead(info["pid"])


@pytest.fixture
def replica_key(local_ray, monkeypatch):
    """A canary key set in this (the driver's) environment only, after the Ray node started: its workers lack it."""
    key = f"sk-canary-{os.urandom(8).hex()}"
    monkeypatch.setenv(KEY_ENV, key)
    assert ray.get(_worker_env.remote(KEY_ENV)) is None  # what a node without the key looks like
    return key


KEY_ENV = "GEPA_LAB_REPLICA_KEY"


@ray.remote(num_cpus=0)
def _worker_env(name: str) -> str | None:
    return os.environ.get(name)


def test_two_replicas_killed_at_once_come_back_together_while_the_third_serves(replica_key, tmp_path):
    """Replacements run concurrently and never pause the other replicas' health checks; the key reaches every
    replica (restarted ones too) in memory, and lands in no file of the run or of Ray's temp dir."""
    from gepa_lab.servers.process import check_endpoint
    from tests.sweep.canary import files_containing

    use_cache(tmp_path, mode="off")
    cfg = LMConfig(kind="vllm_ray", model="sim", max_in_flight=4, api_key_env=KEY_ENV, server={
        "command": [*SIM_COMMAND, "--api-key-env", KEY_ENV], "replicas": 3, "host": "127.0.0.1",
        "startup_timeout_s": 120, "health_interval_s": 0.5})
    with serve(cfg, workdir=tmp_path / "lm") as ep:
        rs = ep.replica_set
        pids = [i["pid"] for i in rs.replica_info()]
        for url in rs.urls:  # every replica requires the key it got in memory
            check_endpoint(url, api_key=replica_key)
            with pytest.raises(EndpointError, match="refuses the API key"):
                check_endpoint(url)
        lm = build_lm(cfg.model_copy(update={"num_retries": 5, "retry_backoff_s": 0.2}), ep.api_base, role="task", token=ep.token)
        meter = UsageMeter({"task": lm})
        errors: list[str] = []
        stop = threading.Event()

        def client(i: int) -> None:
            with dspy.context(callbacks=[meter]):
                j = 0
                while not stop.is_set():
                    try:
                        lm(f"client {i} call {j}")
                    except Exception as e:  # noqa: BLE001
                        errors.append(str(e))
                    j += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        third_before = next(r for r in ep.stats()["replicas"] if r["url"] == rs.urls[2])["completed"]
        os.kill(pids[0], signal.SIGKILL)
        os.kill(pids[1], signal.SIGKILL)
        checks_of_third: set[float] = set()  # the third replica's health checks while both others are being replaced
        deadline = time.monotonic() + 180
        while sum(e["event"] == "restarted" for e in rs.events) < 2 and time.monotonic() < deadline:
            if sum(e["event"] == "restarting" for e in rs.events) == 2 and not any(e["event"] == "restarted" for e in rs.events):
                checks_of_third.add(rs.last_check[2])
            time.sleep(0.05)
        third_during = next(r for r in ep.stats()["replicas"] if r["url"] == rs.urls[2])["completed"]
        stop.set()
        for t in threads:
            t.join()
        events = {(e["replica"], e["event"]): e["time"] for e in rs.events}
        assert {(0, "restarted"), (1, "restarted")} <= events.keys(), rs.events
        # both replacements were under way at once: each began before the other one ended
        assert events[(0, "restarting")] < events[(1, "restarted")] and events[(1, "restarting")] < events[(0, "restarted")]
        assert len(checks_of_third) >= 2, checks_of_third  # replica 2 kept being checked meanwhile
        assert third_during > third_before  # ...and kept serving
        assert not any(e["replica"] == 2 for e in rs.events)
        new = rs.replica_info()
        assert new[0]["pid"] not in pids and new[1]["pid"] not in pids and new[2]["pid"] == pids[2]
        for url in rs.urls:
            check_endpoint(url, api_key=replica_key)
            with pytest.raises(EndpointError, match="refuses the API key"):
                check_endpoint(url)
        assert not errors, errors[:3]
        assert meter.snapshot()["task"]["failed_requests"] == 0
    ray_temp = ray._private.worker.global_worker.node.get_temp_dir_path()
    assert not files_containing(tmp_path, replica_key)
    assert not files_containing(Path(ray_temp), replica_key)
