"""prepare -> read back with DuckDB: counts and hashes match the manifest, splits are stratified and disjoint,
re-running changes nothing, config changes rebuild atomically."""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from typing import Any

import duckdb
import polars as pl
import pytest

from gepa_lab.corpus import (
    CorpusError,
    connect,
    ensure_prepared,
    prepare,
    read_manifest,
    read_split,
)

Workspace = Any  # the `ws` fixture's type (tests/corpus/conftest.py)


def test_round_trip_counts_hashes_and_stratification(tickets: Workspace) -> None:
    cfg = tickets.load("tickets")
    out = prepare(cfg, tickets.root)
    assert out == tickets.root / "tickets"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.parquet", "train.parquet", "val.parquet"]
    m = read_manifest(out)
    assert m["kind"] == "classification" and m["labels"] == tickets.labels and m["stratified"] is True
    assert m["inputs"] == ["text"] and m["answer"] == "label" and m["seed"] == 0
    assert m["license"] == "CC0 1.0"
    assert m["source"]["files"][0]["sha256"] == hashlib.sha256((tickets.base / "data/tickets.csv").read_bytes()).hexdigest()

    seen: set[str] = set()
    for split, size in {"train": 24, "val": 9, "test": 15}.items():
        info = m["splits"][split]
        path = out / info["file"]
        assert info["rows"] == size
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        # read back with DuckDB directly
        n, cols = duckdb.connect().execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{path}')").fetchall()[0]
        assert n == cols == size
        rows = read_split(out, split)
        assert len(rows) == size
        assert set(rows[0]) == {"id", "text", "label"}  # only declared columns (+ id); 'priority' dropped
        # whitespace normalized
        assert all("  " not in r["text"] and r["text"] == r["text"].strip() for r in rows)
        # stratified: equal thirds for a balanced source
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == set(tickets.labels) and max(counts.values()) - min(counts.values()) <= 1
        assert info["label_counts"] == dict(sorted(counts.items()))
        ids = {r["id"] for r in rows}
        assert not ids & seen  # disjoint splits
        seen |= ids


