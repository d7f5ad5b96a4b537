"""Register a sweep's winner in the project's MLflow Model Registry; move aliases compare-and-set.

The registry: ``tracking.mlflow.tracking_uri`` when set (a server holds runs and registry), else the project's
SQLite store ``<folder holding the output dirs>/registry.db`` (``outputs/registry.db`` for the default output
dirs), so winners of different sweeps compete for one ``champion``; each sweep keeps its runs in its own store,
and the registered model's files are copied beside the registry (``registry-artifacts/``).

register_winner():
1. rebuilds the winning program: the task's seed program (task config + prepared corpus) with the
   winner's saved state (summary["program_path"]) loaded into it; checks its instructions against the summary;
2. logs it with ``mlflow.dspy.log_model`` (name ``program``) into the winner's trial run (found by its
   ``gepa_lab.output_dir`` tag under the sweep's parent run; a nested ``winner`` run if there is none),
   and registers a new version of ``registered_model_name`` (default ``gepa_lab-<task>``) tagged with the sweep
   (``gepa_lab.sweep_run``, its MLflow parent run, which a rerun reopens; ``gepa_lab.sweep``, its output_dir):
   a rerun of the sweep finds that version and registers no other.
   dspy's MLflow flavor pickles the program *and dspy.settings*; it is logged with the LM, callbacks and
   trackers cleared from the settings, and the pickle is scanned for known secret values first
   (refused if one is found). The MLmodel metadata ``gepa_lab`` records the LM it was optimized for
   (model, api_base, temperature, max_tokens, timeout, retries, api_key_env -- never a key), the task,
   corpus + manifest hash, config hash, git commit, package versions, scores and the trial config;
3. runs ``python -m gepa_lab.serve check`` in a fresh process against ``models:/NAME/VERSION`` and the live
   endpoint ``load_back["api_base"]`` (a key, if any, travels in the environment variable named by the
   LM's api_key_env, never in argv). A sweep starts that process when it starts (``LoadBackProcess``): its
   imports are done by the time the winner is known;
4. only if the check passes, hands the version to ``promote`` (gepa_lab.promote's guard decides whether it
   becomes ``champion`` or ``challenger``). Either way the version is tagged ``load_back_status``
   (passed/failed), ``load_back_score``, ``load_back_error``.

Alias moves (move_alias, rollback) are compare-and-set: under a lock that is itself a registered model
(``NAME--alias-lock``; creating a name that exists fails atomically on SQLite and on a server), the move happens
only if the alias still points where the caller saw it. A move of ``champion`` keeps the version it leaves under
``previous``; every move is recorded on the version it points to (tag ``alias_move.<alias>.<ms>``: JSON of what
moved it, from which version, the scores and the interval).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from gepa_lab.config.schema import MlflowConfig, RunConfig
from gepa_lab.paths import OUTPUTS_DIR, PROJECT_ROOT
from gepa_lab.servers.process import popen_dying_with_parent
from gepa_lab.tracking.mlflow_sink import (
    METADATA_KEY,
    SecretInArtifact,
    client,
    create_sqlite_store,
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


PREVIOUS = "previous"  # where a champion move leaves the version it replaced
CHALLENGER = "challenger"  # a version that passed its load-back but not the guard
SWEEP_TAG = "gepa_lab.sweep"  # the resolved output_dir of the sweep that registered a version
SWEEP_RUN_TAG = "gepa_lab.sweep_run"  # its MLflow parent run: a rerun of that sweep reopens it, a new sweep in a reused folder does not
ARTIFACTS_DIR = "registry-artifacts"  # beside a SQLite registry: the registered models' files, outliving the sweep folders
REGISTRY_DB = "registry.db"
LOCK_LEASE_S = 120.0  # a lock older than this was left by a process that died holding it


class RegistrationError(RuntimeError):
    pass


class AliasMoveConflict(RegistrationError):
    """The alias moved since the caller read it: decide again against where it points now."""


def registry_uri(cfg: MlflowConfig, output_dir: str | os.PathLike) -> str:
    """cfg.tracking_uri, or the project's registry sqlite:///<parent of output_dir>/registry.db."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return "sqlite:///" + str((Path(output_dir).resolve().parent / REGISTRY_DB))


