"""MLflow sink: a parent run per sweep, a nested run per trial; a run of its own for a trial no sweep run holds
(``python -m gepa_lab.run``, a W&B Sweeps agent's trial).

Embedded default: ``sqlite:///<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlartifacts``; a
remote ``tracking_uri`` (``http://host:port`` of an ``mlflow server``) works the same way, artifacts then go
through the server. Trials run in other processes (Ray), so nothing here relies on MLflow's fluent,
per-process "active run": every call goes through an ``MlflowClient`` with an explicit run id, and the
nested run points at its parent with the ``mlflow.parentRunId`` tag.

A trial run holds
- params: the trial's resolved config, flattened (``lm.model``, ``optimizer.max_metric_calls``, ...), secrets masked;
- tags: ``mlflow.parentRunId`` (in a sweep), ``git_commit`` (+ ``mlflow.source.git.commit``), ``config_hash``,
  ``corpus_manifest_hash``, ``versions`` (JSON) and ``version.<package>``, ``gepa_lab.trial_id``,
  ``gepa_lab.output_dir``, ``gepa_lab.status``, ``error`` on failure;
- metrics, step = metric calls used so far: ``best_val_score``, ``iteration``, ``accepted``, ``seconds``,
  ``lm.<role>.<field>`` per iteration; ``candidate_val_score`` per candidate; ``test_score`` (step =
  candidate index) per test evaluation; at the end ``seed_val_score``, ``seed_test_score``,
  ``best_test_score``, ``best_candidate_idx``, ``num_candidates``, ``metric_calls``, ``lm_calls``, ``wall_seconds``
  and the 95% intervals' bounds ``seed_test_ci95_low``/``_high``, ``best_test_ci95_low``/``_high``,
  ``test_gain_ci95_low``/``_high`` (the sweep's parent run holds the winner's);
- artifacts: ``summary.json`` (secrets masked), ``candidates.json``, ``program.json`` (the winner's dspy state);
- status FINISHED, or FAILED (trial_failed, or finish() before trial_finished).

A trial or sweep that resumes (its worker or driver was killed, or it was stopped) writes on into the run it started:
the run's id is kept in a file of its folder (``run_id_file``), and the run is reopened (status RUNNING again).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from gepa_lab import atomic
from gepa_lab.compose import flatten
from gepa_lab.config.identity import git_commit, versions
from gepa_lab.config.schema import MlflowConfig
from gepa_lab.events import Event, interval_bounds
from gepa_lab.tracking.secrets import find_secrets, redact, redact_text

T = TypeVar("T")
METADATA_KEY = "gepa_lab"  # a registered model's gepa_lab metadata (what it was optimized for) lives under this key
PARAM_MAX = 6000
TAG_MAX = 8000
KEY_MAX = 250
USAGE_FIELDS = (
    "requests", "cache_hits", "errors", "retries", "prompt_tokens", "completion_tokens",
    "latency_p50_s", "latency_p95_s", "cost_usd",
)
FINAL_METRICS = (
    "seed_val_score", "seed_test_score", "best_val_score", "best_test_score", "best_candidate_idx",
    "num_candidates", "metric_calls", "lm_calls", "wall_seconds",
)


class SecretInArtifact(RuntimeError):
    pass


# ---- where things go ------------------------------------------------------------------------------------
# MLflow's URIs are global to the process (and its MLFLOW_*_URI variables): one thread's section at a time, or two
# threads' saves and restores interleave and one leaves the other's URI set (two promotions racing in one process)
_URIS_LOCK = threading.RLock()


@contextlib.contextmanager
def mlflow_uris(uri: str | None) -> Iterator[None]:
    """Use `uri` as MLflow's tracking and registry URI for a while (models:/ URIs resolve through the
    global registry URI only), then restore exactly what was set before: get_*_uri() would return MLflow's
    derived defaults, and setting those back would pin this process (and its children, through the
    MLFLOW_*_URI variables) to them. Other threads' sections wait for this one."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if not uri:
        yield
        return
    with _URIS_LOCK:
        saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
        saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            registry_utils._registry_uri = saved[1]
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def tracking_uri(cfg: MlflowConfig, output_dir: str | os.PathLike) -> str:
    """cfg.tracking_uri, or the embedded SQLite store sqlite:///<output_dir>/mlflow.db."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    return "sqlite:///" + str((Path(output_dir) / "mlflow.db").resolve())


def artifact_location(cfg: MlflowConfig, output_dir: str | os.PathLike) -> str | None:
    """Where a new experiment keeps artifacts: next to a SQLite store (<dir>/mlartifacts); for a server,
    None = the server's default (mlflow-artifacts:/, i.e. through the server)."""
    uri = tracking_uri(cfg, output_dir)
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def client(cfg: MlflowConfig, output_dir: str | os.PathLike):
    from mlflow import MlflowClient

    uri = tracking_uri(cfg, output_dir)
    if uri.startswith("sqlite:///"):
        create_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def create_sqlite_store(db: Path) -> None:
    """A new SQLite store at db, unless one is there: a copy of an empty, fully migrated store kept per MLflow version
    in this environment. Left to MLflow, a store's first open creates the tables and runs every alembic migration,
    ~8 s on 2 cores, once per sweep. Where the copy cannot be made, MLflow creates the store as usual."""
    db.parent.mkdir(parents=True, exist_ok=True)
    if db.exists():
        return
    try:
        template = _empty_store_template()
        staged = db.with_name(f".{db.name}.{uuid.uuid4().hex}")
        try:
            shutil.copyfile(template, staged)
            os.link(staged, db)  # unlike a rename, never replaces a store another process created meanwhile
        except FileExistsError:
            pass
        finally:
            staged.unlink(missing_ok=True)  # also a copy cut short (a full disk)
    except (OSError, ImportError, _sqlalchemy_error()):
        pass


