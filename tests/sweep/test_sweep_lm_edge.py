"""Two 4-trial sweeps against two simulator replicas behind the sweep's router: with the rollout cache the
replicas serve measurably fewer requests than without it, the trials score exactly the same, and the router
never lets a replica hold more than lm.max_in_flight requests, however hard the trials push."""
import json

import pytest

from gepa_lab.servers.simulator import start_simulator
from gepa_lab.results import query
from tests.conftest import run_cli
from tests.support.corpus import TINY_CORPUS

CAP = 3  # lm.max_in_flight: what the router allows per replica


def sweep_against_two_replicas(out, cache: str) -> tuple[dict, list[dict]]:
    # the simulators would take 64 at once: only the router's cap keeps them at CAP
    with start_simulator(max_in_flight=64, latency_ms=5) as a, start_simulator(max_in_flight=64, latency_ms=5) as b:
        result = run_cli(
            "gepa_lab.sweep", "sweep=demo", f"output_dir={out}", f"cache={cache}", "tracking=none",
            # both roles on the same replicas with the same cap share one router, so the cap covers all traffic
            f"lm.api_base=[{a.url},{b.url}]", f"reflection_lm.api_base=[{a.url},{b.url}]",
            f"lm.max_in_flight={CAP}", f"reflection_lm.max_in_flight={CAP}",
            "eval.num_threads=6",  # 2 trials x 6 threads: twice what the two replicas may take at once
            # short trials: the seed program's evaluations, which every trial repeats, are most of their calls
            "sweep.space.optimizer.reflection_minibatch_size={grid:[4,8]}", "optimizer.max_metric_calls=60",
            "optimizer.reflection_minibatch_size=8",  # the base config must pay for an iteration too
            *TINY_CORPUS,
            timeout=1200,
        )
        stats = [a.stats(), b.stats()]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads((out / "summary.json").read_text()), stats


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_edge")
    return {cache: (root / cache, *sweep_against_two_replicas(root / cache, cache)) for cache in ("disk", "off")}


def scores_by_params(out) -> dict:
    rows = query.connect([out]).execute(
        "SELECT config_json, seed_val_score, best_val_score, best_test_score, metric_calls FROM trials").fetchall()
    return {json.dumps(json.loads(c)["params"], sort_keys=True): tuple(r) for c, *r in rows}


def test_cache_saves_requests_and_changes_no_score(sweeps):
    (out_cached, summary_cached, stats_cached), (out_plain, summary_plain, stats_plain) = sweeps["disk"], sweeps["off"]
    served_cached = sum(s["requests_served"] for s in stats_cached)
    served_plain = sum(s["requests_served"] for s in stats_plain)
    print(f"requests served: {served_cached} with the cache, {served_plain} without ({served_cached / served_plain:.2f}x)")
    assert served_cached < 0.8 * served_plain
    assert summary_cached["lm_cache"]["requests_saved"] > 0 and not summary_plain.get("lm_cache")
    assert summary_cached["trials"]["completed"] == summary_plain["trials"]["completed"] == 4
    assert scores_by_params(out_cached) == scores_by_params(out_plain)


@pytest.mark.parametrize("cache", ["disk", "off"])
def test_router_keeps_each_replica_within_its_cap(sweeps, cache):
    _, _, stats = sweeps[cache]
    for replica in stats:
        assert 1 <= replica["peak_in_flight"] <= CAP, replica
    assert all(s["requests_served"] > 0 for s in stats)  # both replicas took traffic
