"""Register a sweep's winner in the MLflow Model Registry; move the alias only after a load-back check.

register_winner():
1. rebuilds the winning program: the task's seed program (task config + prepared corpus) with the
   winner's saved state (summary["program_path"]) loaded into it; checks its instructions against the summary;
2. logs it with ``mlflow.dspy.log_model`` (name ``program``) into the winner's trial run (found by its
   ``gepa_lab.output_dir`` tag under the sweep's parent run; a nested ``winner`` run if there is none),
   registering a new version of ``registered_model_name`` (default ``gepa_lab-<task>``).
   dspy's MLflow flavor pickles the program *and dspy.settings*; it is logged with the LM, callbacks and
   trackers cleared from the settings, and the pickle is scanned for known secret values first
   (refused if one is found). The MLmodel metadata ``gepa_lab`` records the LM it was optimized for
   (model, api_base, temperature, max_tokens, timeout, retries, api_key_env -- never a key), the task,
   corpus + manifest hash, config hash, git commit, package versions, scores and the trial config;
3. runs ``python -m gepa_lab.serve check`` in a fresh process against ``models:/NAME/VERSION`` and the live
   endpoint ``load_back["api_base"]`` (a key, if any, travels in the environment variable named by the
   LM's api_key_env, never in argv). A sweep starts that process when it starts (``LoadBackProcess``): its
   imports are done by the time the winner is known;
4. only if the check passes, sets the alias (``champion``) to the new version. Either way the version is
   tagged ``load_back_status`` (passed/failed), ``load_back_score``, ``load_back_error``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gepa_lab.config.schema import MlflowConfig, RunConfig
from gepa_lab.paths import PROJECT_ROOT
from gepa_lab.servers.process import popen_dying_with_parent
from gepa_lab.tracking.mlflow_sink import (
    METADATA_KEY,
    SecretInArtifact,
    client,
    log_metrics,
    mlflow_uris,
    retry,
    set_tags,
    tracking_uri,
)
from gepa_lab.tracking.secrets import find_secrets, redact, redact_text, secret_values

MODEL_NAME = "program"
# dspy.settings entries that may hold live objects (LMs with keys, callbacks, trackers): cleared when logging
CLEARED_SETTINGS = {"lm": None, "rm": None, "adapter": None, "callbacks": [], "usage_tracker": None,
                    "send_stream": None, "stream_listeners": [], "caller_predict": None, "caller_modules": None, "trace": []}


class RegistrationError(RuntimeError):
    pass


def registered_model_name(cfg: MlflowConfig, task: str) -> str:
    return cfg.registered_model_name or f"gepa_lab-{task}"


def rebuild_program(run_cfg: RunConfig, program_path: str | os.PathLike):
    """The task's seed program with the winner's saved state loaded into it, without any LM attached."""
    from gepa_lab.corpus import ensure_prepared, read_manifest
    from gepa_lab.tasks.task import build_program

    manifest = read_manifest(ensure_prepared(run_cfg.corpus, quiet=True))
    program = build_program(run_cfg.task, manifest)
    program.load(str(program_path))
    for _, predictor in program.named_predictors():
        predictor.lm = None  # bound at load time to a live endpoint
    return program


def model_metadata(run_cfg: RunConfig, summary: dict[str, Any], trial_id: str | None) -> dict[str, Any]:
    lm = run_cfg.lm
    task_lm = summary.get("task_lm") or {}
    meta = {
        "task": run_cfg.task.name,
        "corpus": run_cfg.corpus.name,
        "corpus_manifest_hash": summary.get("corpus_manifest_hash"),
        "config_hash": summary.get("config_hash"),
        "git_commit": summary.get("git_commit"),
        "versions": summary.get("versions"),
        "trial_id": trial_id,
        "lm": {  # the LM it was optimized for; bind it to a live endpoint serving this model
            "kind": lm.kind,
            "model": task_lm.get("model", lm.model),
            "api_base": task_lm.get("api_base") or (lm.api_bases[0] if lm.api_bases else None),
            "temperature": task_lm.get("temperature", lm.temperature),
            "max_tokens": lm.max_tokens,
            "timeout_s": lm.timeout_s,
            "num_retries": lm.num_retries,
            "api_key_env": lm.api_key_env,
            "extra_body": lm.extra_body,
        },
        **{k: summary.get(k) for k in ("seed_val_score", "seed_test_score", "best_val_score", "best_test_score",
                                        "best_candidate_idx", "num_candidates", "metric_calls")},
        "lm_config": lm.model_dump(mode="json"),  # the full LM config, to rebuild the LM the way trials do
        "best_instructions": summary.get("best_instructions"),
        "trial_config": run_cfg.model_dump(mode="json"),
    }
    return redact(meta)


def _winner_run(c, parent_run_id: str, output_dir: str | None) -> str | None:
    """The trial run of the winner: a child of the parent run tagged with the winner's output_dir."""
    if not output_dir:
        return None
    parent = retry(c.get_run, parent_run_id)
    runs = retry(
        c.search_runs,
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND tags.`gepa_lab.output_dir` = '{output_dir}'",
        order_by=["attributes.start_time DESC"],
    )
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (finished or runs)[0].info.run_id if runs else None


