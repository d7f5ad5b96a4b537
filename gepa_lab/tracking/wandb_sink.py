"""W&B sink: one run per trial, grouped by sweep.

What a run holds:
- config: the trial's resolved config (secrets masked by gepa_lab.tracking.secrets) plus its identity
  (config_hash, git_commit, corpus manifest hash, package versions);
- history, with ``metric_calls`` as the x axis: ``gepa/best_val_score``, ``gepa/iteration``, ``gepa/accepted``,
  ``gepa/seconds`` and ``lm/<role>/<field>`` (requests, tokens, cost, errors, latency) per GEPA iteration;
  ``candidate/val_score`` and ``candidate/idx`` per candidate;
- summary: the trial's summary.json (scores, budget used, LM usage, the winner's instructions, ...), with each
  95% interval also as ``KEY_low`` and ``KEY_high`` (``best_test_ci95_low``, ...),
  ``test_score/candidate_<idx>`` per test evaluation, ``error`` when the trial failed;
- a table ``candidates``: candidate_idx, iteration, parent, parents, val_score, metric_calls, instruction.

A resumed trial writes on into its run: the run's id is kept in a file of the trial's folder (``run_id_file``)
and W&B resumes the run under that id (offline: a new offline-run folder with the same run id, merged on sync).

Offline by default: runs land in ``<output_dir>/wandb/offline-run-*`` for a later ``wandb sync``. Online
needs a key (WANDB_API_KEY or ``wandb login``) and ``tracking.wandb.mode=online``. With Ray, the driver
must apply ``wandb_env(...)`` to os.environ before ``ray.init`` so every worker inherits it.
"""
from __future__ import annotations

import json
import netrc
import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gepa_lab import atomic
from gepa_lab.config.schema import WandbConfig
from gepa_lab.errors import ConfigError
from gepa_lab.events import Event, interval_bounds
from gepa_lab.tracking.secrets import find_secrets, redact, redact_text

CANDIDATE_COLUMNS = ["candidate_idx", "iteration", "parent", "parents", "val_score", "metric_calls", "instruction", "instructions_json"]
USAGE_FIELDS = (
    "requests", "cache_hits", "errors", "retries", "prompt_tokens", "completion_tokens",
    "latency_p50_s", "latency_p95_s", "cost_usd",
)


class WandbKeyMissing(ConfigError):
    pass


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def check_wandb_key(cfg: WandbConfig) -> None:
    """Refuse W&B online without a key (WANDB_API_KEY, or a `wandb login` entry in ~/.netrc), before anything starts."""
    if cfg.enabled and cfg.mode == "online" and not _has_wandb_key():
        raise WandbKeyMissing(
            "tracking.wandb.mode=online needs a W&B key: set WANDB_API_KEY or run `wandb login`; "
            "or use tracking.wandb.mode=offline (runs are kept under <output_dir>/wandb for a later `wandb sync`)"
        )


def wandb_env(cfg: WandbConfig, output_dir: str | os.PathLike) -> dict[str, str]:
    """Environment for W&B, to apply to os.environ before ray.init (workers inherit it).

    Offline (default): runs go to <output_dir>/wandb/. Online: raises WandbKeyMissing unless a key is
    available (WANDB_API_KEY, or a `wandb login` entry in ~/.netrc). Disabled / not enabled: WANDB_MODE=disabled.
    """
    if not cfg.enabled or cfg.mode == "disabled":
        return {"WANDB_MODE": "disabled"}
    check_wandb_key(cfg)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # WANDB_SERVICE empty: each trial process starts its own wandb-core. Inherited from whatever started the sweep (a
    # notebook, a test process), it made every trial stream through that process's core, where a killed trial's run
    # stayed open: its retry's records went into the killed attempt's file, written out only when that process exited
    return {"WANDB_MODE": cfg.mode, "WANDB_DIR": str(out), "WANDB_SERVICE": ""}


def log_report(cfg: WandbConfig, output_dir: str | os.PathLike, group: str | None, name: str, path: Path) -> None:
    """The HTML report (gepa_lab.results.report) in a W&B run of its own (job type `report`, in the sweep's group):
    as wandb.Html under the key `report`, and as an artifact of type `report`. Refused if a known secret value is in it."""
    import wandb

    text = path.read_text()
    if hits := find_secrets(text):
        raise ValueError(f"refusing to log {path} to W&B: it contains secret values {hits}")
    os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
    run = wandb.init(project=cfg.project, entity=cfg.entity, group=group, name=name, job_type="report",
                     dir=str(Path(output_dir).resolve()), mode=cfg.mode, reinit="create_new",
                     settings=wandb.Settings(console="off", silent=True))
    try:
        run.log({"report": wandb.Html(text, inject=False)})  # inject: W&B's stylesheet, fetched online
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", f"report-{group or name}"), type="report")
        artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
    finally:
        run.finish()
        wandb.teardown()  # W&B's service process: nothing else of this process writes to W&B any more


def _instruction_text(instructions: dict[str, str]) -> str:
    if len(instructions) == 1:
        return next(iter(instructions.values()))
    return "\n\n".join(f"[{name}]\n{text}" for name, text in instructions.items())


