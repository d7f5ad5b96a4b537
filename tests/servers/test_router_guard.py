"""The router's guard and its supervision, over real HTTP: every endpoint but /health wants the run's token (a request
without it gets 401 and changes nothing), the LM's key goes upstream in its place and the token never does, and a
killed router is back on the same address within seconds while no call of its clients is lost. Also its slot choice:
a request never waits while a replica has a free slot, and affinity only orders the free ones."""
from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import random
import signal
import time

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.lm.accounting import UsageMeter  # noqa: E402
from gepa_lab.lm.cache import use_cache  # noqa: E402
from gepa_lab.lm.config import LMConfig  # noqa: E402
from gepa_lab.lm.endpoint import build_lm  # noqa: E402
from gepa_lab.servers.router import RouterConfig, RouterProcess, RouterState, rendezvous_score  # noqa: E402
from gepa_lab.servers.serving import serve  # noqa: E402
from gepa_lab.servers.simulator import start_simulator  # noqa: E402
from tests.support.lm_callers import Callers  # noqa: E402
from tests.support.recording_server import RecordingServer  # noqa: E402

pytestmark = pytest.mark.timeout(240)

KEY_ENV = "GEPA_LAB_TEST_UPSTREAM_KEY"


@pytest.fixture
def recording_replica():
    with RecordingServer() as server:
        yield server


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_without_the_token_every_endpoint_but_health_says_401_and_changes_nothing(recording_replica, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-upstream-key")
    with RouterProcess(RouterConfig(replicas=[recording_replica.url], max_in_flight=2, upstream_key_env=KEY_ENV)) as router:
        before = router.stats()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-upstream-key"},
                        {"Authorization": "Bearer sk-upstream-key"}):  # not even the LM's key opens it
            with httpx.Client(base_url=router.base, headers=headers, timeout=10) as c:
                for method, path, body in (("GET", "/router/stats", None), ("POST", "/router/replicas", {"replicas": ["http://127.0.0.1:9/v1"]}),
                                           ("POST", "/v1/chat/completions", CHAT), ("GET", "/v1/models", None), ("GET", "/nowhere", None)):
                    r = c.request(method, path, json=body)
                    assert r.status_code == 401, (headers, path, r.status_code)
                    assert "token" in r.json()["error"]["message"]
                assert c.get("/health").status_code == 200  # open: it says only whether a replica is up
        after = router.stats()
        assert [r["url"] for r in after["replicas"]] == [recording_replica.url]  # the replica list was not changed
        assert after["requests"] == before["requests"] == 0 and after["replicas"][0]["requests"] == 0
        assert recording_replica.chats() == []  # nothing went upstream

        # with the token: the request goes through, and upstream it carries the LM's key, never the token
        r = httpx.post(router.url + "/chat/completions", json=CHAT, headers=router.auth, timeout=10)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
        assert httpx.post(router.base + "/router/replicas", json={"replicas": [recording_replica.url]}, headers=router.auth,
                          timeout=10).status_code == 200
    assert {r["auth"] for r in recording_replica.requests} == {"Bearer sk-upstream-key"}  # chat and health checks alike
    assert len(recording_replica.chats()) == 1


def test_the_router_refuses_to_start_without_a_token(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GEPA_LAB_ROUTER_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "gepa_lab.servers.router", "--replicas", "http://127.0.0.1:9/v1",
                        "--max-in-flight", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "GEPA_LAB_ROUTER_TOKEN" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_trial_needs_only_the_token_and_keeps_it_out_of_pickles(recording_replica, monkeypatch):
    """A keyed LM is routed (router.enabled auto); the client holds the token and not the key."""
    monkeypatch.setenv(KEY_ENV, "sk-upstream-key")
    cfg = LMConfig(kind="openai_compatible", model="m", api_base=recording_replica.url, api_key_env=KEY_ENV)
    with serve(cfg) as ep:
        assert ep.routed and ep.token and ep.token not in repr(ep)
        trial_side = pickle.loads(pickle.dumps(ep))  # what a trial on another node gets
        assert trial_side.token == ep.token
        monkeypatch.delenv(KEY_ENV)  # the trial's node has no key
        lm = build_lm(cfg, trial_side.api_base, token=trial_side.token)
        lm.cache = False
        assert lm("hello") == ["ok"]
        assert copy.deepcopy(lm)("hello again") == ["ok"]  # a copy in the same process still reaches the router
        for blob in (pickle.dumps(lm), json.dumps(lm.dump_state(), default=str).encode()):
            assert ep.token.encode() not in blob
        with pytest.raises(Exception, match=KEY_ENV):  # unpickled elsewhere, it has neither token nor key
            pickle.loads(pickle.dumps(lm))("hello")
    chats = recording_replica.chats()
    assert len(chats) == 2 and {c["auth"] for c in chats} == {"Bearer sk-upstream-key"}


def test_a_killed_router_is_back_on_its_address_within_seconds_and_no_call_is_lost(tmp_path):
    use_cache(tmp_path, mode="off")
    with start_simulator(latency_ms=150, max_in_flight=64) as a, start_simulator(latency_ms=150, max_in_flight=64) as b:
        with RouterProcess(RouterConfig(replicas=[a.url, b.url], max_in_flight=4, health_interval_s=0.5)) as router:
            router.set_replicas([a.url])  # the list a restart must keep: the latest, not the initial one
            port, first_pid = router.port, router.pid
            lm = build_lm(LMConfig(kind="sim", model="sim"), router.url, role="task", token=router.token)  # default retries
            meter = UsageMeter({"task": lm})
            callers = Callers(lm, meter, n=6, calls=15)
            deadline = time.monotonic() + 60
            while a.stats()["requests_served"] < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(first_pid, signal.SIGKILL)  # the router dies with requests in flight
            killed = time.monotonic()
            while True:
                try:
                    stats = router.stats(timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() - killed < 30, router.log_path.read_text()[-2000:]
                    time.sleep(0.05)
            back_after = time.monotonic() - killed
            errors = callers.join()
            final = router.stats()
        assert not errors, errors[:3]
        assert meter.snapshot()["task"]["requests"] == 90 and meter.snapshot()["task"]["failed_requests"] == 0
        assert len(router.restarts) == 1 and router.pid != first_pid and router.port == port
        assert back_after < 10, back_after
        assert [r["url"] for r in stats["replicas"]] == [a.url]
        assert final["replicas"][0]["completed"] > 0 and b.stats()["requests_served"] == 0


# the slot choice ------------------------------------------------------------------------------------------------------


def _state(n: int, cap: int, slack: int = 4) -> RouterState:
    state = RouterState(RouterConfig(replicas=[f"http://r{i}:1/v1" for i in range(n)], max_in_flight=cap, affinity_slack=slack))
    state.set_replicas(state.config.replicas)
    return state


def test_a_request_never_waits_while_a_slot_is_free_and_affinity_orders_only_free_replicas():
    async def scenario():
        state = _state(3, 4)
        urls = list(state.replicas)
        key = "one instruction for everyone"
        order = sorted(urls, key=lambda u: rendezvous_score(key, u), reverse=True)
        # the key's second choice has served more than its third: least-outstanding alone would pick the third
        state.replicas[order[1]].requests = 100
        held = [await asyncio.wait_for(state.acquire(key, set()), 1) for _ in range(4)]
        assert {r.url for r in held} == {order[0]}  # its own replica until it is full...
        fallback = await asyncio.wait_for(state.acquire(key, set()), 1)
        assert fallback.url == order[1]  # ...then the next in its rendezvous order, not any idle one
        held.append(fallback)
        held += [await asyncio.wait_for(state.acquire(key, set()), 1) for _ in range(7)]  # all 12 slots, nobody waited
        assert state.peak_waiting == 1 and all(r.in_flight == 4 for r in state.replicas.values())
        waiter = asyncio.ensure_future(state.acquire(key, set()))
        await asyncio.sleep(0.05)
        assert not waiter.done() and state.waiting == 1
        freed = next(r for r in held if r.url == order[2])
        await state.release(freed)
        assert (await asyncio.wait_for(waiter, 1)).url == order[2]  # the freed slot, though not the key's replica

        # random traffic: whenever a request waits, every replica is full
        rng = random.Random(7)
        state = _state(3, 2, slack=1)
        busy: list = []
        waiting: list = []
        for _ in range(400):
            if busy and rng.random() < 0.45:
                await state.release(busy.pop(rng.randrange(len(busy))))
            else:
                waiting.append(asyncio.ensure_future(state.acquire(f"key {rng.randrange(5)}", set())))
            for _ in range(10):  # let woken waiters run (each takes a few loop turns to get the lock back)
                await asyncio.sleep(0)
            busy += [w.result() for w in waiting if w.done()]
            waiting = [w for w in waiting if not w.done()]
            if state.waiting:
                assert all(r.in_flight == 2 for r in state.replicas.values()), state.public()
        while busy or waiting:  # drain: every waiter gets its slot once the others are released
            if busy:
                await state.release(busy.pop())
            for _ in range(10):
                await asyncio.sleep(0)
            busy += [w.result() for w in waiting if w.done()]
            waiting = [w for w in waiting if not w.done()]
        assert state.in_flight == 0 and state.waiting == 0

    asyncio.run(scenario())


def test_in_flight_seconds_integrates_the_slots_in_use():
    async def scenario():
        state = _state(2, 4)
        a = await state.acquire(None, set())
        b = await state.acquire(None, set())
        await asyncio.sleep(0.3)
        await state.release(a)
        await asyncio.sleep(0.3)
        await state.release(b)
        return state.public()

    stats = asyncio.run(scenario())
    assert stats["capacity"] == 8 and stats["in_flight"] == 0
    assert 0.85 <= stats["in_flight_seconds"] <= 1.2  # 2 x 0.3 + 1 x 0.3
