"""`python -m gepa_lab.bench --quick` as a smoke test: it runs every case at its smallest size (Ray sweeps included)
and writes bench.json and the page. Every figure must be present, finite and in its range, and the requests the
benchmark counts must equal what the simulators' /stats say they served. No test asserts a time."""
import json

import pytest

from tests.conftest import run_cli

from gepa_lab.bench.figures import FIGURES


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = run_cli("gepa_lab.bench", "--quick", "--out", str(out), timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "bench.json").read_text()), (out / "benchmarks.md").read_text(), done.stdout


@pytest.mark.slow
def test_every_figure_is_present_finite_and_in_range(quick):
    report, _, _ = quick
    bad = [f"{f.key}={report.get(f.key)!r} (range {f.range})" for f in FIGURES if not f.in_range(report.get(f.key))]
    assert not bad, bad
    meta = report["meta"]
    assert meta["quick"] and meta["machine"]["cores"] >= 1 and meta["git_commit"]


@pytest.mark.slow
def test_the_requests_counted_are_those_the_simulators_served(quick):
    report, _, _ = quick
    cases = report["cases"]
    client = cases["client"]
    assert client["trial_server_requests"] == client["trial_simulator_served"] > 0
    for n, point in [*cases["router"]["points"].items(), *cases["router"]["workers"].items()]:
        assert point["errors"] == 0, (n, point)
        assert point["requests_sent"] == point["simulator_served"] > 0, (n, point)
    sweep = cases["saturation"]["sweep"]
    assert sweep["requests_served"] == sweep["requests_counted_by_trials"] > 0
    assert cases["saturation"]["naive"]["requests_served"] > 0
    cache = cases["saturation"]["cache"]
    assert cache["identical_scores"] is True
    assert 0 < cache["requests_off"] - cache["requests_on"] <= cache["lm_cache"]["hits"]
    for n, run in cases["overhead"].items():
        assert run["completed"] == run["trials"] == int(n)
    assert cases["demo"]["trials_completed"] >= 1
    llama = cases["llamacpp"]
    assert llama["lm_calls_per_prediction_after"] == 1 < llama["lm_calls_per_prediction_before"]


@pytest.mark.slow
def test_the_page_and_the_printed_table_show_and_define_every_figure(quick):
    report, page, stdout = quick
    for f in FIGURES:
        assert f"`{f.key}`" in stdout and f"- `{f.key}`" in page, f.key
    assert report["meta"]["git_commit"] in page and report["meta"]["date"] in page