def default_registry_uri() -> str:
    """Where a model URI is looked up when no URI is given: MLFLOW_TRACKING_URI, else the project registry that
    sweeps with the default output folders register into (never MLflow's own ./mlflow.db in the working folder)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str(OUTPUTS_DIR / REGISTRY_DB)


def registry_client(cfg: MlflowConfig, output_dir: str | os.PathLike):
    """An MlflowClient on the sweep's runs (tracking) and the project's registry."""
    from mlflow import MlflowClient

    uri = registry_uri(cfg, output_dir)
    if uri.startswith("sqlite:///"):
        create_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    client(cfg, output_dir)  # creates the sweep's own store if needed
    return MlflowClient(tracking_uri=tracking_uri(cfg, output_dir), registry_uri=uri)


def open_registry(uri: str):
    """An MlflowClient on a registry URI alone (promotion, serving)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _already_exists(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def alias_version(c, name: str, alias: str) -> str | None:
    """The version `alias` points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(retry(c.get_model_version_by_alias, name, alias).version)
    except MlflowException:
        return None


@contextlib.contextmanager
def alias_lock(c, name: str, timeout_s: float = 120.0):
    """Hold NAME's alias lock: a registered model NAME--alias-lock, created (atomic) to take it, deleted to free it.
    One left by a process that died is taken over once its lease has expired."""
    from mlflow.exceptions import MlflowException

    lock, holder = f"{name}--alias-lock", f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.time() + timeout_s
    while True:
        try:
            retry(c.create_registered_model, lock, tags={"holder": holder, "expires_at": str(time.time() + LOCK_LEASE_S)},
                  description="gepa_lab: held while an alias of " + name + " moves")
            break
        except MlflowException as exc:
            if not _already_exists(exc):
                raise
        with contextlib.suppress(MlflowException):
            if float(retry(c.get_registered_model, lock).tags.get("expires_at", "0")) < time.time():
                retry(c.delete_registered_model, lock)
                continue
        if time.time() > deadline:
            raise RegistrationError(f"could not take the alias lock {lock} within {timeout_s:g} s")
        time.sleep(0.1)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            retry(c.delete_registered_model, lock)


def _record_move(c, name: str, version: str, alias: str, record: dict[str, Any]) -> None:
    entry = {"alias": alias, "version": version, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    retry(c.set_model_version_tag, name, version, f"alias_move.{alias}.{int(time.time() * 1000)}",
          json.dumps(entry, sort_keys=True, default=str)[:4900])


def alias_moves(c, name: str, version: str) -> list[dict[str, Any]]:
    """The alias moves recorded on a version, oldest first."""
    tags = retry(c.get_model_version, name, version).tags
    moves = [k for k in tags if k.startswith("alias_move.")]
    return [json.loads(tags[k]) for k in sorted(moves, key=lambda k: int(k.rsplit(".", 1)[1]))]


def move_alias(c, name: str, alias: str, version: str, *, expected: str | None, record: dict[str, Any],
               champion_alias: str = "champion") -> None:
    """Point `alias` at `version` if it still points at `expected` (None: nowhere), else raise AliasMoveConflict.
    Moving the champion alias keeps the version it leaves under `previous`. The move is recorded on `version`."""
    with alias_lock(c, name):
        current = alias_version(c, name, alias)
        if current != expected:
            raise AliasMoveConflict(f"{name}@{alias} is version {current}, not {expected} as read: decide again")
        retry(c.set_registered_model_alias, name, alias, version)
        if alias == champion_alias and current and current != version:
            retry(c.set_registered_model_alias, name, PREVIOUS, current)
        _record_move(c, name, version, alias, {**record, "from_version": current})


def rollback(c, name: str, champion_alias: str = "champion", by: str = "rollback") -> dict[str, Any]:
    """Champion back to the version kept under `previous`; the one it leaves becomes `previous`."""
    with alias_lock(c, name):
        current, previous = alias_version(c, name, champion_alias), alias_version(c, name, PREVIOUS)
        if previous is None:
            raise RegistrationError(f"{name} has no '{PREVIOUS}' version to roll back to")
        retry(c.set_registered_model_alias, name, champion_alias, previous)
        if current:
            retry(c.set_registered_model_alias, name, PREVIOUS, current)
        _record_move(c, name, previous, champion_alias, {"by": by, "from_version": current})
    return {"name": name, "champion": previous, PREVIOUS: current}


def sweep_version(c, name: str, parent_run_id: str):
    """The version of `name` the sweep with this MLflow parent run registered (tag gepa_lab.sweep_run), or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = retry(c.search_model_versions, f"name = '{name}' AND tags.`{SWEEP_RUN_TAG}` = '{parent_run_id}'")
    except MlflowException:
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


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


def model_metadata(run_cfg: RunConfig, summary: dict[str, Any], trial_id: str | None,
                   test_scores: dict[str, float] | None = None) -> dict[str, Any]:
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
        # per-example test scores {example_id: score}: what the promotion guard pairs with the champion's
        "test_scores": {str(k): float(v) for k, v in test_scores.items()} if test_scores else None,
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


def _log_model(uri: str, run_id: str, program, metadata: dict, secrets: list[str]):
    import cloudpickle
    import dspy
    import mlflow
    from mlflow.models import Model

    from gepa_lab.tracking import pyfunc_flavor

    with dspy.context(**CLEARED_SETTINGS):
        # what mlflow.dspy pickles: the program and dict(dspy.settings.config) minus the trace
        if hits := find_secrets(cloudpickle.dumps((program, dict(dspy.settings.config))), secrets):
            raise SecretInArtifact(f"refusing to log the winner: its pickle would contain secret values {hits}")
        with mlflow_uris(uri), mlflow.start_run(run_id=run_id):
            # mlflow.dspy's model, with a pyfunc loader that binds the LM (`mlflow models serve` answers with it)
            return Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=pyfunc_flavor,
                model=program,
                metadata={METADATA_KEY: metadata},
                # explicit requirements: inferring them would load the model in a subprocess (slow)
                pip_requirements=[f"dspy=={dspy.__version__}", f"mlflow=={mlflow.__version__}", f"cloudpickle=={cloudpickle.__version__}"],
            )