def _empty_store_template() -> Path:
    import mlflow

    template = Path(sys.prefix) / "var" / "cache" / "gepa_lab" / f"mlflow-{mlflow.__version__}-empty.db"
    if not template.exists():
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables  # what MLflow runs on a store's first open

        template.parent.mkdir(parents=True, exist_ok=True)
        staged = template.with_name(f".{template.name}.{uuid.uuid4().hex}")
        engine = sqlalchemy.create_engine(f"sqlite:///{staged}")
        try:
            _initialize_tables(engine)
            os.replace(staged, template)  # whole or absent: a concurrent maker writes the same schema
        finally:
            engine.dispose()
            staged.unlink(missing_ok=True)
    return template


def _sqlalchemy_error() -> type[Exception]:
    import sqlalchemy.exc

    return sqlalchemy.exc.SQLAlchemyError


def retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call fn, retrying while SQLite is locked by another trial process."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def experiment_id(cfg: MlflowConfig, output_dir: str | os.PathLike, mlflow_client=None) -> str:
    from mlflow.exceptions import MlflowException

    c = mlflow_client or client(cfg, output_dir)
    found = retry(c.get_experiment_by_name, cfg.experiment)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            retry(c.restore_experiment, found.experiment_id)
        return found.experiment_id
    try:
        return retry(c.create_experiment, cfg.experiment, artifact_location=artifact_location(cfg, output_dir))
    except MlflowException:  # another process created it first
        found = retry(c.get_experiment_by_name, cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


# ---- params and metrics -----------------------------------------------------------------------------------------
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")


def _key(key: str) -> str:
    return _BAD_KEY.sub("_", key)[:KEY_MAX]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:PARAM_MAX]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = flatten(redact(params))
    items = [Param(_key(k), _param_value(v)) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        retry(c.log_batch, run_id, params=items[i : i + 100])


def log_metrics(c, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(_key(k), x, now, int(step)) for k, v in metrics.items() if (x := _number(v)) is not None]
    for i in range(0, len(items), 1000):
        retry(c.log_batch, run_id, metrics=items[i : i + 1000])


def set_tags(c, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(_key(k), redact_text(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))[:TAG_MAX])
             for k, v in tags.items() if v is not None]
    for i in range(0, len(items), 100):
        retry(c.log_batch, run_id, tags=items[i : i + 100])


def identity_tags(git: str | None, config_hash: str | None, pkg_versions: dict[str, str] | None) -> dict[str, Any]:
    tags: dict[str, Any] = {"git_commit": git, "mlflow.source.git.commit": git, "config_hash": config_hash}
    if pkg_versions:
        tags["versions"] = pkg_versions
        tags.update({f"version.{name}": v for name, v in pkg_versions.items()})
    return tags


