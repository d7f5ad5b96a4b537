"""Generated raw files, bad ones among them (issue 13, item 7): wrong encodings, missing and extra columns, empty files,
very long fields, duplicate and conflicting rows. `prepare` either builds a corpus that holds together (each input once,
in one split, with one answer, whatever the raw row order) or refuses with one line and leaves nothing behind."""
from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gepa_lab.corpus import CorpusError, load_corpus_config, prepare, read_split
from gepa_lab.corpus.config import SPLITS
from tests.conftest import run_cli

LABELS = ["billing", "delivery", "refund"]
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16"]
SPLIT_SIZES = {"train": 4, "val": 2, "test": 2}
# printable text with the characters that trouble CSV and encodings: quotes, commas, newlines, non-Latin-1 letters
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), include_characters='",\n\t é€'),
               max_size=30)


@st.composite
def raw_files(draw) -> dict:
    """Rows (ticket, topic[, more columns]) with duplicates and conflicting copies mixed in, written as CSV or JSONL in
    some encoding, perhaps declared as another, perhaps with a declared column missing or the file empty."""
    rows = [{"ticket": t, "topic": draw(st.sampled_from(LABELS))}
            for t in draw(st.lists(TEXT, min_size=draw(st.sampled_from([0, 12, 12])), max_size=24, unique=True))]
    for row in draw(st.lists(st.sampled_from(rows), max_size=4)) if rows else []:
        conflicting = draw(st.booleans())
        rows.append({**row, "topic": LABELS[(LABELS.index(row["topic"]) + 1) % 3] if conflicting else row["topic"]})
    if rows and draw(st.booleans()):
        rows[draw(st.integers(0, len(rows) - 1))]["ticket"] = "long " * draw(st.sampled_from([2_000, 20_000]))
    extra = draw(st.lists(st.sampled_from(["priority", "notes", "ticket_id"]), unique=True, max_size=2))
    for row in rows:
        row.update({column: draw(TEXT) for column in extra})
    missing = draw(st.sampled_from([None] * 6 + ["ticket", "topic"]))
    if missing:
        for row in rows:
            row.pop(missing)
    encoding = draw(st.sampled_from(ENCODINGS))
    return {"rows": rows, "format": draw(st.sampled_from(["csv", "jsonl"])), "encoding": encoding,
            "declared": draw(st.sampled_from([encoding] * 3 + ["utf-8"])),
            "empty": draw(st.sampled_from([False] * 6 + ["no bytes", "header only"]))}


def write_raw(path: Path, raw: dict, rows: list[dict]) -> None:
    if raw["empty"] == "no bytes":
        path.write_bytes(b"")
        return
    rows = [] if raw["empty"] == "header only" else rows
    if raw["format"] == "csv":
        out = io.StringIO(newline="")
        columns = list(raw["rows"][0]) if raw["rows"] else ["ticket", "topic"]
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = out.getvalue()
    else:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_bytes(text.encode(raw["encoding"], errors="replace"))


def prepared_or_refused(base: Path, raw: dict, rows: list[dict], name: str) -> dict | None:
    """Prepare the corpus from `rows`: its splits (rows by split), or None when refused; a refusal must be one line
    and leave neither the corpus folder nor a temp folder behind."""
    path = base / f"{name}.{raw['format']}"
    write_raw(path, raw, rows)
    cfg = load_corpus_config({"name": name, "source": {"files": str(path), "encoding": raw["declared"]},
                              "inputs": {"text": "ticket"}, "answer": {"label": "topic"}, "kind": "classification",
                              "splits": SPLIT_SIZES}, base_dir=base)
    root = base / f"corpora-{name}"
    try:
        prepare(cfg, root, quiet=True)
    except CorpusError as e:
        assert str(e).strip() and "\n" not in str(e), repr(str(e))
        assert not root.exists() or not list(root.iterdir()), list(root.iterdir())
        return None
    return {split: read_split(root / name, split) for split in SPLITS}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=raw_files(), order_seed=st.integers(0, 2**16))