def registry_artifacts(reg_uri: str) -> Path | None:
    """Where a SQLite registry keeps the files of the models it registers (None for a server: they stay in its runs)."""
    if not reg_uri.startswith("sqlite:///"):
        return None
    return Path(reg_uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR


def _create_version(c, name: str, info, run_id: str, tags: dict[str, str], own_files: Path | None) -> str:
    """A new version of `name` (created if missing) holding the logged model, its tags set in the same call.
    own_files: the registry is not the runs' store; the model's files are copied there (under a fresh folder) and
    that copy is the version's source, so the version loads from the registry alone and outlives the sweep's folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        retry(c.create_registered_model, name)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    if own_files is None:
        source, model_id = info.model_uri, info.model_id
    else:
        target = own_files / name / uuid.uuid4().hex
        target.parent.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=retry(c.get_logged_model, info.model_id).artifact_location,
                                                    dst_path=str(target))
        source, model_id = Path(local).resolve().as_uri(), None
    return str(retry(c.create_model_version, name, source, run_id=run_id, tags=tags, model_id=model_id).version)


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


def first_champion_only(c, name: str, version: str, alias: str) -> dict[str, Any]:
    """The promotion register_winner uses without a guard: a version becomes the champion only where there is none
    (gepa_lab.promote.guarded_promotion compares it with the champion it would replace)."""
    current = alias_version(c, name, alias)
    if current is None:
        move_alias(c, name, alias, version, expected=None, record={"by": "first champion"}, champion_alias=alias)
        return {"alias": alias, "reason": "no champion yet"}
    reason = f"no guard given: version {current} stays {alias}"
    move_alias(c, name, CHALLENGER, version, expected=alias_version(c, name, CHALLENGER), record={"by": "registration", "reason": reason})
    return {"alias": CHALLENGER, "reason": reason}


def register_winner(
    cfg: MlflowConfig,
    output_dir: str | os.PathLike,
    parent_run_id: str,
    winner_summary: dict[str, Any],
    trial_config: dict[str, Any],
    load_back: dict[str, Any],
    *,
    test_scores: dict[str, float] | None = None,
    promote: Callable[[Any, str, str, str], dict[str, Any]] = first_champion_only,
) -> dict[str, Any]:
    """Log + register the winner (once per sweep and model name), run the load-back check in a fresh process, and
    if it passed hand the version to `promote(client, name, version, alias)`, which returns {"alias": where it went
    (cfg.alias or "challenger"), "reason": ...}. Called once per task, it registers one version per task.

    load_back: {"api_base": live endpoint of the task LM (required unless the recorded one is still up),
    optional "api_key" (passed to the child in env var lm.api_key_env), "n" (default cfg.load_back_examples),
    "max_error_rate" (default 0.0), "min_score" (default none), "timeout_s" (default 600),
    "process" (a LoadBackProcess started earlier; default: one started now)}.
    test_scores: the winner's per-example test scores {example_id: score}, recorded in the model's metadata for
    the promotion guard. A rerun of the sweep (same output_dir) finds the version it registered and goes on from
    where that one stands: no second version.
    Returns {name, version, model_uri, alias (None unless the champion alias moved), champion_uri, promotion,
    load_back_ok, load_back_score, load_back, run_id, trial_id, tracking_uri, registry_uri, message}.
    """
    uri = tracking_uri(cfg, output_dir)
    reg_uri = registry_uri(cfg, output_dir)
    run_cfg = RunConfig.model_validate(trial_config)
    name = registered_model_name(cfg, run_cfg.task.name)
    trial_dir = trial_config.get("output_dir")
    trial_id = Path(trial_dir).name if trial_dir else None
    sweep_key = str(Path(output_dir).resolve())
    c = registry_client(cfg, output_dir)
    existing = sweep_version(c, name, parent_run_id)
    if existing is not None and existing.tags.get("promotion"):
        return _recorded_result(c, cfg, name, existing, uri, reg_uri, trial_id)
    if existing is not None:
        version, run_id = str(existing.version), existing.run_id
    else:
        version, run_id = _log_and_register(cfg, output_dir, c, uri, reg_uri, name, parent_run_id, winner_summary,
                                            run_cfg, trial_dir, trial_id, sweep_key, load_back, test_scores)
    model_uri = f"models:/{name}/{version}"

    n = int(load_back.get("n") or cfg.load_back_examples)
    check = load_back_check(
        reg_uri, model_uri, n, load_back.get("api_base"), run_cfg.lm.api_key_env, load_back.get("api_key"),
        float(load_back.get("max_error_rate", 0.0)), float(load_back.get("timeout_s", 600.0)), load_back.get("process"),
    )
    score = check.get("score")
    min_score = load_back.get("min_score")
    if check["ok"] and min_score is not None and (score is None or score < float(min_score)):
        check["ok"] = False
        check["error"] = f"load-back score {score} is below min_score {min_score}"
    result: dict[str, Any] = {
        "name": name, "version": version, "model_uri": model_uri, "alias": None, "champion_uri": None, "promotion": None,
        "load_back_ok": check["ok"], "load_back_score": score, "load_back": check, "run_id": run_id,
        "trial_id": trial_id, "tracking_uri": uri, "registry_uri": reg_uri,
    }
    status_tags = {"load_back_status": "passed" if check["ok"] else "failed"}
    if score is not None:
        status_tags["load_back_score"] = str(score)
    if not check["ok"]:
        status_tags["load_back_error"] = redact_text(str(check.get("error", "")))[:5000]
    for key, value in status_tags.items():
        retry(c.set_model_version_tag, name, version, key, value)
    if check["ok"]:
        promotion = promote(c, name, version, cfg.alias)
        result["promotion"] = promotion
        retry(c.set_model_version_tag, name, version, "promotion", json.dumps(promotion, default=str)[:4900])
        if promotion["alias"] == cfg.alias:
            result.update(alias=cfg.alias, champion_uri=f"models:/{name}@{cfg.alias}")
            result["message"] = (f"registered {model_uri}; load-back score {score:.4f} on {check.get('n')} test examples; "
                                 f"alias '{cfg.alias}' -> version {version} ({promotion['reason']})")
        else:
            result["message"] = (f"registered {model_uri} as '{promotion['alias']}'; alias '{cfg.alias}' NOT moved: "
                                 f"{promotion['reason']}")
            print(f"[gepa_lab] {result['message']}", file=sys.stderr)
    else:
        retry(c.set_model_version_tag, name, version, "promotion", json.dumps({"alias": None, "reason": "load-back check failed"}))
        result["message"] = (f"registered {model_uri}, but the load-back check FAILED ({check.get('error')}); "
                             f"alias '{cfg.alias}' NOT moved")
        print(f"[gepa_lab] {result['message']}", file=sys.stderr)
    log_metrics(client(cfg, output_dir), parent_run_id, {"load_back_score": score, "load_back_ok": check["ok"]})
    set_tags(client(cfg, output_dir), parent_run_id, {"registered_model": name, "registered_model_version": version,
                                                      "champion_moved": str(result["alias"] is not None).lower()})
    return result


def _log_and_register(cfg, output_dir, c, uri, reg_uri, name, parent_run_id, winner_summary, run_cfg, trial_dir, trial_id,
                      sweep_key, load_back, test_scores) -> tuple[str, str]:
    program_path = winner_summary.get("program_path")
    if not program_path or not Path(program_path).is_file():
        raise RegistrationError(f"the winner's program state {program_path!r} does not exist")
    program = rebuild_program(run_cfg, program_path)
    expected = winner_summary.get("best_instructions") or {}
    got = {n: p.signature.instructions for n, p in program.named_predictors()}
    if expected and got != expected:
        raise RegistrationError(f"{program_path} does not hold the winner's instructions recorded in its summary")

    secrets = secret_values(extra=[k for k in (run_cfg.lm.api_key(), load_back.get("api_key")) if k])
    runs = client(cfg, output_dir)
    run_id = _winner_run(runs, parent_run_id, trial_dir)
    if run_id is None:  # no trial run to attach to: a nested run of its own
        parent = retry(runs.get_run, parent_run_id)
        run_id = retry(runs.create_run, parent.info.experiment_id, run_name="winner",
                       tags={"mlflow.parentRunId": parent_run_id, "gepa_lab.kind": "winner", "gepa_lab.trial_id": trial_id or ""}).info.run_id
        retry(runs.set_terminated, run_id, "FINISHED")
    meta = model_metadata(run_cfg, winner_summary, trial_id, test_scores)
    info = _log_model(uri, run_id, program, meta, secrets)
    tags = {
        SWEEP_TAG: sweep_key, SWEEP_RUN_TAG: parent_run_id, "gepa_lab.sweep_id": Path(sweep_key).name, "gepa_lab.trial_id": trial_id,
        "config_hash": winner_summary.get("config_hash"), "git_commit": winner_summary.get("git_commit"),
        "corpus_manifest_hash": winner_summary.get("corpus_manifest_hash"),
        "best_val_score": winner_summary.get("best_val_score"), "best_test_score": winner_summary.get("best_test_score"),
        "lm.model": run_cfg.lm.model, "load_back_status": "pending",
    }
    with mlflow_uris(uri):  # MLflow resolves the logged model's models:/m-... source through the global URIs
        version = _create_version(c, name, info, run_id, {k: str(v) for k, v in tags.items() if v is not None},
                                  None if uri == reg_uri else registry_artifacts(reg_uri))
    return version, run_id


def _recorded_result(c, cfg: MlflowConfig, name: str, mv, uri: str, reg_uri: str, trial_id: str | None) -> dict[str, Any]:
    """What register_winner returned for a version this sweep registered and decided already (a rerun)."""
    tags = mv.tags
    promotion = json.loads(tags["promotion"])
    moved = promotion.get("alias") == cfg.alias
    version = str(mv.version)
    return {
        "name": name, "version": version, "model_uri": f"models:/{name}/{version}", "alias": cfg.alias if moved else None,
        "champion_uri": f"models:/{name}@{cfg.alias}" if moved else None, "promotion": promotion,
        "load_back_ok": tags.get("load_back_status") == "passed",
        "load_back_score": float(tags["load_back_score"]) if "load_back_score" in tags else None, "load_back": None,
        "run_id": mv.run_id, "trial_id": trial_id, "tracking_uri": uri, "registry_uri": reg_uri,
        "message": f"already registered by this sweep: models:/{name}/{version} ({promotion.get('reason')})",
    }
