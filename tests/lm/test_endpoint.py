"""The LM edge: errors naming the endpoint, retries honouring Retry-After, timeouts, no retry on 4xx,
what goes on the wire, keys never stored. Real simulator processes over real HTTP."""
from __future__ import annotations

import json
import os
import pickle
import threading
import time

import dspy
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import LMUnavailable, build_lm, lost_endpoint, raise_if_unavailable  # noqa: E402
from gepa_lab.servers.process import EndpointError, check_endpoint  # noqa: E402
from gepa_lab.servers.serving import Endpoint, serve, serve_all  # noqa: E402
from gepa_lab.servers.process import free_port  # noqa: E402
from gepa_lab.servers.simulator import start_simulator  # noqa: E402
from tests.support.recording_server import RecordingServer  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_cache():
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    yield


def _cfg(**kw) -> LMConfig:
    return LMConfig(kind="sim", model="sim", **kw)


def test_an_endpoint_pickles_to_its_address_without_what_supervises_it():
    """Trials get the sweep's endpoints pickled; a vllm_ray endpoint's ReplicaSet (threads, locks, actors) stays behind."""
    ep = Endpoint(_cfg(), "http://127.0.0.1:1/v1", ("http://127.0.0.1:2/v1",), routed=True, replica_set=threading.Lock())
    copy = pickle.loads(pickle.dumps(ep))
    assert copy == ep and copy.replica_set is None


def test_dead_url_error_names_the_endpoint():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    lm = build_lm(_cfg(num_retries=2, retry_backoff_s=0.01, timeout_s=5), dead)
    t = time.monotonic()
    with pytest.raises(Exception) as err:
        lm("hello")
    msg = str(err.value)
    assert dead in msg and "model sim" in msg and "gave up after 3 attempts" in msg, msg
    assert time.monotonic() - t < 10
    with pytest.raises(EndpointError, match=dead.replace(".", r"\.")):
        check_endpoint(dead, timeout_s=2)
    cfg = LMConfig(kind="openai_compatible", model="m", api_base=[dead])
    with pytest.raises(EndpointError) as err:
        with serve(cfg):
            pass
    assert dead in str(err.value)


def test_an_endpoint_gone_for_good_ends_the_trial_in_one_line_naming_it():
    """A call that still fails after its retries marks the endpoint lost: later calls, of copies too, fail at once
    without being sent (nothing is counted as sent), and the trial's check names the role and the endpoint."""
    with start_simulator() as sim, start_simulator() as other:
        lm = build_lm(_cfg(num_retries=2, retry_backoff_s=0.01, timeout_s=5), sim.url, role="task")
        healthy = build_lm(_cfg(), other.url, role="reflection")
        copy = lm.copy(temperature=0.5)
        meter = UsageMeter({"task": lm})
        with dspy.context(callbacks=[meter]):
            assert lm("before")[0]
            assert lost_endpoint({"task": lm}) is None
            sim.stop()
            with pytest.raises(Exception, match="gave up after 3 attempts"):
                lm("after")
            started = time.monotonic()
            with pytest.raises(Exception, match="not sent again"):
                copy("one more")
            assert time.monotonic() - started < 1
        assert healthy("still fine")[0] and lost_endpoint({"reflection": healthy}) is None
        with pytest.raises(LMUnavailable) as err:
            raise_if_unavailable({"reflection": healthy, "task": lm})
        line = str(err.value)
        assert line.startswith("the task LM stopped answering") and sim.url in line and "\n" not in line, line
        assert err.value.exit_code == 4
        usage = meter.snapshot()["task"]
        assert usage["requests"] == usage["failed_requests"] + 1 == 3
        assert usage["server_requests"] == 2 and usage["attempts"] == 1 + 3


def test_retries_honour_retry_after():
    # about half the requests get 429 + Retry-After: 0.4 s; the engine's own backoff would be ~10 ms
    with start_simulator(rate_limit_rate=0.5, retry_after_s=0.4, seed=3) as sim:
        lm = build_lm(_cfg(num_retries=10, retry_backoff_s=0.01), sim.url, role="task")
        meter = UsageMeter({"task": lm})
        with dspy.context(callbacks=[meter]):
            outs = [lm(f"question number {i}") for i in range(8)]
        assert all(o and o[0] for o in outs)
        stats = sim.stats()
        n429 = stats["errors"]["429"]
        assert n429 >= 2, stats
        engine = lm._engine_spec
        # every 429 was followed by a wait of exactly Retry-After, not the 10 ms backoff
        assert engine.stats["waited_s"] == pytest.approx(0.4 * n429, rel=0.01)
        snap = meter.snapshot()["task"]
        assert snap["retries"] == n429 and snap["errors"] == n429
        assert snap["attempts"] == stats["requests_received"] == 8 + n429
        assert snap["failed_requests"] == 0


