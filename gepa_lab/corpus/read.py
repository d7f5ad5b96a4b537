"""Reading prepared corpora: the manifest, and splits through DuckDB's read_parquet."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from gepa_lab.paths import CORPORA_DIR

from .config import SPLITS
from .errors import CorpusError, did_you_mean, display_path
from .prepare import MANIFEST, manifest_hash
from .raw import sha256_file


_CON_LOCK = threading.Lock()
_CON: tuple[int, Any] | None = None


def _cursor() -> Any:
    """A cursor on one in-memory DuckDB database per process (connecting costs ~0.2 s; a cursor next to nothing)."""
    global _CON
    import duckdb

    with _CON_LOCK:
        if _CON is None or _CON[0] != os.getpid():  # a forked child (Ray worker) gets its own
            _CON = (os.getpid(), duckdb.connect(":memory:"))
        return _CON[1].cursor()


def corpus_dir(corpus: str | os.PathLike, root: str | os.PathLike = CORPORA_DIR) -> Path:
    """A prepared corpus folder from a path, or from a bare name under `root` (corpora/)."""
    p = Path(corpus)
    if p.is_dir() or os.sep in str(corpus) or "/" in str(corpus):
        return p
    return Path(root) / str(corpus)


def read_manifest(corpus: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared corpus (checked against its own `manifest_hash`).

    Keys used by tasks: manifest_hash, name, kind ('classification'|'open'), inputs (column names), answer
    (column name; a list with several answers), extras, labels (list or None; answer -> list with several
    answers), splits.{train,val,test}.{rows,sha256,file}, seed, source, license. answer_columns() and
    label_sets() read answer and labels the same way for one answer or several.
    """
    d = corpus_dir(corpus)
    path = d / MANIFEST
    if not path.is_file():
        raise CorpusError(
            f"{display_path(path)}: no manifest; prepare the corpus first (python -m gepa_lab.corpus prepare {d.name})"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{display_path(path)}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_hash") != manifest_hash(manifest):
        raise CorpusError(f"{display_path(path)}: manifest_hash does not match its content (edited by hand?); prepare again")
    return manifest


def answer_columns(manifest: dict[str, Any]) -> list[str]:
    """The answer columns a manifest declares, in config order."""
    answer = manifest["answer"]
    return [answer] if isinstance(answer, str) else list(answer)


def label_sets(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """answer -> its label set, for every answer of a classification corpus ({} for an open one)."""
    labels = manifest.get("labels")
    if labels is None:
        return {}
    if isinstance(labels, dict):
        return {answer: list(values) for answer, values in labels.items()}
    return {answer_columns(manifest)[0]: list(labels)}


def split_path(corpus: str | os.PathLike, split: str, *, verify: bool = True) -> Path:
    """The Parquet file of one split, checked against the SHA-256 in the manifest (unless verify=False)."""
    d = corpus_dir(corpus)
    manifest = read_manifest(d)
    if split not in manifest["splits"]:
        raise CorpusError(f"{display_path(d)}: no split '{split}'{did_you_mean(split, SPLITS)} (splits: {', '.join(manifest['splits'])})")
    info = manifest["splits"][split]
    path = d / info["file"]
    if not path.is_file():
        raise CorpusError(f"{display_path(path)}: split file missing; prepare the corpus again")
    if verify and sha256_file(path) != info["sha256"]:
        raise CorpusError(f"{display_path(path)}: SHA-256 differs from the manifest; prepare the corpus again")
    return path


def read_split(
    corpus: str | os.PathLike,
    split: str,
    limit: int | None = None,
    sql_where: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of one split as dicts (id, input columns, answer columns, extras), in stored order (row_index).

    limit: at most this many rows (the first ones in stored order: a seeded shuffle, fixed per corpus).
    sql_where: a DuckDB SQL condition over the columns, e.g. ``"intent IN ('card_arrival', 'age_limit')"`` or a
    deterministic sample ``"hash(id) % 10 = 0"``. It is pasted into the query: pass trusted text only.
    """
    path = split_path(corpus, split)
    import duckdb

    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise CorpusError(f"{display_path(path)}: limit must be a non-negative integer, got {limit!r}")
    query = "SELECT * EXCLUDE (row_index) FROM read_parquet(?)"
    if sql_where:
        query += f" WHERE ({sql_where})"
    query += " ORDER BY row_index"
    params: list[Any] = [str(path)]
    if limit is not None:
        query += " LIMIT ?"
        params.append(limit)
    con = _cursor()
    try:
        cur = con.execute(query, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    except duckdb.Error as exc:
        msg = " ".join(str(exc).split())
        raise CorpusError(f"{display_path(path)}: query failed (sql_where={sql_where!r}): {msg}") from None
    finally:
        con.close()


def connect(corpus: str | os.PathLike) -> Any:
    """An in-memory DuckDB connection with views train, val and test over the corpus' Parquet files."""
    import duckdb

    con = duckdb.connect(":memory:")
    for split in SPLITS:
        path = split_path(corpus, split)
        con.execute(f"CREATE VIEW {split} AS SELECT * FROM read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')")
    return con
