"""The MLflow flavor the registry logs a winner with: mlflow.dspy's, whose pyfunc face binds the program to its LM.

The saved model is exactly mlflow.dspy's (flavor `dspy`: the pickled program, loadable by mlflow.dspy and by
gepa_lab.serve), except that its `python_function` flavor loads through this module: loading binds the program to
the LM recorded with it (the LM config in the model's gepa_lab metadata, built by gepa_lab.lm.endpoint.build_lm:
retries, accounting), so `mlflow models serve -m models:/NAME@champion --env-manager local` and
mlflow.pyfunc.load_model answer with it. The key is read from the environment variable the LM config names, when
the model is loaded and at each request; it is never stored. GEPA_LAB_LM_API_BASE, when set, replaces the recorded
endpoint (the sweep's own LM server is gone once the sweep ends). MLflow loads the pickle only with
MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true.
"""
from __future__ import annotations

import os
from typing import Any

API_BASE_ENV = "GEPA_LAB_LM_API_BASE"


def save_model(path: str, mlflow_model, **kwargs: Any) -> None:
    """Called by mlflow.models.Model.log(flavor=this module): mlflow.dspy's save, then this module as pyfunc loader."""
    import mlflow.dspy

    mlflow.dspy.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


class BoundProgram:
    """What mlflow.pyfunc serves: the program with its LM. predict takes a DataFrame, a list of records or one
    record of the program's input fields, and returns one record of output fields per input."""

    def __init__(self, program, lm):
        self.program = program
        self.lm = lm

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        import dspy

        if hasattr(model_input, "to_dict"):
            records = model_input.to_dict(orient="records")
        else:
            records = model_input if isinstance(model_input, list) else [model_input]
        with dspy.context(lm=self.lm):
            return [dict(self.program(**record).items()) for record in records]


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> BoundProgram:
    from mlflow.dspy.load import _load_model
    from mlflow.models import Model

    from gepa_lab.config.load import validate
    from gepa_lab.lm.config import LMConfig
    from gepa_lab.lm.endpoint import build_lm
    from gepa_lab.tracking.mlflow_sink import METADATA_KEY

    meta = (Model.load(path).metadata or {}).get(METADATA_KEY) or {}
    recorded = meta.get("lm_config") or {}
    api_base = os.environ.get(API_BASE_ENV) or (meta.get("lm") or {}).get("api_base")
    if not recorded or not api_base:
        raise RuntimeError(f"{path}: no LM recorded with this model; set {API_BASE_ENV} and register it with gepa_lab")
    lm = build_lm(validate(LMConfig, {**recorded, "api_base": api_base}, prefix="lm"), api_base)
    lm.cache = False  # answers come from the live LM
    return BoundProgram(_load_model(path).model, lm)
