"""The champion is registered once (issue 13, item 3): the driver crashes between the last trial and the registration,
then right after it (GEPA_LAB_FAULT_AT, gepa_lab/sweep/driver.py), and each time the same command is run again: the
project registry holds exactly one version of the sweep's winner, found by the sweep it carries."""
from pathlib import Path

from gepa_lab.config.schema import MlflowConfig
from gepa_lab.tracking import registry
from tests.conftest import run_cli
from tests.support.corpus import TINY_CORPUS

TINY = ["sweep=demo", *TINY_CORPUS,
        "sweep.space.optimizer.seed={grid:[0]}", "sweep.space.optimizer.reflection_minibatch_size={grid:[4]}",
        "optimizer.max_metric_calls=100", "tracking.wandb.enabled=false"]


def sweep_versions(out: Path) -> list:
    c = registry.open_registry(registry.registry_uri(MlflowConfig(), out))
    return c.search_model_versions(f"tags.`{registry.SWEEP_TAG}` = '{out.resolve()}'")


def test_a_crash_before_and_after_registration_leaves_one_version(tmp_path):
    out = tmp_path / "sweep"
    args = [*TINY, f"output_dir={out}"]
    before = run_cli("gepa_lab.sweep", *args, env={"GEPA_LAB_FAULT_AT": "registration"}, timeout=900)
    assert before.returncode != 0 and "fault injected at registration" in before.stderr, before.stderr[-3000:]
    assert sweep_versions(out) == []  # the trial finished; nothing registered yet
    after = run_cli("gepa_lab.sweep", *args, env={"GEPA_LAB_FAULT_AT": "registered"}, timeout=900)
    assert after.returncode != 0 and "fault injected at registered" in after.stderr, after.stderr[-3000:]
    (version,) = sweep_versions(out)
    finished = run_cli("gepa_lab.sweep", *args, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    (again,) = sweep_versions(out)
    assert again.version == version.version and again.tags["gepa_lab.sweep_id"] == "sweep"
    assert again.tags["load_back_status"] == "passed" and registry.alias_version(
        registry.open_registry(registry.registry_uri(MlflowConfig(), out)), again.name, "champion") == str(version.version)
