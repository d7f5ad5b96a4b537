"""A registered winner: load it from MLflow, bind it to a live LM endpoint, predict, check it.

    from gepa_lab.serve import load_model
    served = load_model("models:/gepa_lab-banking77@champion", tracking_uri="sqlite:///sweep/mlflow.db")
    served.bind(api_base="http://127.0.0.1:8000/v1")   # key: env var named by the LM's api_key_env
    served.predict(query="my card has not arrived").intent

The model is the dspy program logged by gepa_lab.tracking.registry (mlflow.dspy flavor). Its MLmodel
metadata ``gepa_lab`` records the LM it was optimized for (model, api_base, sampling parameters,
api_key_env -- never a key), the task, the corpus and the trial config, so loading needs nothing else.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import dspy

from gepa_lab.api_keys import key_from_env
from gepa_lab.errors import GepaLabError
from gepa_lab.tracking.mlflow_sink import METADATA_KEY, mlflow_uris
from gepa_lab.tracking.registry import default_registry_uri

class ServeError(GepaLabError):
    pass


@dataclass
class ServedModel:
    program: dspy.Module
    meta: dict[str, Any]  # the MLmodel metadata written by the registry (key "gepa_lab")
    model_uri: str
    lm: dspy.LM | None = None
    lm_info: dict[str, Any] = field(default_factory=dict)

    @property
    def optimized_for(self) -> dict[str, Any]:
        """The LM the program was optimized for: model, api_base, temperature, max_tokens, ..."""
        return dict(self.meta.get("lm") or {})

    def bind(self, api_base: str | None = None, api_key_env: str | None = None, cache: bool = False, **overrides: Any) -> dspy.LM:
        """Bind the program to a live OpenAI-compatible endpoint (default: the one it was optimized against).

        The LM is built the way trials build it (gepa_lab.lm.endpoint.build_lm, from the recorded LM config);
        the key is read from the environment variable `api_key_env` (default: the one recorded with the model).
        `overrides` replace recorded LM settings (temperature=..., max_tokens=...). cache=False by default
        so a check really talks to the endpoint (dspy's cache key ignores api_base).
        """
        from gepa_lab.config.load import validate
        from gepa_lab.lm.config import LMConfig
        from gepa_lab.lm.endpoint import build_lm

        info = {**self.optimized_for, **overrides}
        base = api_base or info.get("api_base")
        if not base or not info.get("model"):
            raise ServeError(f"{self.model_uri}: no LM endpoint to bind to (pass api_base); recorded LM: {info}")
        env_name = api_key_env or info.get("api_key_env")
        recorded = dict(self.meta.get("lm_config") or {})
        try:
            cfg = validate(LMConfig, {**recorded, **overrides, "api_base": base, "api_key_env": env_name}, prefix="lm")
            self.lm = build_lm(cfg, base)  # fails naming the variable when the key is not set
        except GepaLabError as e:
            raise ServeError(f"{self.model_uri}: {e}") from None
        self.lm.cache = cache
        self.lm_info = {**info, "api_base": base, "api_key_env": env_name}
        return self.lm

    def predict(self, **inputs: Any) -> dspy.Prediction:
        if self.lm is None:
            self.bind()
        with dspy.context(lm=self.lm):
            return self.program(**inputs)

    __call__ = predict


def _load_program(local_path: str) -> dspy.Module:
    """The dspy program of a downloaded model. mlflow.dspy.load_model() would also overwrite the global
    dspy.settings with the saved ones (LM cleared); the flavor's loader returns the program alone."""
    import mlflow

    try:
        from mlflow.dspy.load import _load_model
    except ImportError:  # another mlflow: the public loader (it reconfigures dspy.settings)
        return mlflow.dspy.load_model(local_path)
    before = mlflow.get_active_model_id()
    program = _load_model(local_path).model
    # Loading makes the model "active": every metric this process logs later, to any server, would be
    # attached to it (a foreign-key error on another tracking server).
    if mlflow.get_active_model_id() != before:
        mlflow.clear_active_model()
    return program


def load_model(model_uri: str, tracking_uri: str | None = None) -> ServedModel:
    """Load `models:/NAME@ALIAS`, `models:/NAME/VERSION` (or any MLflow model URI) logged by the registry."""
    import mlflow
    from mlflow.models import Model

    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # our own registry's cloudpickle
    tracking_uri = tracking_uri or default_registry_uri()
    store = Path(tracking_uri.removeprefix("sqlite:///"))
    if tracking_uri.startswith("sqlite:///") and not store.is_file():  # MLflow would create an empty store there
        raise ServeError(f"no MLflow store at {store}: pass tracking_uri=... (or set MLFLOW_TRACKING_URI), "
                         "or register a winner first (a sweep does)")
    try:
        with mlflow_uris(tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
            meta = (Model.load(local).metadata or {}).get(METADATA_KEY) or {}
            program = _load_program(local)
    except Exception as exc:
        raise ServeError(f"cannot load {model_uri} from {tracking_uri}: {type(exc).__name__}: {exc}") from exc
    if not meta:
        raise ServeError(f"{model_uri} has no '{METADATA_KEY}' metadata: it was not registered by gepa_lab")
    return ServedModel(program=program, meta=meta, model_uri=model_uri)


def test_examples(meta: dict[str, Any], n: int) -> tuple[list[dspy.Example], Any]:
    """The first n test examples of the model's corpus (each marked with its corpus id) and its task metric (from
    the recorded trial config)."""
    from gepa_lab.corpus import ensure_prepared, read_manifest, read_split, validate_config
    from gepa_lab.tasks.outcomes import with_ids
    from gepa_lab.tasks.task import resolve_metric, to_examples

    config = meta.get("trial_config") or {}
    if not config.get("corpus") or not config.get("task"):
        raise ServeError("the model's metadata lacks the trial config (corpus, task): cannot pick test examples")
    corpus_dir = ensure_prepared(validate_config(config["corpus"]), quiet=True)
    manifest = read_manifest(corpus_dir)
    if meta.get("corpus_manifest_hash") and manifest["manifest_hash"] != meta["corpus_manifest_hash"]:
        print(f"[gepa_lab] warning: corpus {manifest['name']} changed since the model was optimized "
              f"(manifest {manifest['manifest_hash'][:12]} != {meta['corpus_manifest_hash'][:12]})")
    rows = read_split(corpus_dir, "test", limit=n)
    return with_ids(to_examples(rows, manifest), [row["id"] for row in rows]), resolve_metric(config["task"]["metric"])


def _score(result: Any) -> float:
    value = getattr(result, "score", result)
    return float(value) if value is not None else 0.0


def check(
    model_uri: str,
    tracking_uri: str | None = None,
    n: int = 5,
    api_base: str | None = None,
    api_key_env: str | None = None,
    max_error_rate: float = 0.0,
) -> dict[str, Any]:
    """Load the model, bind it to a live LM, score the first n test examples with the task's metric.

    ok = loaded, endpoint answered, and at most max_error_rate of the examples raised (LM or parse errors).
    Raises ServeError when the model cannot be loaded or bound, or the endpoint does not answer."""
    from gepa_lab.servers.process import EndpointError, check_endpoint
    from gepa_lab.tasks.outcomes import example_id

    started = time.time()
    served = load_model(model_uri, tracking_uri)
    lm = served.bind(api_base=api_base, api_key_env=api_key_env, cache=False)  # score against the live LM only
    try:
        check_endpoint(served.lm_info["api_base"], api_key=key_from_env(served.lm_info.get("api_key_env")),
                       model=served.lm_info.get("model"))
    except EndpointError as exc:
        raise ServeError(str(exc)) from None
    try:
        examples, metric = test_examples(served.meta, n)
    except ServeError:
        raise
    except Exception as exc:  # corpus not preparable here, metric not importable, ...
        raise ServeError(f"cannot get test examples for {model_uri}: {type(exc).__name__}: {exc}") from exc
    if not examples:
        raise ServeError("the corpus has no test examples")
    scores: list[float] = []
    errors: list[str] = []
    with dspy.context(lm=lm):
        for ex in examples:
            try:
                pred = served.program(**ex.inputs())
                scores.append(_score(metric(ex, pred)))
            except Exception as exc:
                scores.append(0.0)
                errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
    error_rate = len(errors) / len(examples)
    return {
        "ok": error_rate <= max_error_rate,
        "model_uri": model_uri,
        "score": sum(scores) / len(scores),
        "n": len(examples),
        "scores": scores,
        "example_ids": [example_id(ex) for ex in examples],  # the corpus ids of the scored examples, in order
        "errors": errors,
        "error_rate": error_rate,
        "lm": {k: served.lm_info.get(k) for k in ("model", "api_base", "temperature", "max_tokens", "api_key_env")},
        "task": served.meta.get("task"),
        "registered_val_score": served.meta.get("best_val_score"),
        "registered_test_score": served.meta.get("best_test_score"),
        "seconds": round(time.time() - started, 3),
    }