def _log_model(uri: str, run_id: str, program, name: str, metadata: dict, secrets: list[str]):
    import cloudpickle
    import dspy
    import mlflow

    with dspy.context(**CLEARED_SETTINGS):
        # what mlflow.dspy pickles: the program and dict(dspy.settings.config) minus the trace
        if hits := find_secrets(cloudpickle.dumps((program, dict(dspy.settings.config))), secrets):
            raise SecretInArtifact(f"refusing to log the winner: its pickle would contain secret values {hits}")
        with mlflow_uris(uri), mlflow.start_run(run_id=run_id):
            return mlflow.dspy.log_model(
                program,
                name=MODEL_NAME,
                registered_model_name=name,
                metadata={METADATA_KEY: metadata},
                # explicit requirements: inferring them would load the model in a subprocess (slow)
                pip_requirements=[f"dspy=={dspy.__version__}", f"mlflow=={mlflow.__version__}", f"cloudpickle=={cloudpickle.__version__}"],
            )


class LoadBackProcess:
    """A fresh `python -m gepa_lab.serve check` process, started before it is needed: it imports MLflow, dspy and
    the corpus readers (~12 s on 2 cores) and then waits for its arguments on stdin. A sweep starts one when it
    starts, so the winner's check does not wait for those imports. It shares nothing else with the sweep: it loads
    the winner from the registry as any other process would. Its environment is this process's at start. It dies
    with this process (a sweep killed before it hands it the winner leaves no process waiting on stdin)."""

    def __init__(self, extra_env: dict[str, str] | None = None):
        env = {**os.environ, **(extra_env or {}), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        # files, not pipes: nobody reads its output until it ends, and a full pipe would stall it
        self._stdout, self._stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = popen_dying_with_parent(
            [sys.executable, "-m", "gepa_lab.serve", "--args-from-stdin"], stdin=subprocess.PIPE,
            stdout=self._stdout, stderr=self._stderr, text=True, env=env, cwd=str(PROJECT_ROOT),
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, args: list[str], timeout_s: float) -> tuple[int, str, str]:
        """Hand it `check` arguments; (exit status, stdout, stderr). Raises subprocess.TimeoutExpired."""
        try:
            self.proc.communicate(json.dumps(args) + "\n", timeout=timeout_s)
            self._stdout.seek(0)
            self._stderr.seek(0)
            return self.proc.returncode, self._stdout.read(), self._stderr.read()
        finally:
            self.close()

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._stdout.close()
        self._stderr.close()


def load_back_check(
    uri: str, model_uri: str, n: int, api_base: str | None, api_key_env: str | None,
    api_key: str | None = None, max_error_rate: float = 0.0, timeout_s: float = 600.0,
    process: LoadBackProcess | None = None,
) -> dict[str, Any]:
    """Run `python -m gepa_lab.serve check` in a fresh process (`process`, started earlier, if it still waits);
    its JSON result (+ ok, returncode)."""
    args = ["check", "--model-uri", model_uri, "--tracking-uri", uri, "--n", str(n), "--max-error-rate", str(max_error_rate)]
    if api_base:
        args += ["--api-base", api_base]
    if api_key:
        if not api_key_env:
            raise RegistrationError("load_back has an api_key but the LM config names no api_key_env to pass it in")
        process = LoadBackProcess({api_key_env: api_key})  # the key travels in the environment, never in argv
    elif process is None or not process.alive():
        process = LoadBackProcess()
    try:
        returncode, stdout, stderr = process.run(args, timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the load-back check did not finish within {timeout_s:g} s", "returncode": None}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    result["returncode"] = returncode
    result["ok"] = returncode == 0 and bool(result.get("ok"))
    result["log"] = redact_text(stderr[-4000:])
    if not result["ok"] and not result.get("error"):
        result["error"] = (f"exit status {returncode}; " + "; ".join(result.get("errors", [])[:3])
                           if result.get("errors") else f"exit status {returncode}: {result['log'][-1500:]}")
    return result


def register_winner(
    cfg: MlflowConfig,
    output_dir: str | os.PathLike,
    parent_run_id: str,
    winner_summary: dict[str, Any],
    trial_config: dict[str, Any],
    load_back: dict[str, Any],
) -> dict[str, Any]:
    """Log + register the winner, run the load-back check in a fresh process, move the alias if it passed.

    load_back: {"api_base": live endpoint of the task LM (required unless the recorded one is still up),
    optional "api_key" (passed to the child in env var lm.api_key_env), "n" (default cfg.load_back_examples),
    "max_error_rate" (default 0.0), "min_score" (default none), "timeout_s" (default 600),
    "process" (a LoadBackProcess started earlier; default: one started now)}.
    Returns {name, version, model_uri, alias (None unless moved), champion_uri, load_back_ok,
    load_back_score, load_back, run_id, trial_id, message}.
    """
    uri = tracking_uri(cfg, output_dir)
    run_cfg = RunConfig.model_validate(trial_config)
    name = registered_model_name(cfg, run_cfg.task.name)
    trial_dir = trial_config.get("output_dir")
    trial_id = Path(trial_dir).name if trial_dir else None
    program_path = winner_summary.get("program_path")
    if not program_path or not Path(program_path).is_file():
        raise RegistrationError(f"the winner's program state {program_path!r} does not exist")
    program = rebuild_program(run_cfg, program_path)
    expected = winner_summary.get("best_instructions") or {}
    got = {n: p.signature.instructions for n, p in program.named_predictors()}
    if expected and got != expected:
        raise RegistrationError(f"{program_path} does not hold the winner's instructions recorded in its summary")

    secrets = secret_values(extra=[k for k in (run_cfg.lm.api_key(), load_back.get("api_key")) if k])
    c = client(cfg, output_dir)
    run_id = _winner_run(c, parent_run_id, trial_dir)
    if run_id is None:  # no trial run to attach to: a nested run of its own
        parent = retry(c.get_run, parent_run_id)
        run_id = retry(c.create_run, parent.info.experiment_id, run_name="winner",
                       tags={"mlflow.parentRunId": parent_run_id, "gepa_lab.kind": "winner", "gepa_lab.trial_id": trial_id or ""}).info.run_id
        retry(c.set_terminated, run_id, "FINISHED")
    info = _log_model(uri, run_id, program, name, model_metadata(run_cfg, winner_summary, trial_id), secrets)
    version = str(info.registered_model_version)
    model_uri = f"models:/{name}/{version}"
    for key, value in {
        "gepa_lab.trial_id": trial_id, "config_hash": winner_summary.get("config_hash"),
        "git_commit": winner_summary.get("git_commit"), "best_val_score": winner_summary.get("best_val_score"),
        "best_test_score": winner_summary.get("best_test_score"), "lm.model": run_cfg.lm.model,
        "load_back_status": "pending",
    }.items():
        if value is not None:
            retry(c.set_model_version_tag, name, version, key, str(value))

    n = int(load_back.get("n") or cfg.load_back_examples)
    check = load_back_check(
        uri, model_uri, n, load_back.get("api_base"), run_cfg.lm.api_key_env, load_back.get("api_key"),
        float(load_back.get("max_error_rate", 0.0)), float(load_back.get("timeout_s", 600.0)), load_back.get("process"),
    )
    score = check.get("score")
    min_score = load_back.get("min_score")
    if check["ok"] and min_score is not None and (score is None or score < float(min_score)):
        check["ok"] = False
        check["error"] = f"load-back score {score} is below min_score {min_score}"
    result: dict[str, Any] = {
        "name": name, "version": version, "model_uri": model_uri, "alias": None, "champion_uri": None,
        "load_back_ok": check["ok"], "load_back_score": score, "load_back": check, "run_id": run_id,
        "trial_id": trial_id, "tracking_uri": uri,
    }
    status_tags = {"load_back_status": "passed" if check["ok"] else "failed"}
    if score is not None:
        status_tags["load_back_score"] = str(score)
    if not check["ok"]:
        status_tags["load_back_error"] = redact_text(str(check.get("error", "")))[:5000]
    for key, value in status_tags.items():
        retry(c.set_model_version_tag, name, version, key, value)
    if check["ok"]:
        retry(c.set_registered_model_alias, name, cfg.alias, version)
        result.update(alias=cfg.alias, champion_uri=f"models:/{name}@{cfg.alias}")
        result["message"] = f"registered {model_uri}; load-back score {score:.4f} on {check.get('n')} test examples; alias '{cfg.alias}' -> version {version}"
    else:
        result["message"] = (f"registered {model_uri}, but the load-back check FAILED ({check.get('error')}); "
                             f"alias '{cfg.alias}' NOT moved")
        print(f"[gepa_lab] {result['message']}", file=sys.stderr)
    log_metrics(c, parent_run_id, {"load_back_score": score, "load_back_ok": check["ok"]})
    set_tags(c, parent_run_id, {"registered_model": name, "registered_model_version": version,
                                "champion_moved": str(check["ok"]).lower()})
    return result
