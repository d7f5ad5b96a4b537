"""Fixtures for corpus tests: a throwaway workspace with its own conf dir, raw data dir and corpora root, so the
tests never touch the repository's corpora/."""
from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gepa_lab.corpus import CorpusConfig, load_corpus_config

LABELS = ["billing", "delivery", "refund"]


@dataclass
class Workspace:
    base: Path  # relative raw paths in configs resolve against this
    conf: Path  # corpus YAML files
    root: Path  # prepared corpora

    def write_csv(self, rel: str, rows: list[dict[str, Any]], *, encoding: str = "utf-8") -> Path:
        path = self.base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding=encoding) as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    def write_yaml(self, name: str, data: dict[str, Any], *, file_name: str | None = None) -> Path:
        path = self.conf / f"{file_name or name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def load(self, name: str, overrides: tuple[str, ...] | list[str] = ()) -> CorpusConfig:
        return load_corpus_config(name, overrides, conf_dir=self.conf, base_dir=self.base)

    def snapshot(self, name: str) -> dict[str, tuple[bytes, int]]:
        """Bytes and mtime of every file of a prepared corpus."""
        d = self.root / name
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}

    labels = LABELS

    @staticmethod
    def ticket_rows(n_per_label: int = 20) -> list[dict[str, Any]]:
        return ticket_rows(n_per_label)

    @staticmethod
    def ticket_config(name: str = "tickets", **changes: Any) -> dict[str, Any]:
        return ticket_config(name, **changes)

    def leftovers(self) -> list[str]:
        """Anything in the corpora root or the temp dir besides prepared corpus folders."""
        junk = [p.name for p in self.root.iterdir() if p.name.startswith(".")] if self.root.exists() else []
        junk += [p.name for p in Path(tempfile.gettempdir()).iterdir()]
        return junk


def ticket_rows(n_per_label: int = 20) -> list[dict[str, Any]]:
    """Support-ticket-like rows: distinct texts, three labels, plus an unused column."""
    rows = []
    for i in range(n_per_label):
        for j, lab in enumerate(LABELS):
            rows.append({"ticket": f"ticket {i} about {lab}  please   help", "topic": lab, "priority": (i + j) % 3})
    return rows


def ticket_config(name: str = "tickets", **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "source": {"files": "data/tickets.csv"},
        "inputs": {"text": "ticket"},
        "answer": {"label": "topic"},
        "kind": "classification",
        "splits": {"train": 24, "val": 9, "test": 15},
        "seed": 0,
        "license": "CC0 1.0",
    }
    cfg.update(changes)
    return cfg


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    base = tmp_path / "project"
    (base / "conf").mkdir(parents=True)
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    # temp files (HF cache) go here, so tests can check that nothing is left behind
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return Workspace(base=base, conf=base / "conf", root=base / "corpora")


@pytest.fixture
def tickets(ws: Workspace) -> Workspace:
    """A workspace with data/tickets.csv (60 rows, 3 labels) and conf/tickets.yaml."""
    ws.write_csv("data/tickets.csv", ticket_rows())
    ws.write_yaml("tickets", ticket_config())
    return ws