def usage_metrics(usage: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    return {f"lm.{role}.{k}": u.get(k) for role, u in (usage or {}).items() for k in USAGE_FIELDS}


def log_json_artifact(c, run_id: str, data: Any, name: str) -> None:
    """A JSON artifact, secrets masked, refused if a known secret value is still inside."""
    text = json.dumps(redact(data), indent=2, sort_keys=True, default=str)
    if hits := find_secrets(text):
        raise SecretInArtifact(f"refusing to log {name}: it contains secret values {hits}")
    retry(c.log_text, run_id, text, name)


def log_file_artifact(c, run_id: str, path: Path) -> None:
    """A file as an artifact, refused if a known secret value is inside it."""
    if hits := find_secrets(path.read_bytes()):
        raise SecretInArtifact(f"refusing to log {path}: it contains secret values {hits}")
    retry(c.log_artifact, run_id, str(path))


def log_report(cfg: MlflowConfig, output_dir: str | os.PathLike, run_id: str, path: Path) -> None:
    """The HTML report (gepa_lab.results.report) as an artifact of run_id, also of a run already ended."""
    log_file_artifact(client(cfg, output_dir), run_id, path)


def own_trial_run_id(cfg: MlflowConfig, output_dir: str | os.PathLike, trial_output_dir: str) -> str | None:
    """The newest run of a trial that no sweep run holds (MlflowSink without a parent: `gepa_lab.run`), found by its
    gepa_lab.output_dir tag; None when there is none."""
    c = client(cfg, output_dir)
    runs = retry(
        c.search_runs,
        [experiment_id(cfg, output_dir, c)],
        filter_string=f"tags.`gepa_lab.kind` = 'trial' AND tags.`gepa_lab.output_dir` = '{trial_output_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def reopen_run(c, run_id_file: Path | None) -> str | None:
    """The run whose id run_id_file holds, set RUNNING again (an error tag of its last end removed); None when there
    is no such file or the store no longer holds that run (a new one is started then)."""
    from mlflow.exceptions import MlflowException

    if run_id_file is None or not run_id_file.is_file():
        return None
    run_id = run_id_file.read_text().strip()
    try:
        run = retry(c.get_run, run_id)
    except MlflowException:
        return None
    if "error" in run.data.tags:
        retry(c.delete_tag, run_id, "error")
    retry(c.update_run, run_id, status="RUNNING")
    return run_id


def record_run_id(run_id_file: Path | None, run_id: str) -> None:
    if run_id_file is not None:
        atomic.write_text(run_id_file, run_id + "\n")


# ---- the sweep's parent run ---------------------------------------------------------------------------------
def start_parent_run(cfg: MlflowConfig, output_dir: str | os.PathLike, sweep_name: str, params: dict[str, Any],
                     run_id_file: Path | None = None) -> str:
    """Create the sweep's parent run (left RUNNING: trials nest under it), or reopen the one run_id_file names (a rerun
    of the sweep); return its run id."""
    c = client(cfg, output_dir)
    if run_id := reopen_run(c, run_id_file):
        return run_id
    exp = experiment_id(cfg, output_dir, c)
    run = retry(c.create_run, exp, run_name=sweep_name, tags={"gepa_lab.kind": "sweep", "gepa_lab.output_dir": str(Path(output_dir).resolve())})
    run_id = run.info.run_id
    set_tags(c, run_id, identity_tags(git_commit(), None, versions()))
    log_params(c, run_id, params)
    record_run_id(run_id_file, run_id)
    return run_id


def end_parent_run(
    cfg: MlflowConfig,
    output_dir: str | os.PathLike,
    run_id: str,
    summary: dict[str, Any] | None = None,
    status: str = "FINISHED",
) -> None:
    """Log the sweep summary (numbers as metrics, the whole as summary.json) and close the parent run."""
    c = client(cfg, output_dir)
    try:
        if summary:
            numbers = {k: v for k, v in flatten(summary).items() if _number(v) is not None}
            log_metrics(c, run_id, {**numbers, **interval_bounds(summary)})  # the winner's intervals, as scalars
            reg = summary.get("registered_model") or {}
            set_tags(c, run_id, {
                "best_trial_id": summary.get("best_trial_id"),
                "registered_model": reg.get("name"),
                "registered_model_version": reg.get("version"),
                "champion_moved": reg.get("alias") is not None if reg else None,
            })
            log_json_artifact(c, run_id, summary, "summary.json")
    finally:
        retry(c.set_terminated, run_id, status)


# ---- one trial ------------------------------------------------------------------------------------------
class MlflowSink:
    """Sink (gepa_lab.events): the MLflow run of one trial, nested under parent_run_id (the sweep's run) when given,
    else in cfg.experiment; the run run_id_file names when there is one (a resumed trial). Call finish() when the
    trial ends."""

    def __init__(self, cfg: MlflowConfig, output_dir: str | os.PathLike, parent_run_id: str | None, run_name: str,
                 run_id_file: Path | None = None):
        self.cfg = cfg
        self.run_id_file = run_id_file
        self.output_dir = Path(output_dir)
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.client = None
        self.run_id: str | None = None
        self.status: str | None = None  # FINISHED | FAILED once closed
        self.candidates: list[dict[str, Any]] = []
        self.last_step = 0
        self.lock = threading.Lock()

    def handle(self, event: Event) -> None:
        if not self.cfg.enabled or self.status:
            return
        with self.lock:
            if self.run_id is None and event.kind != "trial_started":
                self._start(event, {})
            getattr(self, f"_on_{event.kind}", lambda e: None)(event)

    def _start(self, event: Event, data: dict[str, Any]) -> None:
        self.client = client(self.cfg, self.output_dir)
        self.run_id = reopen_run(self.client, self.run_id_file)
        if self.run_id is not None:
            set_tags(self.client, self.run_id, {"gepa_lab.status": "running"})
            return
        if self.parent_run_id:
            experiment = retry(self.client.get_run, self.parent_run_id).info.experiment_id
            nesting = {"mlflow.parentRunId": self.parent_run_id}
        else:
            experiment, nesting = experiment_id(self.cfg, self.output_dir, self.client), {}
        config = data.get("config") or {}
        run = retry(
            self.client.create_run,
            experiment,
            run_name=self.run_name,
            tags={
                **nesting,
                "gepa_lab.kind": "trial",
                "gepa_lab.trial_id": event.trial_id,
                "gepa_lab.status": "running",
                **({"gepa_lab.output_dir": str(config["output_dir"])} if config.get("output_dir") else {}),
                **({"task": config["task"]["name"]} if config.get("task") else {}),
            },
        )
        self.run_id = run.info.run_id
        record_run_id(self.run_id_file, self.run_id)

    def _on_trial_started(self, event: Event) -> None:
        d = event.data
        if self.run_id is None:
            self._start(event, d)
        set_tags(self.client, self.run_id, {
            **identity_tags(d.get("git_commit"), d.get("config_hash"), d.get("versions")),
            "corpus_manifest_hash": d.get("manifest_hash"),
        })
        if d.get("config"):
            log_params(self.client, self.run_id, d["config"])

    def _on_candidate(self, event: Event) -> None:
        d = event.data
        self.candidates.append({k: d.get(k) for k in ("candidate_idx", "iteration", "parents", "val_score", "metric_calls", "instructions")})
        self.last_step = max(self.last_step, int(d.get("metric_calls") or 0))
        log_metrics(self.client, self.run_id, {"candidate_val_score": d.get("val_score")}, step=int(d.get("metric_calls") or 0))

    def _on_iteration(self, event: Event) -> None:
        d = event.data
        step = int(d.get("metric_calls") or 0)
        self.last_step = max(self.last_step, step)
        log_metrics(self.client, self.run_id, {
            "best_val_score": d.get("best_val"),
            "iteration": d.get("iteration"),
            "accepted": d.get("accepted"),
            "seconds": d.get("seconds"),
            **usage_metrics(d.get("usage")),
        }, step=step)

    def _on_evaluation(self, event: Event) -> None:
        d = event.data
        scores = list((d.get("scores") or {}).values())
        if d.get("split") == "test" and scores:
            log_metrics(self.client, self.run_id, {"test_score": sum(scores) / len(scores)}, step=int(d["candidate_idx"]))

    def _on_trial_finished(self, event: Event) -> None:
        s = dict(event.data.get("summary") or {})
        try:
            step = int(s.get("metric_calls") or self.last_step)
            log_metrics(self.client, self.run_id, {**{k: s.get(k) for k in FINAL_METRICS}, **interval_bounds(s)}, step=step)
            log_metrics(self.client, self.run_id, usage_metrics(s.get("lm_usage")), step=step)
            set_tags(self.client, self.run_id, identity_tags(s.get("git_commit"), s.get("config_hash"), s.get("versions")))
            set_tags(self.client, self.run_id, {"corpus_manifest_hash": s.get("corpus_manifest_hash"), "gepa_lab.status": "completed"})
            log_json_artifact(self.client, self.run_id, s, "summary.json")
            log_json_artifact(self.client, self.run_id, self.candidates, "candidates.json")
            program = Path(s["program_path"]) if s.get("program_path") else None
            if program is not None and program.is_file():
                log_file_artifact(self.client, self.run_id, program)
        except Exception:
            self._close("FAILED", "tracking failed while logging the trial's results")
            raise
        self._close("FINISHED")

    def _on_trial_failed(self, event: Event) -> None:
        self._close("FAILED", str(event.data.get("error", "")))

    def _close(self, status: str, error: str | None = None) -> None:
        if self.status or self.run_id is None:
            return
        self.status = status
        tags = {"gepa_lab.status": "completed" if status == "FINISHED" else "failed"}
        if error:
            tags["error"] = error
        try:
            set_tags(self.client, self.run_id, tags)
        finally:
            retry(self.client.set_terminated, self.run_id, status)

    def finish(self) -> None:
        """Close the run; a run still open here ended without trial_finished, so it is FAILED."""
        with self.lock:
            if self.run_id is not None and not self.status:
                self._close("FAILED", "the trial ended without finishing (killed, stopped or crashed)")
            self.status = self.status or "closed"