def test_rerun_is_byte_identical_and_touches_nothing(tickets: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tickets.load("tickets")
    prepare(cfg, tickets.root)
    before = tickets.snapshot("tickets")
    prepare(tickets.load("tickets"), tickets.root)
    assert tickets.snapshot("tickets") == before  # bytes and mtimes
    assert "up to date" in capsys.readouterr().err
    ensure_prepared(cfg, tickets.root)
    assert tickets.snapshot("tickets") == before

    # from scratch: the very same bytes again
    shutil.rmtree(tickets.root / "tickets")
    prepare(cfg, tickets.root)
    assert {k: v[0] for k, v in tickets.snapshot("tickets").items()} == {k: v[0] for k, v in before.items()}
    assert tickets.leftovers() == []


def test_config_change_rebuilds_and_says_what_changed(tickets: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    prepare(tickets.load("tickets"), tickets.root)
    old = read_manifest(tickets.root / "tickets")
    old_val, old_test = read_split(tickets.root / "tickets", "val"), read_split(tickets.root / "tickets", "test")
    capsys.readouterr()
    prepare(tickets.load("tickets", ["splits.train=6"]), tickets.root)
    err = capsys.readouterr().err
    assert "rebuilt" in err and "splits.train: 24 -> 6" in err
    new = read_manifest(tickets.root / "tickets")
    assert new["splits"]["train"]["rows"] == 6 and new["manifest_hash"] != old["manifest_hash"]
    # val and test do not move when only the train size changes
    assert read_split(tickets.root / "tickets", "val") == old_val
    assert read_split(tickets.root / "tickets", "test") == old_test
    assert tickets.leftovers() == []


def test_seed_changes_the_split(tickets: Workspace) -> None:
    a = read_split(prepare(tickets.load("tickets"), tickets.root / "a"), "train")
    b = read_split(prepare(tickets.load("tickets", ["seed=1"]), tickets.root / "b"), "train")
    assert {r["id"] for r in a} != {r["id"] for r in b}


def test_ensure_prepared_rebuilds_when_raw_data_changes(tickets: Workspace) -> None:
    cfg = tickets.load("tickets")
    out = ensure_prepared(cfg, tickets.root)
    h1 = read_manifest(out)["manifest_hash"]
    rows = tickets.ticket_rows()
    rows[0]["ticket"] = "a brand new ticket text"
    tickets.write_csv("data/tickets.csv", rows)
    assert read_manifest(ensure_prepared(cfg, tickets.root))["manifest_hash"] != h1
    # a tampered split file is noticed by prepare (hash check) and restored
    (out / "train.parquet").write_bytes(b"garbage")
    with pytest.raises(CorpusError, match="train.parquet"):
        read_split(out, "train")
    prepare(cfg, tickets.root)
    assert len(read_split(out, "train")) == 24


def test_read_split_limit_where_and_order(tickets: Workspace) -> None:
    out = prepare(tickets.load("tickets"), tickets.root)
    rows = read_split(out, "train")
    assert read_split(out, "train", limit=5) == rows[:5]
    only = read_split(out, "train", sql_where="label = 'refund'")
    assert only == [r for r in rows if r["label"] == "refund"]
    assert read_split(out, "train", limit=0) == []
    with pytest.raises(CorpusError, match="query failed"):
        read_split(out, "train", sql_where="no_such_column = 1")
    with pytest.raises(CorpusError, match="no split 'tran'"):
        read_split(out, "tran")
    con = connect(out)
    assert con.execute("SELECT count(*) FROM train JOIN test USING (id)").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM val").fetchone() == (9,)


def test_edited_manifest_is_refused(tickets: Workspace) -> None:
    out = prepare(tickets.load("tickets"), tickets.root)
    m = json.loads((out / "manifest.json").read_text())
    m["seed"] = 42
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorpusError, match="manifest_hash does not match"):
        read_manifest(out)
    prepare(tickets.load("tickets"), tickets.root)  # stale -> rebuilt
    assert read_manifest(out)["seed"] == 0


def test_test_file_and_answer_pattern_jsonl(ws: Workspace) -> None:
    """gsm8k-style: separate train/test JSONL, answer extracted after '####', commas stripped, solution kept."""
    data = ws.base / "data"
    data.mkdir()
    for split, n in (("train", 30), ("test", 10)):
        with open(data / f"{split}.jsonl", "w") as f:
            for i in range(n):
                value = f"{(i + 1) * 1000 if split == 'train' else i:,}"
                f.write(json.dumps({"question": f"{split} q{i}?", "answer": f"step one\nstep two\n#### {value}"}) + "\n")
            if split == "train":
                f.write(json.dumps({"question": "no marker", "answer": "42"}) + "\n")
    ws.write_yaml("mathy", {
        "name": "mathy",
        "source": {"files": {"train": "data/train.jsonl", "test": "data/test.jsonl"}},
        "inputs": {"question": "question"},
        "answer": {"answer": "answer"},
        "answer_pattern": r"####\s*(.+)$",
        "answer_remove": [","],
        "extras": {"solution": "answer"},
        "splits": {"train": 20, "val": 5, "test": 10},
    })
    out = prepare(ws.load("mathy"), ws.root)
    m = read_manifest(out)
    assert m["kind"] == "open" and m["labels"] is None and m["stratified"] is False
    assert m["cleaning"]["files"][0]["dropped_no_answer_match"] == 1
    test = read_split(out, "test")
    assert {r["question"] for r in test} == {f"test q{i}?" for i in range(10)}  # test drawn from test.jsonl only
    train = read_split(out, "train") + read_split(out, "val")
    assert all(r["question"].startswith("train") for r in train)
    assert all(r["answer"].isdigit() and "," not in r["answer"] for r in train)
    assert train[0]["solution"].startswith("step one\nstep two\n####")


def test_parquet_source_with_label_map(ws: Workspace) -> None:
    (ws.base / "data").mkdir()
    pl.DataFrame({"q": [f"item {i}" for i in range(30)], "y": [i % 2 for i in range(30)]}).write_parquet(
        ws.base / "data/items.parquet"
    )
    ws.write_yaml("items", {
        "name": "items",
        "source": {"files": "data/items.parquet"},
        "inputs": {"item": "q"},
        "answer": {"label": "y"},
        "label_map": {0: "even", 1: "odd"},
        "splits": {"train": 10, "val": 4, "test": 6},
    })
    out = prepare(ws.load("items"), ws.root)
    m = read_manifest(out)
    assert m["kind"] == "classification" and m["labels"] == ["even", "odd"]
    assert all(v["label_counts"] in ({"even": n // 2, "odd": n // 2},) for v, n in ((m["splits"][s], m["splits"][s]["rows"]) for s in m["splits"]))


def test_hub_route_with_a_local_dataset_folder(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """`source.hub` goes through load_dataset(NAME); a local dataset folder stands in for the Hub here."""
    hub = ws.base / "fake_hub"
    hub.mkdir()
    rows = ws.ticket_rows(10)
    pl.DataFrame(rows[:24]).write_csv(hub / "train.csv")
    pl.DataFrame(rows[24:]).write_csv(hub / "test.csv")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    ws.write_yaml("hubby", ws.ticket_config("hubby", source={"hub": str(hub)}, splits={"train": 12, "val": 6, "test": 6}))
    m = read_manifest(prepare(ws.load("hubby"), ws.root))
    assert m["source"]["origin"] == "hub"
    assert m["splits"]["test"]["drawn_from"] == [f"hub:{hub}[test]"]


def test_shipped_configs_load() -> None:
    from gepa_lab.corpus import available_corpora, load_corpus_config

    names = available_corpora()
    assert {"banking77", "gsm8k", "example_csv"} <= set(names)
    b = load_corpus_config("banking77")
    assert (b.splits.train, b.splits.val, b.splits.test, b.seed) == (300, 150, 500, 0)
    assert b.resolved_kind == "classification" and b.resolved_stratify
    g = load_corpus_config("gsm8k", ["splits.train=50"])
    assert g.splits.train == 50 and g.answer_pattern and g.resolved_kind == "open"


def test_shipped_corpora_prepare(ws: Workspace) -> None:
    """The real raw data in corpora/raw (small splits so it stays fast), written to a temp root."""
    from gepa_lab.corpus import load_corpus_config

    b = read_manifest(prepare(load_corpus_config("banking77", ["splits.train=77", "splits.val=77", "splits.test=77"]), ws.root))
    assert len(b["labels"]) == 77 and b["license"] == "CC BY 4.0"
    assert all(b["splits"][s]["labels_present"] == 77 for s in ("train", "val", "test"))
    assert [f["path"] for f in b["source"]["files"]] == [
        "corpora/raw/banking77/train.csv", "corpora/raw/banking77/test.csv", "corpora/raw/banking77/categories.json"
    ]
    # the same config with its files listed in another order (a sweep's trials get theirs through sorted JSON)
    # is the same corpus: nothing is rebuilt
    cfg = load_corpus_config("banking77", ["splits.train=77", "splits.val=77", "splits.test=77"])
    written = {p.name: p.stat().st_mtime_ns for p in (ws.root / "banking77").iterdir()}
    data = cfg.model_dump()
    data["source"]["files"] = dict(reversed(list(data["source"]["files"].items())))
    prepare(type(cfg).model_validate(data), ws.root)
    assert {p.name: p.stat().st_mtime_ns for p in (ws.root / "banking77").iterdir()} == written
    g = prepare(load_corpus_config("gsm8k", ["splits.train=20", "splits.val=5", "splits.test=20"]), ws.root)
    rows = read_split(g, "test")
    assert len(rows) == 20 and all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in rows)
    e = read_manifest(prepare(load_corpus_config("example_csv"), ws.root))
    assert e["labels"] == ["negative", "neutral", "positive"]
    assert e["cleaning"]["pools"]["pool"]["dropped_duplicate"] == 1
