"""Bad input: one clear line naming the file (and column), and nothing half-written: a previous good version
stays byte-for-byte intact and no temp folders are left."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gepa_lab.corpus import CorpusError, prepare, read_manifest

Workspace = Any  # the `ws` fixture's type (tests/corpus/conftest.py)


def _fails_cleanly(ws: Workspace, name: str, match: str, overrides: tuple[str, ...] = ()) -> str:
    """prepare NAME must raise CorpusError (one line, matching `match`) and leave the good version untouched."""
    before = ws.snapshot(name) if (ws.root / name).exists() else None
    with pytest.raises(CorpusError) as info:
        prepare(ws.load(name, overrides), ws.root)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    assert match in msg, msg
    if before is not None:
        assert ws.snapshot(name) == before
    assert ws.leftovers() == []
    return msg


@pytest.fixture
def good(tickets: Workspace) -> Workspace:
    """tickets, prepared once successfully."""
    prepare(tickets.load("tickets"), tickets.root)
    assert read_manifest(tickets.root / "tickets")["splits"]["train"]["rows"] == 24
    return tickets


def test_missing_file(good: Workspace) -> None:
    good.write_yaml("tickets", good.ticket_config(source={"files": "data/nope.csv"}))
    msg = _fails_cleanly(good, "tickets", "data/nope.csv: raw file not found")
    assert "source.files.all" in msg


def test_misnamed_column(good: Workspace) -> None:
    msg = _fails_cleanly(good, "tickets", "data/tickets.csv: no column 'tiket'", ("inputs.text=tiket",))
    assert "(did you mean 'ticket'?)" in msg and "inputs.text" in msg and "columns: ticket, topic, priority" in msg


def test_missing_answer_column_in_test_file(good: Workspace) -> None:
    good.write_csv("data/test.csv", [{"ticket": "x", "label": "refund"}])
    good.write_yaml("tickets", good.ticket_config(source={"files": {"train": "data/tickets.csv", "test": "data/test.csv"}}))
    _fails_cleanly(good, "tickets", "data/test.csv: no column 'topic' (wanted by answer.label)")


def test_empty_split_after_cleaning(good: Workspace) -> None:
    rows = good.ticket_rows(2)
    good.write_csv("data/test.csv", [{**r, "topic": "   "} for r in rows])
    good.write_yaml("tickets", good.ticket_config(source={"files": {"train": "data/tickets.csv", "test": "data/test.csv"}}))
    msg = _fails_cleanly(good, "tickets", "data/test.csv: no rows left after cleaning")
    assert "6 with empty 'topic'" in msg


def test_split_larger_than_data(good: Workspace) -> None:
    msg = _fails_cleanly(good, "tickets", "ask for 1023 rows but only 60 remain", ("splits.train=999",))
    assert "data/tickets.csv" in msg and "splits.train=999" in msg


def test_bad_encoding(good: Workspace) -> None:
    path: Path = good.base / "data/tickets.csv"
    path.write_bytes(path.read_bytes().replace(b"ticket 3 about", "tícket 3 about".encode("latin-1")))
    msg = _fails_cleanly(good, "tickets", "data/tickets.csv: not valid utf-8 text (byte 0xed at offset")
    assert "source.encoding" in msg
    # and with the right encoding declared it works
    prepare(good.load("tickets", ("source.encoding=latin-1",)), good.root)
    assert read_manifest(good.root / "tickets")["source"]["encoding"] == "latin-1"


def test_duplicate_corpus_name(good: Workspace) -> None:
    good.write_yaml("tickets", good.ticket_config(), file_name="tickets_copy")
    msg = _fails_cleanly(good, "tickets", "duplicate corpus name 'tickets'")
    assert "tickets.yaml" in msg and "tickets_copy.yaml" in msg


def test_name_differs_from_file_name(good: Workspace) -> None:
    good.write_yaml("other", good.ticket_config("tickets2"))
    with pytest.raises(CorpusError, match=r"other.yaml: name 'tickets2' differs from the file name 'other'"):
        good.load("other")
    with pytest.raises(CorpusError, match="name 'x' differs"):
        good.load("tickets", ["name=x"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"split": {"train": 1}}, "unknown field 'split' (did you mean 'splits'?)"),
        ({"splits": {"train": 1, "val": 1}}, "missing field 'splits.test'"),
        ({"splits": {"train": 0, "val": 1, "test": 1}}, "splits.train: Input should be greater than or equal to 1"),
        ({"answer": {}}, "answer: declare at least one answer column"),
        ({"answer": {"a": "topic", "b": "ticket"}, "labels": ["x", "y"]}, "with several answers give one label set per answer"),
        ({"labels": {"topic": ["x", "y"]}}, "labels names 'topic', which is not an answer (answers: label)"),
        ({"answer": {"a": "topic", "b": "ticket"}, "labels": {"b": ["x", "x"]}}, "labels lists a label twice"),
        ({"answer_pattern": "(unclosed"}, "answer_pattern: not a valid regex"),
        ({"source": {"files": {"trian": "data/tickets.csv"}}}, "unknown split 'trian' (did you mean 'train'?)"),
        ({"inputs": {"id": "ticket"}}, "column name 'id' is reserved"),
        ({"kind": "open", "stratify": True}, "stratify needs a categorical answer"),
    ],
)
def test_bad_config_fields(tickets: Workspace, change: dict[str, Any], match: str) -> None:
    tickets.write_yaml("tickets", tickets.ticket_config(**change))
    with pytest.raises(CorpusError) as info:
        tickets.load("tickets")
    assert str(info.value).startswith("conf/tickets.yaml: ") or "tickets.yaml: " in str(info.value)
    assert match in str(info.value)


def test_label_not_in_declared_labels(good: Workspace) -> None:
    good.write_yaml("tickets", good.ticket_config(labels=["billing", "delivery"]))
    _fails_cleanly(good, "tickets", "data/tickets.csv: column 'topic' has 20 value(s) not among the labels")


def test_unknown_corpus_and_unreadable_file(ws: Workspace) -> None:
    with pytest.raises(CorpusError, match="no such corpus config"):
        ws.load("nothing")
    (ws.base / "data").mkdir()
    (ws.base / "data/bad.jsonl").write_text('{"q": "a", "a": "b"}\n{not json\n')
    ws.write_yaml("bad", {"name": "bad", "source": {"files": "data/bad.jsonl"}, "inputs": {"q": "q"},
                          "answer": {"a": "a"}, "splits": {"train": 1, "val": 1, "test": 1}})
    with pytest.raises(CorpusError, match=r"data/bad.jsonl: cannot read as JSONL"):
        prepare(ws.load("bad"), ws.root)
    assert ws.leftovers() == []


def test_killed_prepare_leftovers_are_cleaned(good: Workspace) -> None:
    (good.root / ".tickets.tmp-abc123").mkdir()
    (good.root / ".tickets.tmp-abc123" / "train.parquet").write_bytes(b"half")
    prepare(good.load("tickets", ["splits.train=3"]), good.root)
    assert good.leftovers() == []


def test_foreign_folder_is_not_overwritten(ws: Workspace) -> None:
    ws.write_csv("data/tickets.csv", ws.ticket_rows())
    ws.write_yaml("tickets", ws.ticket_config())
    (ws.root / "tickets").mkdir(parents=True)
    (ws.root / "tickets" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="holds no manifest.json"):
        prepare(ws.load("tickets"), ws.root)
    assert (ws.root / "tickets" / "notes.txt").read_text() == "mine"

