"""optimizer.proposal_sampling is sweepable like any key: a Ray Tune grid over it runs, each trial proposes as many
candidates per iteration as its sampling says, and the results tables report which took effect."""
import json

from gepa_lab.results import query
from tests.conftest import run_cli


def test_a_sweep_over_the_sampling_strategy_runs_and_reports_which_took_effect(tmp_path, simulator):
    out = tmp_path / "sampling"
    result = run_cli(
        "gepa_lab.sweep", "sweep=demo", "task=classify", f"output_dir={out}", "tracking=none",
        f"lm.api_base={simulator.url}", f"reflection_lm.api_base={simulator.url}",
        "sweep.space.optimizer.seed={grid:[0]}", "~sweep.space.optimizer.reflection_minibatch_size",
        "+sweep.space.optimizer.proposal_sampling={grid:[single,'independent(2)']}",
        "optimizer.reflection_minibatch_size=3", "optimizer.skip_perfect_score=false", "optimizer.use_merge=false",
        "optimizer.max_metric_calls=60",  # example_csv: 6 val examples; two proposals' iteration costs up to 24
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = query.connect([out]).execute(
        "SELECT config_json, status, iterations, proposals, gepa_stop_reason, metric_calls FROM trials").fetchall()
    by_sampling = {json.loads(c)["params"]["optimizer.proposal_sampling"]: rest for c, *rest in rows}
    assert set(by_sampling) == {"single", "independent(2)"}, rows
    for sampling, n in (("single", 1), ("independent(2)", 2)):
        status, iterations, proposals, reason, calls = by_sampling[sampling]
        assert status == "completed" and reason == "max_metric_calls" and calls <= 60, by_sampling
        assert iterations >= 2 and proposals == n * iterations, (sampling, iterations, proposals)
