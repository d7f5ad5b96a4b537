"""Promotion across sweeps: the paired-bootstrap guard, python -m gepa_lab.promote (rule, --force, --rollback), and
the alias moves recorded on the versions. One registry in a folder of its own (its aliases start empty), versions
registered as winners of sweep folders there (real load-back checks against the simulator)."""
import json
import subprocess
import sys

import pytest

from gepa_lab import promote
from gepa_lab.config.schema import MlflowConfig
from gepa_lab.promote import guard
from gepa_lab.tracking import registry
from tracking_helpers import register_in_new_sweep, scores

NAME = "gepa_lab-reviews"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gepa_lab.promote", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def contest(sweep, simulator, tmp_path_factory):
    """Sweep a: the first champion (10/20 right); b: one example better (the guard must refuse); c: 20/20 (passes)."""
    root = tmp_path_factory.mktemp("contest")
    uri = registry.registry_uri(MlflowConfig(), root / "a")
    guarded = promote.guarded_promotion(uri)
    reg = {s: register_in_new_sweep(root, s, scores(k), simulator.url, promote=guarded) for s, k in (("a", 10), ("b", 11), ("c", 20))}
    return {"root": root, "uri": uri, "reg": reg, "client": registry.open_registry(uri)}


def test_guard_refuses_what_it_cannot_pair():
    base = {"corpus": "example_csv", "corpus_manifest_hash": "m1", "test_scores": scores(10)}
    assert "different corpus manifest" in guard(base, {**base, "corpus_manifest_hash": "m2"}).reason
    assert "different corpus" in guard(base, {**base, "corpus": "other"}).reason
    assert "different test examples" in guard(base, {**base, "test_scores": scores(10, n=21)}).reason
    assert "challenger has no per-example" in guard(base, {**base, "test_scores": None}).reason
    assert not any(guard(base, {**base, **bad}).by_guard for bad in ({"corpus": "x"}, {"test_scores": None}))


def test_guard_needs_the_intervals_lower_bound_above_the_margin():
    champion = {"corpus": "c", "corpus_manifest_hash": "m", "test_scores": scores(10)}
    better = guard(champion, {**champion, "test_scores": scores(20)})
    assert better.passed and better.ci95[0] > 0 and better.gain == pytest.approx(0.5) and better.n == 20
    slightly = guard(champion, {**champion, "test_scores": scores(11)})
    assert not slightly.passed and slightly.by_guard and slightly.ci95[0] <= 0 < slightly.gain
    assert not guard(champion, {**champion, "test_scores": scores(20)}, min_gain=0.6).passed


def test_first_winner_becomes_champion(contest):
    a = contest["reg"]["a"]
    assert a["alias"] == "champion" and a["promotion"]["reason"] == "no champion yet"


def test_guard_refuses_a_winner_that_is_not_better_and_labels_it_challenger(contest):
    b, c = contest["reg"]["b"], contest["client"]
    assert b["load_back_ok"] is True  # refused by the guard, not by a failed load-back
    assert b["alias"] is None and b["promotion"]["alias"] == "challenger" and b["promotion"]["by_guard"] is True
    assert "refused by the guard" in b["promotion"]["reason"] and "NOT moved" in b["message"]
    assert b["promotion"]["against_version"] == contest["reg"]["a"]["version"]
    assert registry.alias_version(c, NAME, "challenger") == b["version"]


def test_a_better_winner_passes_and_the_old_champion_is_kept_as_previous(contest):
    a, cc, c = contest["reg"]["a"], contest["reg"]["c"], contest["client"]
    assert cc["alias"] == "champion" and cc["promotion"]["ci95"][0] > 0
    assert registry.alias_version(c, NAME, "champion") == cc["version"]
    assert registry.alias_version(c, NAME, "previous") == a["version"]
    move = registry.alias_moves(c, NAME, cc["version"])[-1]
    assert move["alias"] == "champion" and move["from_version"] == a["version"] and move["by"] == "sweep"
    assert move["gain"] == pytest.approx(0.5) and move["challenger_test_score"] == 1.0 and move["champion_test_score"] == 0.5


def test_cli_rule_force_and_rollback(contest):
    root, c, reg = contest["root"], contest["client"], contest["reg"]
    dirs = [str(root / s) for s in ("a", "b", "c")]
    # a rule that picks b: the guard refuses it against c (exit 1), and says so
    pick_b = "SELECT sweep_id, trial_id FROM trials WHERE sweep_id = 'b'"
    refused = cli(*dirs, "--sql", pick_b)
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "refused by the guard" in refused.stderr and json.loads(refused.stdout.splitlines()[-1])["alias"] == "challenger"
    # the default rule (best test score) picks c, the champion already
    best = cli(*dirs)
    assert best.returncode == 0 and json.loads(best.stdout.splitlines()[-1])["version"] == reg["c"]["version"]
    forced = cli(*dirs, "--sql", pick_b, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert registry.alias_version(c, NAME, "champion") == reg["b"]["version"]
    assert registry.alias_moves(c, NAME, reg["b"]["version"])[-1]["by"] == "force"
    rolled = cli("--rollback", "--name", NAME, "--tracking-uri", contest["uri"])
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert registry.alias_version(c, NAME, "champion") == reg["c"]["version"]
    assert registry.alias_version(c, NAME, "previous") == reg["b"]["version"]
    assert registry.alias_moves(c, NAME, reg["c"]["version"])[-1]["by"] == "rollback"


def test_cli_bad_input_is_one_line(contest, tmp_path):
    bad_sql = cli(str(contest["root"] / "a"), "--sql", "SELECT nope FROM trials")
    assert bad_sql.returncode == 2 and bad_sql.stderr.startswith("error: the rule's query failed") and len(bad_sql.stderr.splitlines()) == 1
    missing = cli(str(tmp_path / "nowhere"), "--tracking-uri", contest["uri"])
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    no_name = cli("--rollback", "--tracking-uri", contest["uri"])
    assert no_name.returncode == 2 and "--rollback needs --name" in no_name.stderr



def test_a_champion_without_per_example_scores_is_rescored_first(sweep, simulator, tmp_path):
    """Its first test examples are scored now, in a fresh load-back process, and paired with the challenger's."""
    from gepa_lab.corpus import ensure_prepared, read_split
    from gepa_lab.config.schema import RunConfig

    corpus = RunConfig.model_validate(sweep["cfgs"]["t_ok"]).corpus
    ids = [str(row["id"]) for row in read_split(ensure_prepared(corpus, quiet=True), "test", limit=5)]
    guarded = promote.guarded_promotion(registry.registry_uri(MlflowConfig(), tmp_path / "x"), api_base=simulator.url)
    old = register_in_new_sweep(tmp_path, "x", {}, simulator.url, promote=guarded, best_test=0.5)
    assert old["alias"] == "champion"
    new = register_in_new_sweep(tmp_path, "y", dict.fromkeys(ids, 1.0), simulator.url, promote=guarded)
    verdict = new["promotion"]
    assert verdict["against_version"] == old["version"] and verdict["n"] == 5
    # what the champion scores on those 5 examples against the live LM, as the fresh process measured it
    assert verdict["champion_test_score"] == pytest.approx(sweep["winner_score"]) and verdict["challenger_test_score"] == 1.0
