"""The Parquet sink: each trial writes its own files under results/TABLE/, atomically, so
concurrent trials and nodes never clash and a reader never sees half a file."""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gepa_lab.tracking.secrets import redact
from gepa_lab import atomic
from gepa_lab.events import Event, interval_bounds
from gepa_lab.results.schema import SCHEMAS



def write_table(path: Path, table: str, rows: list[dict[str, Any]]) -> None:
    """Rows -> one Parquet file with the table's schema (missing fields are null, unknown ones dropped)."""
    schema = SCHEMAS[table]
    with atomic.atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema), tmp)


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class ResultsWriter:
    """Buffers candidate/evaluation rows and writes them with the GEPA state that holds them: at every save of GEPA's
    state and at the end. A trial stopped early (paused, failed, killed) keeps only the rows of the candidates its
    saved state holds: a rerun resumes from that state and proposes the others again, under the same indices. Test
    evaluations are the trial's own, not GEPA's: written at once (a resumed run reads the seed's back, not again).
    segment: the PBT segment the trial runs in (0 outside PBT); its rows carry it."""

    def __init__(self, root: str | Path, sweep_id: str = "", trial_config: dict | None = None, segment: int = 0):
        self.root = Path(root)
        self.sweep_id = sweep_id
        self.trial_config = trial_config
        self.segment = segment
        self.pending: dict[str, list[dict]] = defaultdict(list)
        self.trial_row: dict[str, Any] = {}
        self.lock = threading.Lock()
        self._next_part: dict[tuple[str, str], int] = {}  # (table, trial_id) -> the next part's number

    def handle(self, event: Event) -> None:
        with self.lock:
            getattr(self, f"_on_{event.kind}", lambda e: None)(event)

    def _key(self, event: Event) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "trial_id": event.trial_id}

    def _on_trial_started(self, event: Event) -> None:
        d = event.data
        self.trial_row = {
            **self._key(event),
            "task": d["config"]["task"]["name"],
            "config_json": json.dumps(redact(self.trial_config or d["config"]), sort_keys=True),
            "config_hash": d["config_hash"],
            "corpus_manifest_hash": d["manifest_hash"],
            "git_commit": d["git_commit"],
            "git_dirty": d.get("git_dirty"),
            "git_diff_hash": d.get("git_diff_hash"),
            "started_at": utc(event.time),
        }
        self._write_trial("running", event)

    def _on_candidate(self, event: Event) -> None:
        d = event.data
        instructions = d["instructions"]
        self.pending["candidates"].append(
            {
                **self._key(event),
                "segment": self.segment,
                "candidate_idx": d["candidate_idx"],
                "iteration": d["iteration"],
                "parents": d["parents"],
                "val_score": d["val_score"],
                "metric_calls": d["metric_calls"],
                "instruction": next(iter(instructions.values()), ""),
                "instructions_json": json.dumps(instructions, sort_keys=True),
                "created_at": utc(event.time),
            }
        )

    def _on_evaluation(self, event: Event) -> None:
        d = event.data
        predictions, feedback = d.get("predictions") or {}, d.get("feedback") or {}
        rows = [{**self._key(event), "segment": self.segment, "split": d["split"], "candidate_idx": d["candidate_idx"],
                 "example_id": str(i), "score": s, "prediction": predictions.get(i), "feedback": feedback.get(i)}
                for i, s in d["scores"].items()]
        if d["split"] == "test":  # the trial's own evaluation, whole once made and not held by GEPA's state: on disk now
            self._write_part(event.trial_id, "evaluations", rows)
        else:
            self.pending["evaluations"].extend(rows)

    def _on_state_saved(self, event: Event) -> None:
        # what a saved state holds is on disk with it: a run resumed from that state does not record the seed again
        # (gepa_lab.trial.GEPAEvents), so a kill in the first iteration would otherwise lose the seed's row
        self._flush(event.trial_id)

    def _on_trial_finished(self, event: Event) -> None:
        summary = event.data["summary"]
        self._usage(event, summary["lm_usage"])
        self._flush(event.trial_id)
        fields = ("seed_val_score", "seed_test_score", "best_val_score", "best_test_score", "best_candidate_idx",
                  "num_candidates", "metric_calls", "lm_calls", "wall_seconds", "program_path")
        self.trial_row.update({k: summary[k] for k in fields})
        self.trial_row.update(interval_bounds(summary))
        self.trial_row["user_code_errors"] = summary.get("user_code_errors")  # absent where written before it was counted
        for key in ("gepa_stop_reason", "iterations", "proposals"):  # absent from summaries written before they were
            self.trial_row[key] = summary.get(key)
        stop_reason = summary.get("stop_reason")  # ended early by the sweep (budget, ASHA), keeping what it found
        self._write_trial("stopped" if stop_reason else "completed", event, error=stop_reason)

    def _on_trial_failed(self, event: Event) -> None:
        self._keep_saved(event.data["saved_candidates"])
        self._usage(event, event.data["lm_usage"])
        self._flush(event.trial_id)
        self.trial_row.setdefault("sweep_id", self.sweep_id)
        self.trial_row.setdefault("trial_id", event.trial_id)
        self._write_trial("failed", event, error=event.data["error"])

    def _on_trial_paused(self, event: Event) -> None:
        self._keep_saved(event.data["saved_candidates"])
        self._usage(event, event.data["lm_usage"])
        self._flush(event.trial_id)
        self._write_trial("paused", event)

    def _usage(self, event: Event, usage: dict[str, dict[str, Any]]) -> None:
        """This process's use of the LMs, per role, as it ends the trial (finished, paused or failed): the requests were
        sent whatever became of the trial, and a resumed trial's next process adds its own rows."""
        for role, counts in usage.items():
            self.pending["lm_usage"].append({**self._key(event), "segment": self.segment, "role": role, **counts})

    def _keep_saved(self, saved_candidates: int) -> None:
        """Drops the pending rows of candidates GEPA's saved state does not hold (indices from saved_candidates on)."""
        for table in ("candidates", "evaluations"):
            self.pending[table] = [row for row in self.pending[table] if row["candidate_idx"] < saved_candidates]

    def _write_trial(self, status: str, event: Event, error: str | None = None) -> None:
        row = {**self.trial_row, "segment": self.segment, "status": status, "error": error}
        row["ended_at"] = None if status in ("running", "paused") else utc(event.time)
        write_table(self.root / "trials" / f"{event.trial_id}.parquet", "trials", [row])

    def _flush(self, trial_id: str) -> None:
        for table, rows in self.pending.items():
            if rows:
                self._write_part(trial_id, table, rows)
        self.pending.clear()

    def _write_part(self, trial_id: str, table: str, rows: list[dict]) -> None:
        folder = self.root / table
        # a later PBT segment's parts carry its number: no segment of the trial ever writes another's names
        prefix = f"{trial_id}-" if self.segment == 0 else f"{trial_id}-s{self.segment:03d}-"
        # the folder is listed once per table and trial (a resumed trial continues after its parts), then counted
        # here: listing a sweep's thousands of parts at every flush grew with the sweep
        key = (table, trial_id)
        if key not in self._next_part:
            self._next_part[key] = len(list(folder.glob(f"{prefix}[0-9]*.parquet"))) if folder.exists() else 0
        seq, self._next_part[key] = self._next_part[key], self._next_part[key] + 1
        write_table(folder / f"{prefix}{seq:05d}.parquet", table, rows)
