"""`mlflow models serve -m models:/NAME@champion --env-manager local` answers with the champion: its pyfunc loader
(gepa_lab/tracking/pyfunc_flavor.py) binds the program to the LM recorded with it, the key from the environment."""
import os
import sys
from pathlib import Path

import httpx

from gepa_lab.servers.process import ChildProcess, free_port
from gepa_lab.tracking.pyfunc_flavor import API_BASE_ENV
from tests.conftest import wait_until_answers


def test_mlflow_models_serve_answers_with_the_champion(sweep, sim, tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": sweep["registry_uri"], "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
           API_BASE_ENV: sim.url,
           # as in an activated environment: MLflow starts `uvicorn` from PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "mlflow-serve.log"
    server = ChildProcess([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/gepa_lab-reviews@champion",
                           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], log_path=log, env=env)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/ping", server, timeout=300)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                       json={"dataframe_records": [{"review": "So happy with this kettle."}, {"review": "Broke after a day."}]})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        # the winner's rule ("happy" -> positive) answered: the program ran against the live LM, not the seed
        assert predictions[0] == {"sentiment": "positive"} and predictions[1]["sentiment"] in {"positive", "negative", "neutral"}
    finally:
        server.stop(timeout=15)
    assert sweep["key"] not in log.read_text()
