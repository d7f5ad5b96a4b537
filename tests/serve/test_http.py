"""python -m gepa_lab.serve http: a real Uvicorn process on 127.0.0.1 serving the tracked sweep's winner under an
alias of its own (`serving`), answering through a simulator this module starts (and stops, for the outage)."""
import asyncio
import sys
import time

import httpx
import pytest

from gepa_lab.servers.process import ChildProcess, free_port
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.tracking import registry
from tests.conftest import wait_until_answers

NAME = "gepa_lab-reviews"
LABELS = {"positive", "negative", "neutral"}
CAP = 4


@pytest.fixture(scope="module")
def lm(sweep):
    """The LM the server talks to: slow enough (50 ms) that 50 requests pile up against the server's cap."""
    sim = start_simulator(model="sim", api_key=sweep["key"], latency_ms=50, max_in_flight=64)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def server(sweep, lm, tmp_path_factory):
    registry.open_registry(sweep["registry_uri"]).set_registered_model_alias(NAME, "serving", "1")
    port = free_port()
    proc = ChildProcess([sys.executable, "-m", "gepa_lab.serve", "http", f"model=models:/{NAME}@serving",
                         f"tracking_uri={sweep['registry_uri']}", f"api_base={lm.url}", f"port={port}", "poll_s=1",
                         f"max_in_flight={CAP}"], log_path=tmp_path_factory.mktemp("http") / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base}/ready", proc, timeout=180)
        yield base, proc
    finally:
        proc.stop()


def test_request_and_response_models_come_from_the_signature(server):
    schemas = httpx.get(f"{server[0]}/openapi.json").json()["components"]["schemas"]
    request, response = schemas["GepaLabReviewsRequest"], schemas["GepaLabReviewsResponse"]
    assert request["required"] == ["review"] and request["properties"]["review"]["type"] == "string"
    assert request["additionalProperties"] is False
    assert set(response["properties"]["sentiment"]["enum"]) == LABELS and "model_version" in response["required"]
    assert httpx.get(f"{server[0]}/docs").status_code == 200


def test_fifty_concurrent_requests_answered_with_at_most_the_cap_in_flight(server, lm):
    lm.reset_stats()

    async def fire():
        async with httpx.AsyncClient(base_url=server[0], timeout=120) as client:
            return await asyncio.gather(*(client.post("/predict", json={"review": f"So happy with kettle number {i}."})
                                          for i in range(50)))

    replies = asyncio.run(fire())
    assert [r.status_code for r in replies] == [200] * 50, [r.text for r in replies if r.status_code != 200][:3]
    # the winner's instruction maps "happy" to positive
    assert {r.json()["sentiment"] for r in replies} == {"positive"} and {r.json()["model_version"] for r in replies} == {"1"}
    stats = lm.stats()
    assert stats["requests_served"] >= 50 and stats["peak_in_flight"] <= CAP, stats


def test_bad_requests_get_422_naming_the_field(server):
    base = server[0]
    for body, field in (({}, "review"), ({"review": 3}, "review"), ({"review": "ok", "stars": 5}, "stars")):
        r = httpx.post(f"{base}/predict", json=body)
        assert r.status_code == 422 and field in [d["loc"][-1] for d in r.json()["detail"]], (body, r.text)
    assert httpx.post(f"{base}/predict", content=b"not json", headers={"content-type": "application/json"}).status_code == 422


def test_metrics_count_requests_latency_and_the_lm(server):
    httpx.post(f"{server[0]}/predict", json={"review": "fine"})
    text = httpx.get(f"{server[0]}/metrics").text
    value = lambda line_start: float(next(ln for ln in text.splitlines() if ln.startswith(line_start)).split()[-1])  # noqa: E731
    assert value('gepa_lab_serve_requests_total{path="/predict",status="200"}') >= 51
    assert value('gepa_lab_serve_requests_total{path="/predict",status="422"}') >= 4
    assert value('gepa_lab_serve_request_seconds_count{path="/predict"}') >= 55
    assert 'gepa_lab_serve_request_seconds_bucket{le="0.5",path="/predict"}' in text
    assert value("gepa_lab_serve_lm_requests_total") >= 51 and value("gepa_lab_serve_lm_prompt_tokens_total") > 0


def test_an_alias_move_is_served_without_a_restart(server, sweep, lm):
    base, proc = server
    pid = proc.pid
    registry.open_registry(sweep["registry_uri"]).set_registered_model_alias(NAME, "serving", "2")
    deadline = time.time() + 60
    while httpx.get(f"{base}/ready").json().get("model_version") != "2":
        assert time.time() < deadline, proc.log_tail()
        time.sleep(0.5)
    assert proc.pid == pid and proc.alive()


def test_lm_outage_gets_503_and_the_server_recovers(server, lm, sweep):
    base, proc = server
    port = lm.port
    lm.stop()
    r = httpx.post(f"{base}/predict", json={"review": "So happy."}, timeout=120)
    assert r.status_code == 503 and "does not answer" in r.json()["detail"], r.text
    assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/ready").status_code == 503
    assert httpx.post(f"{base}/predict", json={"review": "So happy."}, timeout=120).status_code == 503
    assert proc.alive()
    back = start_simulator(port=port, model="sim", api_key=sweep["key"])
    try:
        deadline = time.time() + 30
        while (r := httpx.post(f"{base}/predict", json={"review": "So happy."}, timeout=120)).status_code != 200:
            assert time.time() < deadline, r.text
            time.sleep(0.5)
        assert r.json()["sentiment"] == "positive" and httpx.get(f"{base}/ready").status_code == 200
    finally:
        back.stop()
