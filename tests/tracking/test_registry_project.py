"""One registry per project: winners of different sweeps land in one store (next to the sweep folders), a rerun of a
sweep finds the version it registered, two sweeps finishing at once both register."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gepa_lab.config.schema import MlflowConfig
from gepa_lab.tracking import registry

NAME = "gepa_lab-reviews"


def versions(uri: str) -> list[str]:
    return sorted(str(mv.version) for mv in registry.open_registry(uri).search_model_versions(f"name = '{NAME}'"))


def test_the_default_registry_is_one_store_beside_the_sweep_folders(sweep):
    out = Path(sweep["out"])
    assert sweep["registry_uri"] == f"sqlite:///{out.resolve().parent}/registry.db"
    assert registry.registry_uri(MlflowConfig(tracking_uri="http://h:5000"), out) == "http://h:5000"
    # the second sweep's version is in the same registry as the first's, numbered after it
    assert (sweep["registered"]["version"], sweep["rejected"]["version"]) == ("1", "2")
    assert sweep["rejected"]["registry_uri"] == sweep["registry_uri"]


def test_a_rerun_of_the_sweep_finds_its_version_and_registers_no_other(sweep):
    before = versions(sweep["registry_uri"])
    again = registry.register_winner(sweep["mlflow"], sweep["out"], sweep["parent"], sweep["summary"], sweep["cfgs"]["t_ok"],
                                     load_back={"api_base": "http://127.0.0.1:9/v1"}, test_scores=sweep["test_scores"])
    assert again["version"] == "1" and again["alias"] == "champion" and again["message"].startswith("already registered")
    assert versions(sweep["registry_uri"]) == before


REGISTER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from gepa_lab.config.schema import MlflowConfig
    from gepa_lab.tracking import mlflow_sink, registry
    out, go = Path(sys.argv[1]), Path(sys.argv[2])
    summary, cfg, api_base = json.loads(Path(sys.argv[3]).read_text())
    out.mkdir()  # says: imports done, waiting for the go file
    while not go.exists():
        time.sleep(0.01)
    parent = mlflow_sink.start_parent_run(MlflowConfig(), out, out.name, {})
    reg = registry.register_winner(MlflowConfig(), out, parent, summary, cfg, load_back={"api_base": api_base, "n": 1})
    print(json.dumps({k: reg[k] for k in ("version", "load_back_ok", "registry_uri")}))
""")


def test_two_sweeps_finishing_at_once_both_register(sweep, simulator, tmp_path):
    """Two processes register into the project's SQLite registry at the same moment (a go file starts both)."""
    root = Path(sweep["out"]).parent
    args = tmp_path / "args.json"
    args.write_text(json.dumps([sweep["summary"], sweep["cfgs"]["t_ok"], simulator.url]))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER, str(root / f"at-once-{i}"), str(go), str(args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 240
    while not all((root / f"at-once-{i}").is_dir() for i in range(2)):  # both imported MLflow and wait
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.1)
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "database is locked" not in err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["load_back_ok"] and r["registry_uri"] == sweep["registry_uri"] for r in results), results
    assert len({r["version"] for r in results}) == 2
    assert {r["version"] for r in results} <= set(versions(sweep["registry_uri"]))
