"""The sweep's rollout cache: identical requests answered once across processes (disk cache, real Redis),
the trial's sampling seed kept in the key, and GEPA results identical with and without the cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import dspy
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.cache import cache_stats, shared_cache_stats, use_cache  # noqa: E402
from gepa_lab.servers.redis import RedisServer, cache_service  # noqa: E402
from gepa_lab.lm.config import LMCacheConfig, LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.simulator import start_simulator  # noqa: E402

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import json, os, sys
    from typing import Literal
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy
    from gepa_lab.lm.accounting import UsageMeter
    from gepa_lab.lm.cache import cache_stats, use_cache
    from gepa_lab.lm.config import LMConfig
    from gepa_lab.lm.endpoint import build_lm

    class Intent(dspy.Signature):
        """Classify the customer message."""
        text: str = dspy.InputField()
        label: Literal["card_lost", "refund", "balance"] = dspy.OutputField()

    def run(opts, url):
        use_cache(None, **opts)
        lm = build_lm(LMConfig(kind="sim", model="sim"), url, role="task")
        meter = UsageMeter({"task": lm})
        texts = [f"customer message number {i}: my card is gone" for i in range(10)]
        with dspy.context(lm=lm, callbacks=[meter]):
            outs = [dspy.Predict(Intent)(text=t).label for t in texts]
        return {"outs": outs, "usage": meter.snapshot()["task"], "cache": cache_stats()}

    if __name__ == "__main__":
        url, all_opts = sys.argv[1], json.loads(sys.argv[2])
        print(json.dumps([run(opts, url) for opts in all_opts]))
''')


def test_cache_shared_by_two_processes_disk_and_redis(tmp_path):
    """Process 1 (this one) fills a disk cache and a Redis cache; process 2 asks the same and sends nothing."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    sys.path.insert(0, str(tmp_path))
    try:
        import worker  # the same code in this process
    finally:
        sys.path.remove(str(tmp_path))
    with start_simulator() as sim, RedisServer(workdir=tmp_path / "redis") as redis_server:
        stores = [{"mode": "disk", "dir": str(tmp_path / "lm_cache")},
                  {"mode": "redis", "redis_url": redis_server.url, "namespace": "t1"}]
        first = [worker.run(opts, sim.url) for opts in stores]
        assert sim.stats()["requests_served"] == 20
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, str(script), sim.url, json.dumps(stores)], capture_output=True, text=True,
                              env=env, timeout=180, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        second = json.loads(proc.stdout.strip().splitlines()[-1])
        assert sim.stats()["requests_served"] == 20  # process 2 sent nothing: all answered by the shared caches
        for opts, a, b in zip(stores, first, second):
            assert a["outs"] == b["outs"]
            assert a["usage"]["cache_hits"] == 0 and a["usage"]["server_requests"] == 10
            assert b["usage"]["cache_hits"] == 10 and b["usage"]["server_requests"] == 0
            assert b["cache"]["shared_hits"] == 10 and b["cache"]["memory_hits"] == 0
            shared = shared_cache_stats(None, **opts)
            assert shared["hits"] == 10 and shared["shared_hits"] == 10 and shared["puts"] == 10 and shared["entries"] == 10

        # two trials starting together (as a sweep's do): each request is still sent once, the other process
        # waits for the answer (single-flight claims in the shared store) instead of sending it too
        fresh = [{"mode": "disk", "dir": str(tmp_path / "lm_cache2")},
                 {"mode": "redis", "redis_url": redis_server.url, "namespace": "t2"}]
        procs = [subprocess.Popen([sys.executable, str(script), sim.url, json.dumps(fresh)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
        assert sim.stats()["requests_served"] == 40  # 20 more: 10 per store, not 10 per store and process
        for i in range(2):
            a, b = outs[0][i], outs[1][i]
            assert a["outs"] == b["outs"] == first[i]["outs"]
            assert a["usage"]["server_requests"] + b["usage"]["server_requests"] == 10
            assert a["usage"]["cache_hits"] + b["usage"]["cache_hits"] == 10
        pid = redis_server.proc.pid
    assert redis_server.proc.poll() is not None  # stopped with the context
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_cache_service_starts_and_stops_redis(tmp_path):
    with cache_service(LMCacheConfig(mode="auto", start_redis=True), tmp_path / "sweep1") as kwargs:
        assert kwargs["mode"] == "redis" and urlsplit(kwargs["redis_url"]).hostname == "127.0.0.1"
        assert kwargs["namespace"] == "sweep1"
        cache = use_cache(tmp_path / "trial", **kwargs)
        assert dspy.cache is cache and cache.description.startswith("redis:")
        url = kwargs["redis_url"]
    import redis

    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    with cache_service({"mode": "disk"}, tmp_path / "sweep2") as kwargs:
        assert kwargs == {"mode": "disk", "memory": True, "dir": str((tmp_path / "sweep2" / ".dspy_cache").resolve()), "size_limit_gb": 30.0}
    with pytest.raises(ConnectionError, match="does not answer"):
        with cache_service({"mode": "redis", "redis_url": "redis://127.0.0.1:1/0"}, tmp_path):
            pass


def test_the_started_redis_needs_its_password_which_is_nowhere_on_disk_or_command_line(tmp_path):
    """The sweep's Redis binds an address other nodes reach: only clients given its password (in memory, in the
    kwargs every trial gets) are answered; the password is not on its command line, in its log or any file it left."""
    import redis

    with cache_service(LMCacheConfig(mode="redis", start_redis=True), tmp_path / "sweep") as kwargs:
        url = urlsplit(kwargs["redis_url"])
        password = url.password
        assert password and len(password) >= 32
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=url.hostname, port=url.port, socket_connect_timeout=2).set("k", "v")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host=url.hostname, port=url.port, password="guess", socket_connect_timeout=2).ping()
        client = redis.Redis.from_url(kwargs["redis_url"])
        pid = client.info("server")["process_id"]
        client.close()
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        cache = use_cache(tmp_path / "trial", **kwargs)
        assert password not in cache.description and "***" in cache.description
    for f in (tmp_path / "sweep").rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes(), f


def test_a_failed_call_hands_its_claim_over(tmp_path):
    """A process whose request fails drops its single-flight claim, so another one sends it at once."""
    use_cache(tmp_path, mode="disk", dir=str(tmp_path / "c"))
    with start_simulator(error_rate=1.0) as bad, start_simulator() as good:
        failing = build_lm(LMConfig(kind="sim", model="sim", num_retries=0), bad.url)
        with pytest.raises(Exception, match="HTTP 500"):
            failing("claimed then failed")
        assert not dspy.cache._claims  # released, not left to expire
        t = time.monotonic()
        ok = build_lm(LMConfig(kind="sim", model="sim", num_retries=0), good.url)
        assert ok("claimed then failed")[0]  # same request: not blocked by a stale claim
        assert time.monotonic() - t < 5 and good.stats()["requests_served"] == 1


def test_sampling_seed_is_part_of_the_key(tmp_path):
    use_cache(tmp_path, mode="disk", dir=str(tmp_path / "c"))
    with start_simulator() as sim:
        cfg = LMConfig(kind="sim", model="sim", temperature=0.8)
        a1, a2, b = (build_lm(cfg, sim.url, seed=s) for s in (1, 1, 2))
        a1("same prompt")
        a2("same prompt")  # same seed: a cache hit
        b("same prompt")  # another seed: another sample
        assert sim.stats()["requests_served"] == 2
        greedy = build_lm(LMConfig(kind="sim", model="sim", temperature=0.0), sim.url, seed=5)
        greedy2 = build_lm(LMConfig(kind="sim", model="sim", temperature=0.0), sim.url, seed=6)
        greedy("greedy prompt")
        greedy2("greedy prompt")  # temperature 0: the seed does not matter, one request
        assert sim.stats()["requests_served"] == 3


# --- GEPA results with and without the cache --------------------------------------------------------

class Intent(dspy.Signature):
    """Classify the customer message."""

    text: str = dspy.InputField()
    label: Literal["card_lost", "refund", "balance"] = dspy.OutputField()


DATA = [
    ("I lost my card on the bus", "card_lost"), ("my card was stolen", "card_lost"), ("cannot find my card", "card_lost"),
    ("I want a refund for this order", "refund"), ("please return my money", "refund"), ("refund the double charge", "refund"),
    ("how much money do I have", "balance"), ("what is my balance", "balance"), ("show my account balance", "balance"),
    ("card missing since monday", "card_lost"), ("money back please", "refund"), ("balance check", "balance"),
]


def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    ok = float(getattr(pred, "label", None) == gold.label)
    return dspy.Prediction(score=ok, feedback="correct" if ok else f"expected {gold.label}, got {getattr(pred, 'label', None)}")


def _compile(url: str) -> tuple[dict, dict]:
    examples = [dspy.Example(text=t, label=y).with_inputs("text") for t, y in DATA]
    task_lm = build_lm(LMConfig(kind="sim", model="sim"), url, role="task")
    refl_lm = build_lm(LMConfig(kind="sim", model="sim", temperature=0.7), url, role="reflection", seed=11)
    meter = UsageMeter({"task": task_lm, "reflection": refl_lm})
    gepa = dspy.GEPA(metric=metric, max_metric_calls=60, reflection_lm=refl_lm, reflection_minibatch_size=3,
                     num_threads=4, seed=0, track_stats=True, use_merge=False)
    with dspy.context(lm=task_lm, callbacks=[*dspy.settings.callbacks, meter]):
        best = gepa.compile(dspy.Predict(Intent), trainset=examples[:6], valset=examples[6:])
    r = best.detailed_results
    result = {
        "val_scores": r.val_aggregate_scores,
        "candidates": [{n: p.signature.instructions for n, p in c.named_predictors()} for c in r.candidates],
        "best_idx": r.best_idx,
        "subscores": r.val_subscores,
    }
    return result, meter.snapshot()


def test_gepa_results_identical_with_and_without_the_cache(tmp_path):
    with start_simulator() as sim:
        use_cache(tmp_path, mode="off")
        plain, plain_usage = _compile(sim.url)
        served_plain = sim.stats()["requests_served"]
        assert plain_usage["task"]["cache_hits"] == 0 and plain_usage["reflection"]["requests"] >= 1

        use_cache(tmp_path, mode="disk", dir=str(tmp_path / "shared"))
        cold, cold_usage = _compile(sim.url)
        served_cold = sim.stats()["requests_served"] - served_plain

        # a fresh cache object without a memory layer: every hit comes from the shared store (like a new trial)
        use_cache(tmp_path, mode="disk", dir=str(tmp_path / "shared"), memory=False)
        warm, warm_usage = _compile(sim.url)
        served_warm = sim.stats()["requests_served"] - served_plain - served_cold

    assert plain == cold == warm
    assert len(plain["candidates"]) >= 2  # GEPA proposed and accepted something
    assert served_cold <= served_plain
    assert served_warm == 0  # the repeat was answered entirely by the shared cache
    for role in ("task", "reflection"):
        assert warm_usage[role]["requests"] == cold_usage[role]["requests"] == plain_usage[role]["requests"]
        assert warm_usage[role]["cache_hits"] == warm_usage[role]["requests"]
    assert cache_stats()["shared_hits"] > 0


def test_disk_store_claims_expire_and_are_released_only_once_the_answer_is_shared(tmp_path):
    from gepa_lab.lm.cache import DiskStore

    store, other = DiskStore(str(tmp_path), 10**9), DiskStore(str(tmp_path), 10**9)  # two processes' views
    assert store.claim("k", ttl_s=20) and not other.claim("k", ttl_s=20)
    os.utime(store.claims_dir / "k", (time.time() - 30, time.time() - 30))  # its owner died 30 s ago
    assert other.claim("k", ttl_s=20)  # expired: taken over
    other.set("k", {"answer": 1})
    other.release_claim("k")
    other.drain()
    assert other.cache.get("k") == {"answer": 1}  # committed to the shared file ...
    assert not (store.claims_dir / "k").exists()  # ... and only then the claim is gone
    assert store.get("k") == {"answer": 1} and "k" in store
