"""Search every byte under a folder for a secret: raw bytes, plus the decoded contents of
Parquet files, SQLite databases and compressed files, where a plain byte search could miss it."""
from __future__ import annotations

import gzip
import sqlite3
import zipfile
from pathlib import Path


def _decoded(path: Path) -> bytes:
    head = path.read_bytes()[:16]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return str(pq.read_table(path).to_pylist()).encode()
    if head.startswith(b"SQLite format 3"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            return "\n".join(con.iterdump()).encode()
    if head.startswith(b"\x1f\x8b"):
        return gzip.decompress(path.read_bytes())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return b"".join(z.read(n) for n in z.namelist())
    return b""


def files_containing(root: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    found, searched = [], 0
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        searched += 1
        if needle in path.read_bytes() or needle in _decoded(path):
            found.append(path)
    assert searched > 0, f"nothing to search under {root}"
    return found
