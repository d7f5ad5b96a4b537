"""A user's two-predictor program with plain `str` outputs (the second predictor reads the first one's output),
its metric and its corpus from a YAML file, all by import path through `python -m gepa_lab.run`: GEPA, with
the simulator as both LMs, improves it on test, and the paired-bootstrap 95 % interval of the gain lies above 0.

The simulator knows nothing of this task: what it learns comes from GEPA's reflection requests, where the
metric's feedback names each field's expected value next to the inputs it went with."""
import json

from gepa_lab.results.query import open_results
from gepa_lab.results.stats import paired_bootstrap_ci
from tests.conftest import run_cli
from tests.support import two_step


def test_str_outputs_of_a_two_step_program_are_learned_with_a_gain_on_test(tmp_path, simulator):
    two_step.write(tmp_path / "gen")
    out = tmp_path / "run"
    result = run_cli(
        "gepa_lab.run", f"output_dir={out}", "tracking=none", f"hydra.searchpath=[file://{tmp_path / 'gen'}]",
        "task=classify", "corpus=two_step", "task.program=tests.support.two_step:TwoStep",
        "task.metric=tests.support.two_step:metric", "optimizer.max_metric_calls=400",
        "optimizer.reflection_minibatch_size=8", f"lm.api_base={simulator.url}", f"reflection_lm.api_base={simulator.url}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best_candidate_idx"]
    pairs = open_results(out).execute(
        """SELECT s.score, w.score FROM evaluations s JOIN evaluations w
             ON w.example_id = s.example_id AND w.split = 'test' AND w.candidate_idx = ?
           WHERE s.split = 'test' AND s.candidate_idx = 0 ORDER BY s.example_id""", [best]
    ).fetchall()
    assert len(pairs) == 120, (best, len(pairs))
    seed, winner = zip(*pairs)
    low, high = paired_bootstrap_ci(seed, winner)
    report = (summary["seed_test_score"], summary["best_test_score"], (round(low, 3), round(high, 3)))
    assert low > 0, report
    # both predictors learned values from the feedback: the team, and the urgency (whose values have a space)
    instructions = summary["best_instructions"]
    assert set(instructions) == {"route", "rate"}
    assert any(f"answer {team}." in instructions["route"] for team in two_step.TEAMS), instructions["route"]
    assert any(f'answer "{level}".' in instructions["rate"] for level in two_step.URGENCY), instructions["rate"]
