"""The CLI as a user runs it (subprocesses): exit codes, one-line errors on stderr, no tracebacks.

The scenarios run as concurrent subprocesses from one module fixture: each one pays for importing HF datasets,
and running them side by side keeps the suite fast.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gepa_lab.corpus.__main__ import main

ROWS = "text,label\n" + "".join(f"message number {i},{'spam' if i % 3 == 0 else 'ham'}\n" for i in range(40))

SCENARIOS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "ok": ({}, ("splits.train=12",)),
    "no_column": ({"inputs": {"message": "txt"}}, ()),
    "no_file": ({"source": {"files": "data/missing.csv"}}, ()),
}


def _project(root: Path, **changes: Any) -> Path:
    """A project root (GEPA_LAB_ROOT) with conf/corpus/msgs.yaml over data/msgs.csv."""
    (root / "conf" / "corpus").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "msgs.csv").write_text(ROWS)
    cfg = {
        "name": "msgs",
        "source": {"files": "data/msgs.csv"},
        "inputs": {"message": "text"},
        "answer": {"label": "label"},
        "kind": "classification",
        "splits": {"train": 10, "val": 5, "test": 5},
    }
    cfg.update(changes)
    (root / "conf" / "corpus" / "msgs.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "GEPA_LAB_ROOT": str(root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    procs = {}
    for key, (changes, args) in SCENARIOS.items():
        root = _project(tmp_path_factory.mktemp(key), **changes)
        cmd = [sys.executable, "-m", "gepa_lab.corpus", "prepare", "msgs", *args]
        procs[key] = (root, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(root)))
    out = {}
    for key, (root, cmd, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[key] = (root, subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr))
    return out


def test_cli_prepare(runs: dict) -> None:
    root, res = runs["ok"]
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("corpora/msgs manifest_hash=")
    assert "prepared corpora/msgs (train 12, val 5, test 5" in res.stderr
    assert sorted(p.name for p in (root / "corpora" / "msgs").iterdir()) == [
        "manifest.json", "test.parquet", "train.parquet", "val.parquet"
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("no_column", "error: data/msgs.csv: no column 'txt' (wanted by inputs.message) (did you mean 'text'?)"),
        ("no_file", "error: data/missing.csv: raw file not found (source.files.all of corpus 'msgs')"),
    ],
)
def test_cli_errors_are_one_line(runs: dict, key: str, expected: str) -> None:
    root, res = runs[key]
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert res.stderr.startswith(expected), res.stderr
    assert not (root / "corpora").exists() or list((root / "corpora").iterdir()) == []


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same entry point, in-process: bad overrides, unknown corpus, list and show."""
    root = _project(tmp_path)
    conf, out = ["--conf-dir", str(root / "conf" / "corpus"), "--root", str(root / "corpora")], root / "corpora"
    assert main([*conf, "prepare", "msgs", "splits.train=many"]) == 2
    assert capsys.readouterr().err.strip().endswith("msgs.yaml: splits.train: Input should be a valid integer, unable to parse string as an integer")
    assert main([*conf, "prepare", "msg"]) == 2
    assert "no such corpus config (did you mean 'msgs'?)" in capsys.readouterr().err
    assert main([*conf, "list"]) == 0
    assert capsys.readouterr().out == "msgs\tnot prepared\n"
    monkeypatch.chdir(tmp_path)
    assert main([*conf, "show", "msgs"]) == 2
    assert "no manifest; prepare the corpus first" in capsys.readouterr().err
    # raw paths in this project are relative to its root; the CLI resolves them against the project root
    # (GEPA_LAB_ROOT), so here we prepare through a config that uses absolute paths instead
    yaml_path = root / "conf" / "corpus" / "msgs.yaml"
    data = yaml.safe_load(yaml_path.read_text())
    data["source"]["files"] = str(root / "data" / "msgs.csv")
    yaml_path.write_text(yaml.safe_dump(data))
    assert main([*conf, "prepare", "msgs", "--quiet"]) == 0
    capsys.readouterr()
    assert main([*conf, "show", "msgs"]) == 0
    shown = capsys.readouterr().out
    assert "train: 10 rows" in shown and "manifest_hash: " in shown
    assert (out / "msgs" / "manifest.json").is_file()