class WandbSink:
    """Sink (gepa_lab.events) writing one W&B run per trial. Call finish() when the trial ends, also on failure.

    run: an already-started run to write into instead of starting one at trial_started (a W&B Sweeps agent's,
    which W&B started with the sweep's parameters); the trial's config then goes under its config's "config" key.
    run_id_file: where the id of the run this sink starts is kept; when it holds one, that run is resumed."""

    def __init__(self, cfg: WandbConfig, output_dir: str | os.PathLike, group: str | None, run_name: str,
                 config: dict[str, Any], run: Any = None, run_id_file: Path | None = None):
        self.cfg = cfg
        self.run_id_file = run_id_file
        self.output_dir = Path(output_dir).resolve()
        self.group = group
        self.run_name = run_name
        self.config = redact(config)
        self.run = run
        self.adopted = run is not None
        self.started = False
        self.rows: list[list[Any]] = []
        self.best_idx: int | None = None
        self.table_logged = False
        self.closed = False
        self.init_error: str | None = None
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        if self.adopted:
            return not self.run.disabled
        return self.cfg.enabled and self.cfg.mode != "disabled"

    def handle(self, event: Event) -> None:
        if not self.active or self.closed or self.init_error:
            return
        with self.lock:
            if not self.started and event.kind != "trial_started":
                self._start({})
            getattr(self, f"_on_{event.kind}", lambda e: None)(event)

    # ---- events ---------------------------------------------------------------------------------------
    def _on_trial_started(self, event: Event) -> None:
        d = event.data
        identity = {
            "config_hash": d.get("config_hash"),
            "git_commit": d.get("git_commit"),
            "corpus_manifest_hash": d.get("manifest_hash"),
            "versions": d.get("versions"),
            "trial_id": event.trial_id,
        }
        if not self.started:
            self._start(identity)
        else:
            self.run.config.update({"identity": identity}, allow_val_change=True)

    def _on_candidate(self, event: Event) -> None:
        d = event.data
        parents = list(d.get("parents") or [])
        instructions = d.get("instructions") or {}
        self.rows.append([
            d["candidate_idx"],
            d.get("iteration"),
            parents[0] if parents else None,
            ",".join(str(p) for p in parents),
            d.get("val_score"),
            d.get("metric_calls"),
            _instruction_text(instructions),
            json.dumps(instructions, sort_keys=True),
        ])
        self.run.log({"candidate/val_score": d.get("val_score"), "candidate/idx": d["candidate_idx"], "metric_calls": d.get("metric_calls", 0)})

    def _on_iteration(self, event: Event) -> None:
        d = event.data
        row: dict[str, Any] = {
            "metric_calls": d.get("metric_calls", 0),
            "gepa/iteration": d.get("iteration"),
            "gepa/best_val_score": d.get("best_val"),
            "gepa/accepted": int(bool(d.get("accepted"))),
            "gepa/seconds": d.get("seconds"),
        }
        for role, usage in (d.get("usage") or {}).items():
            for key in USAGE_FIELDS:
                if usage.get(key) is not None:
                    row[f"lm/{role}/{key}"] = usage[key]
        self.run.log({k: v for k, v in row.items() if v is not None})

    def _on_evaluation(self, event: Event) -> None:
        d = event.data
        if d.get("split") != "test":
            return  # val scores arrive with each candidate
        scores = list((d.get("scores") or {}).values())
        if scores:
            self.run.summary[f"test_score/candidate_{d['candidate_idx']}"] = sum(scores) / len(scores)

    def _on_trial_finished(self, event: Event) -> None:
        summary = redact(dict(event.data.get("summary") or {}))
        self.best_idx = summary.get("best_candidate_idx")
        self.run.summary.update({**summary, **interval_bounds(summary)})  # the bounds as scalars too: W&B charts plot those
        self.run.summary["status"] = "completed"
        self._close(exit_code=0)

    def _on_trial_failed(self, event: Event) -> None:
        self.run.summary["status"] = "failed"
        self.run.summary["error"] = redact_text(str(event.data.get("error", "")))
        self._close(exit_code=1)

    # ---- run lifecycle --------------------------------------------------------------------------------
    def _start(self, identity: dict[str, Any]) -> None:
        import wandb

        self.started = True
        if self.adopted:  # W&B's sweep parameters sit at the top of this run's config, as dotted keys
            self.run.config.update({"config": self.config, "identity": identity}, allow_val_change=True)
            self._define_metrics()
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # else every run prints W&B's three-line suggestion to trace dspy with Weave (not used here) on the console
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        recorded = self.run_id_file.read_text().strip() if self.run_id_file and self.run_id_file.is_file() else None
        try:
            self.run = wandb.init(
                id=recorded,
                resume="allow" if recorded else None,
                project=self.cfg.project,
                entity=self.cfg.entity,
                group=self.group,
                name=self.run_name,
                job_type="trial",
                dir=str(self.output_dir),
                mode=self.cfg.mode,
                config={**self.config, "identity": identity},
                reinit="create_new",  # several trials may share one process; each sink owns its run
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as exc:
            self.init_error = f"{type(exc).__name__}: {exc}"
            raise
        if self.run_id_file is not None and not recorded:
            atomic.write_text(self.run_id_file, self.run.id + "\n")
        self._define_metrics()

    def _define_metrics(self) -> None:
        self.run.define_metric("metric_calls")
        for prefix in ("gepa/*", "lm/*", "candidate/*"):
            self.run.define_metric(prefix, step_metric="metric_calls")

    def _log_table(self) -> None:
        import wandb

        if self.table_logged or self.run is None:
            return
        self.table_logged = True
        table = wandb.Table(columns=[*CANDIDATE_COLUMNS, "is_best"], data=[[*row, row[0] == self.best_idx] for row in self.rows])
        self.run.log({"candidates": table})

    def _close(self, exit_code: int) -> None:
        if self.closed or self.run is None:
            return
        try:
            self._log_table()
        finally:
            self.closed = True
            self.run.finish(exit_code=exit_code)

    def finish(self) -> None:
        """Close the run; a run still open here ended without trial_finished, so it is marked failed."""
        with self.lock:
            if self.run is not None and self.active and not self.closed:
                self.run.summary["status"] = "failed"
                self.run.summary["error"] = "the trial ended without finishing (killed, stopped or crashed)"
                self._close(exit_code=1)
            self.closed = True