def test_prepare_holds_together_or_refuses_in_one_line(tmp_path_factory, monkeypatch, raw, order_seed):
    base = tmp_path_factory.mktemp("generated")
    scratch = base / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the HF cache lands here: nothing may stay
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    splits = prepared_or_refused(base, raw, raw["rows"], "first")
    assert not list(scratch.iterdir())
    if splits is None:
        return
    ids = [row["id"] for rows in splits.values() for row in rows]
    texts = [row["text"] for rows in splits.values() for row in rows]
    assert len(ids) == len(set(ids)) == len(set(texts)) == sum(SPLIT_SIZES.values())
    answers: dict[str, set[str]] = {}
    for row in raw["rows"]:  # the text as written (a character the encoding lacks became '?')
        written = row["ticket"].encode(raw["encoding"], errors="replace").decode(raw["encoding"])
        answers.setdefault(" ".join(written.split()), set()).add(row["topic"])
    assert all(answers[row["text"]] == {row["label"]} for row in splits["train"] + splits["val"] + splits["test"]), \
        "an input whose raw rows disagree on its answer was kept with one of them"
    shuffled = list(raw["rows"])
    random.Random(order_seed).shuffle(shuffled)
    assert prepared_or_refused(base, raw, shuffled, "second") == splits, "the corpus depends on the raw row order"


def test_conflicting_rows_are_dropped_and_counted(ws):
    rows = [{"ticket": f"ticket {i}", "topic": LABELS[i % 3]} for i in range(12)]
    rows += [{"ticket": "ticket 0", "topic": "refund"}, {"ticket": "ticket 1", "topic": "delivery"}]  # the same answer
    ws.write_csv("data/t.csv", rows)
    ws.write_yaml("t", {"name": "t", "source": {"files": "data/t.csv"}, "inputs": {"text": "ticket"},
                        "answer": {"label": "topic"}, "kind": "classification", "splits": {"train": 6, "val": 2, "test": 2}})
    prepare(ws.load("t"), ws.root, quiet=True)
    manifest = json.loads((ws.root / "t" / "manifest.json").read_text())
    assert manifest["cleaning"]["pools"]["pool"]["dropped_conflicting"] == 2  # both rows of "ticket 0"
    assert manifest["cleaning"]["pools"]["pool"]["dropped_duplicate"] == 1  # the second "ticket 1"
    kept = {row["text"] for split in SPLITS for row in read_split(ws.root / "t", split)}
    assert "ticket 0" not in kept and "ticket 1" in kept


@pytest.mark.parametrize("declared, written", [("utf-8", "latin-1"), ("utf-8", "utf-16")])
def test_a_file_in_another_encoding_is_refused_naming_it(ws, declared, written):
    ws.write_csv("data/t.csv", [{"ticket": f"caf\u00e9 {i}", "topic": LABELS[i % 3]} for i in range(12)], encoding=written)
    ws.write_yaml("t", {"name": "t", "source": {"files": "data/t.csv", "encoding": declared}, "inputs": {"text": "ticket"},
                        "answer": {"label": "topic"}, "splits": {"train": 6, "val": 2, "test": 2}})
    with pytest.raises(CorpusError, match=r"data/t.csv: not valid utf-8 text"):
        prepare(ws.load("t"), ws.root, quiet=True)


@pytest.mark.parametrize("file_name, data, message", [
    ("t.csv", b"ticket,topic\r\n", "no rows (the CSV file holds its header only)"),
    ("t.jsonl", b"\xef\xbb\xbf\n  \n", "file is empty (nothing but white space)"),
    ("t.jsonl", b'{"ticket": "a", "topic": \n', "cannot read as JSONL"),
])
def test_files_without_rows_are_one_line_on_the_command_line(ws, file_name, data, message):
    """The CLI's whole stderr is the one line (the HF loader logged its own error beside it for a bad JSON file)."""
    (ws.base / file_name).write_bytes(data)
    config = ws.write_yaml("t", {"name": "t", "source": {"files": str(ws.base / file_name)}, "inputs": {"text": "ticket"},
                                 "answer": {"label": "topic"}, "splits": {"train": 1, "val": 1, "test": 1}})
    result = run_cli("gepa_lab.corpus", "--root", str(ws.root), "prepare", str(config), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not ws.root.exists() or not list(ws.root.iterdir())
