"""A remote tracking URI: a real `mlflow server` on 127.0.0.1 without a local artifact root, so the runs'
artifacts and the registered model travel through the server (mlflow-artifacts:/)."""
import uuid

from mlflow import MlflowClient

from gepa_lab.config.schema import MlflowConfig
from gepa_lab.events import EventStream
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.tracking import mlflow_sink, registry
from tracking_helpers import emit_trial, run_config

KEY_ENV = "GEPA_LAB_TEST_REMOTE_KEY"  # deliberately NOT in os.environ: register_winner hands it to the check


def test_remote_tracking_and_registration_through_the_server(mlflow_server, tmp_path, monkeypatch):
    url, server_root = mlflow_server
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = f"sk-canary-{uuid.uuid4().hex}"
    cfg = MlflowConfig(tracking_uri=url, experiment="remote", registered_model_name="remote-winner")
    out = tmp_path / "sweep"
    out.mkdir()
    assert mlflow_sink.tracking_uri(cfg, out) == url
    parent = mlflow_sink.start_parent_run(cfg, out, "remote-sweep", {"sweep": {"name": "remote-sweep"}})
    trial = run_config(out / "trials" / "t0", api_key_env=KEY_ENV)
    sink = mlflow_sink.MlflowSink(cfg, out, parent, run_name="t0")
    with start_simulator(model="sim", api_key=key) as sim:
        events = EventStream("t0", [sink])
        summary = emit_trial(events, trial, api_base=sim.url)
        sink.finish()
        assert not events.failures
        reg = registry.register_winner(cfg, out, parent, summary, trial, load_back={"api_base": sim.url, "api_key": key})
    mlflow_sink.end_parent_run(cfg, out, parent, {"best_val_score": 0.75, "registered_model": reg})

    assert reg["load_back_ok"] is True, reg
    assert (reg["version"], reg["alias"]) == ("1", "champion") and reg["load_back"]["errors"] == []
    c = MlflowClient(url, registry_uri=url)
    run = c.get_run(sink.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert run.data.metrics["best_val_score"] == 0.75 and run.data.params["lm.model"] == "sim"
    assert c.get_run(parent).info.status == "FINISHED"
    assert str(c.get_model_version_by_alias("remote-winner", "champion").version) == "1"
    # the artifacts went through the server into its own artifact folder; nothing was written locally
    server_files = {p.name for p in (server_root / "mlartifacts").rglob("*") if p.is_file()}
    assert {"summary.json", "candidates.json", "program.json", "MLmodel", "model.pkl"} <= server_files
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    assert not (server_root / "mlruns").exists()
    leaked = [str(p) for root in (out, server_root) for p in root.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaked == []
