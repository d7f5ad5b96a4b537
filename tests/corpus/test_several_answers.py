"""A corpus with several answer columns and extras: each classification answer gets its own label set in the
manifest, the splits hold every declared column, and single-answer manifests keep the format they always had."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from gepa_lab.corpus import CorpusError, answer_columns, label_sets, prepare, read_manifest, read_split
from gepa_lab.corpus.__main__ import main

Workspace = Any  # the `ws` fixture's type (tests/corpus/conftest.py)

AREAS = ["billing", "shipping", "account"]


def support_rows(n: int = 60) -> list[dict[str, Any]]:
    return [
        {"msg": f"message {i} about {AREAS[i % 3]}", "area": AREAS[i % 3], "urgency": "high" if i % 4 == 0 else "low",
         "note": f"line one\r\nline two of {i}  ", "unused": i}
        for i in range(n)
    ]


def support_config(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "support",
        "source": {"files": "data/support.csv"},
        "inputs": {"text": "msg"},
        "answer": {"area": "area", "urgency": "urgency"},
        "extras": {"note": "note"},
        "kind": "classification",
        "labels": {"urgency": "data/urgency.json"},  # area's labels are derived from the data
        "splits": {"train": 24, "val": 12, "test": 12},
    }
    cfg.update(changes)
    return cfg


@pytest.fixture
def support(ws: Workspace) -> Workspace:
    ws.write_csv("data/support.csv", support_rows())
    (ws.base / "data/urgency.json").write_text(json.dumps(["low", "high"]))
    ws.write_yaml("support", support_config())
    return ws


def test_each_answer_has_its_label_set_and_rows_carry_every_declared_column(support: Workspace) -> None:
    out = prepare(support.load("support"), support.root)
    m = read_manifest(out)
    assert m["answer"] == ["area", "urgency"] and answer_columns(m) == ["area", "urgency"]
    assert m["labels"] == {"area": sorted(AREAS), "urgency": ["low", "high"]} == label_sets(m)
    assert m["labels_from"] == {"area": "derived from the data", "urgency": str(support.base / "data/urgency.json")}
    assert [c["role"] for c in m["schema"]] == ["id", "input", "answer", "answer", "extra", "position"]
    assert [f["role"] for f in m["source"]["files"]] == ["all", "labels"]
    for split in ("train", "val", "test"):
        rows = read_split(out, split)
        assert set(rows[0]) == {"id", "text", "area", "urgency", "note"}
        info = m["splits"][split]
        for answer in ("area", "urgency"):
            counts = Counter(r[answer] for r in rows)
            assert info["label_counts"][answer] == dict(sorted(counts.items()))
            assert info["labels_present"][answer] == len(counts)
        # stratified by the first answer: equal thirds
        assert set(info["label_counts"]["area"].values()) == {len(rows) // 3}
        assert all(r["note"].startswith("line one\nline two") and not r["note"].endswith(" ") for r in rows)


def test_a_value_outside_an_answers_label_set_is_one_line_naming_the_column(support: Workspace) -> None:
    (support.base / "data/urgency.json").write_text(json.dumps(["low", "urgent"]))
    with pytest.raises(CorpusError, match=r"support.csv: column 'urgency' has 15 value\(s\) not among the labels \(\S+/data/urgency.json\), e.g. 'high'; "):
        prepare(support.load("support"), support.root)


def test_answer_pattern_and_empty_answers_apply_to_every_answer(support: Workspace) -> None:
    rows = support_rows()
    rows[0]["urgency"] = ""  # dropped: an empty answer
    rows[1]["area"] = "   "
    support.write_csv("data/support.csv", rows)
    support.write_yaml("support", support_config(answer_pattern=r"^(\w+)$", label_map={"low": "minor"}, labels=None))
    m = read_manifest(prepare(support.load("support"), support.root))
    assert m["cleaning"]["files"][0]["dropped_empty"] == 2
    assert m["labels"]["urgency"] == ["high", "minor"]


def test_single_answer_manifest_keeps_its_format(tickets: Workspace) -> None:
    m = read_manifest(prepare(tickets.load("tickets"), tickets.root))
    assert m["answer"] == "label" and m["labels"] == tickets.labels and m["labels_from"] == "derived from the data"
    assert isinstance(m["splits"]["train"]["labels_present"], int)
    assert answer_columns(m) == ["label"] and label_sets(m) == {"label": tickets.labels}


def test_show_lists_every_answer_and_its_labels(support: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(support.load("support"), support.root)
    assert main(["--conf-dir", str(support.conf), "--root", str(support.root), "show", "support"]) == 0
    shown = capsys.readouterr().out
    assert "answer: area, urgency  extras: note" in shown
    assert "labels of area: 3 (derived from the data)" in shown and f"labels of urgency: 2 ({support.base}/data/urgency.json)" in shown