def test_async_calls_retry_the_same_way():
    """lm.acall goes through the async engine, which shares the sync engine's retry policy and accounting."""
    import asyncio

    with start_simulator(rate_limit_rate=0.5, retry_after_s=0.2, seed=3) as sim:
        lm = build_lm(_cfg(num_retries=10, retry_backoff_s=0.01), sim.url, role="task")

        async def ask_all():
            return await asyncio.gather(*(lm.acall(f"async question {i}") for i in range(6)))

        outs = asyncio.run(ask_all())
        assert all(o and o[0] for o in outs)
        n429 = sim.stats()["errors"]["429"]
        assert n429 >= 1, (sim.stats(), lm._engine_spec.stats)
        engine = lm._engine_spec
        assert engine.stats["attempts"] == 6 + n429 and engine.stats["errors"] == n429
        assert engine.stats["waited_s"] == pytest.approx(0.2 * n429, rel=0.01)


def test_timeouts_are_retried_and_counted():
    with start_simulator(hang_rate=0.4, hang_s=30, seed=1) as sim:
        lm = build_lm(_cfg(num_retries=8, timeout_s=0.6, retry_backoff_s=0.01), sim.url, role="task")
        meter = UsageMeter({"task": lm})
        with dspy.context(callbacks=[meter]):
            outs = [lm(f"tell me {i}") for i in range(6)]
        assert all(outs)
        hangs = sim.stats()["errors"]["hang"]
        assert hangs >= 1
        snap = meter.snapshot()["task"]
        assert snap["errors"] == hangs and snap["retries"] == hangs
        assert snap["latency_max_s"] >= 0.6  # the call that hit a hang waited for its timeout


def test_client_errors_are_not_retried_and_name_the_endpoint(monkeypatch):
    monkeypatch.setenv("GEPA_LAB_TEST_KEY", "right-key")
    with start_simulator(api_key="right-key") as sim:
        monkeypatch.setenv("GEPA_LAB_TEST_KEY", "wrong-key")
        lm = build_lm(_cfg(api_key_env="GEPA_LAB_TEST_KEY", num_retries=5), sim.url)
        with pytest.raises(Exception) as err:
            lm("hi")
        assert sim.url in str(err.value) and "401" in str(err.value) and "after 1 attempt" in str(err.value)
        assert sim.stats()["requests_received"] == 1
        assert lost_endpoint({"task": lm}) is None  # a refusal is not an outage: the LM stays usable
        monkeypatch.setenv("GEPA_LAB_TEST_KEY", "right-key")
        assert lm("hi")[0]
        # serve() checks the key up front too
        monkeypatch.setenv("GEPA_LAB_TEST_KEY", "wrong-key")
        with pytest.raises(EndpointError, match="refuses the API key"):
            with serve(LMConfig(kind="openai_compatible", model="sim", api_base=sim.url, api_key_env="GEPA_LAB_TEST_KEY")):
                pass


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("GEPA_LAB_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="GEPA_LAB_NO_SUCH_KEY"):
        build_lm(_cfg(api_key_env="GEPA_LAB_NO_SUCH_KEY"), "http://127.0.0.1:1/v1")


def test_wire_body_extra_body_seed_and_key(monkeypatch):
    monkeypatch.setenv("GEPA_LAB_TEST_KEY", "sekret-123")
    with RecordingServer() as server:
        url = server.url
        cfg = LMConfig(kind="openai_compatible", model="m1", api_base=url, api_key_env="GEPA_LAB_TEST_KEY",
                       temperature=0.7, max_tokens=77, extra_body={"grammar": "root ::= \"ok\"", "top_k": 5})
        lm = build_lm(cfg, url, seed=42)
        assert lm("hello") == ["ok"]
        sent = server.chats()[-1]
        body = sent["body"]
        assert body["model"] == "m1" and body["max_tokens"] == 77 and body["temperature"] == 0.7
        assert body["grammar"] == 'root ::= "ok"' and body["top_k"] == 5 and body["seed"] == 42
        assert "metadata" not in body and "rollout_id" not in body and "max_completion_tokens" not in body
        assert sent["auth"] == "Bearer sekret-123"
        # the key is read from the environment at call time and never stored with the LM
        blob = pickle.dumps(lm)
        assert b"sekret-123" not in blob
        assert "sekret-123" not in json.dumps(lm.dump_state(), default=str)
        again = pickle.loads(blob)
        assert again("hello again") == ["ok"]


def test_serve_all_shares_servers_between_client_side_variants():
    a = _cfg(temperature=0.0)
    b = _cfg(temperature=0.9, max_tokens=50)
    c = _cfg(sim={"latency_ms": 1.0})
    with serve_all({"task": a, "reflection": b, "other": c}) as eps:
        assert eps["task"].api_base == eps["reflection"].api_base
        assert eps["other"].api_base != eps["task"].api_base
        assert eps["reflection"].cfg == b
        for ep in eps.values():
            check_endpoint(ep.api_base)
    with pytest.raises(EndpointError):
        check_endpoint(eps["task"].api_base, timeout_s=2)  # stopped on exit
