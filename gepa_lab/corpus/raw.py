"""Raw data: find and hash the raw files, check their encoding, and load them with Hugging Face Datasets."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import polars as pl

from .config import EXTENSION_FORMATS, CorpusConfig
from .errors import CorpusError, display_path, first_line, no_column

_HUB_ROLES = {"train": "train", "test": "test", "validation": "val", "val": "val", "dev": "val"}
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class RawFile:
    """One raw file a corpus reads: its split role (train|val|test|all, or labels) and format."""

    role: str
    path: Path
    format: str
    key: str  # config field it came from, for messages: source.files.train, labels, ...

    @property
    def shown(self) -> str:
        return display_path(self.path)


@dataclass
class RawTable:
    """Rows loaded from one raw file (or one Hub split), all values as read."""

    role: str
    shown: str
    df: pl.DataFrame


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_files(cfg: CorpusConfig) -> list[RawFile]:
    """The local files a config names (data files by role, then the labels files), checked to exist."""
    out: list[RawFile] = []
    for role, paths in cfg.source.file_map().items():
        for i, p in enumerate(paths):
            key = f"source.files.{role}" + (f"[{i}]" if len(paths) > 1 else "")
            path = cfg.resolve(p)
            fmt = cfg.source.format or EXTENSION_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise CorpusError(
                    f"{display_path(path)}: cannot tell the format from the extension '{path.suffix}' ({key});"
                    f" set source.format to one of csv, json, jsonl, parquet"
                )
            out.append(RawFile(role, path, fmt, key))
    for answer in cfg.answer:
        declared = cfg.answer_labels(answer)
        if isinstance(declared, str):
            key = f"labels.{answer}" if isinstance(cfg.labels, dict) else "labels"
            out.append(RawFile("labels", cfg.resolve(declared), "json", key))
    for f in out:
        if not f.path.exists():
            raise CorpusError(f"{f.shown}: raw file not found ({f.key} of corpus '{cfg.name}')")
        if not f.path.is_file():
            raise CorpusError(f"{f.shown}: not a file ({f.key} of corpus '{cfg.name}')")
    return out


def fingerprint(cfg: CorpusConfig, files: list[RawFile] | None = None) -> list[dict[str, Any]]:
    """role, path, format, size and SHA-256 of every local raw file: what decides whether a build is stale."""
    files = raw_files(cfg) if files is None else files
    return [
        {"role": f.role, "path": f.shown, "format": f.format, "bytes": f.path.stat().st_size, "sha256": sha256_file(f.path)}
        for f in files
    ]


def text_encoding(f: RawFile, encoding: str) -> str:
    """Check that a text file decodes with `encoding`; returns the codec to read it with (BOM-aware)."""
    data = f.path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        hint = "; set source.encoding to the file's encoding (e.g. source.encoding=latin-1)"
        raise CorpusError(
            f"{f.shown}: not valid {encoding} text (byte 0x{data[exc.start]:02x} at offset {exc.start}){hint}"
        ) from None
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and data.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    return encoding


def read_labels(f: RawFile, encoding: str = "utf-8") -> list[str]:
    """A labels file: a JSON list of labels (or a mapping whose keys are the labels)."""
    try:
        data = json.loads(f.path.read_text(encoding=text_encoding(f, encoding)))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{f.shown}: labels file is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(data, dict):
        data = list(data)
    if not isinstance(data, list) or not data or not all(isinstance(x, (str, int)) for x in data):
        raise CorpusError(f"{f.shown}: labels file must hold a non-empty JSON list of labels")
    labels = [str(x) for x in data]
    if len(set(labels)) != len(labels):
        raise CorpusError(f"{f.shown}: labels file lists a label twice")
    return labels


def precheck(f: RawFile, encoding: str, wanted: Sequence[tuple[str, str]]) -> None:
    """Cheap checks before the (slow) HF load: empty file, encoding, and the header of CSV / Parquet files."""
    if f.path.stat().st_size == 0:
        raise CorpusError(f"{f.shown}: file is empty")
    columns: list[str] | None = None
    if f.format == "csv":
        enc = text_encoding(f, encoding)
        with open(f.path, newline="", encoding=enc) as fh:
            rows = csv.reader(fh)
            columns = next(rows, [])
            if not columns:
                raise CorpusError(f"{f.shown}: CSV file has no header row")
            if next(rows, None) is None:
                raise CorpusError(f"{f.shown}: no rows (the CSV file holds its header only)")
    elif f.format == "parquet":
        try:
            columns = list(pl.read_parquet_schema(f.path))
        except Exception as exc:
            raise CorpusError(f"{f.shown}: cannot read as PARQUET ({first_line(exc)})") from None
    elif not f.path.read_text(encoding=text_encoding(f, encoding)).lstrip("\ufeff").strip():
        raise CorpusError(f"{f.shown}: file is empty (nothing but white space)")
    if columns is not None:
        for field, src in wanted:
            if src not in columns:
                raise no_column(f.shown, src, field, columns)


# ---- Hugging Face Datasets ---------------------------------------------------------------------------------

def _env_offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARS)


@contextlib.contextmanager
def hf_session(offline: bool) -> Iterator[tuple[Any, str]]:
    """Import `datasets` quietly, offline unless a Hub dataset is wanted, with a throwaway cache folder.

    Environment and `datasets.config` flags are restored afterwards; the cache folder is deleted, so nothing is
    left under ~/.cache or half-written anywhere.
    """
    saved_env = {v: os.environ.get(v) for v in _OFFLINE_VARS}
    if offline:
        for v in _OFFLINE_VARS:
            os.environ[v] = "1"
    try:
        import datasets
        import datasets.config as dconf
        from datasets.utils import logging as dlogging

        saved_flags = (dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE)
        verbosity = dlogging.get_verbosity()
        try:
            hub_constants = __import__("huggingface_hub.constants", fromlist=["HF_HUB_OFFLINE"])
            saved_hub = hub_constants.HF_HUB_OFFLINE
        except Exception:  # pragma: no cover - huggingface_hub always comes with datasets
            hub_constants, saved_hub = None, None
        if offline:
            dconf.HF_HUB_OFFLINE = dconf.HF_DATASETS_OFFLINE = True
            if hub_constants is not None:
                hub_constants.HF_HUB_OFFLINE = True
        bars_were_off = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        dlogging.set_verbosity(dlogging.CRITICAL)  # not "Failed to load JSON ...": the error is raised and shown in one line
        try:
            with tempfile.TemporaryDirectory(prefix="gepa_lab_hf_cache_") as cache:
                yield datasets, cache
        finally:
            dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE = saved_flags
            if hub_constants is not None:
                hub_constants.HF_HUB_OFFLINE = saved_hub
            if not bars_were_off:
                datasets.enable_progress_bars()
            dlogging.set_verbosity(verbosity)
    finally:
        for v, val in saved_env.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


def _to_polars(ds: Any) -> pl.DataFrame:
    """A loaded `datasets.Dataset` as Polars, ClassLabel ints turned back into their names."""
    from datasets import ClassLabel

    df = pl.from_arrow(ds.data.table)
    assert isinstance(df, pl.DataFrame)
    for col, feat in ds.features.items():
        if isinstance(feat, ClassLabel) and col in df.columns:
            df = df.with_columns(
                pl.col(col).replace_strict(list(range(len(feat.names))), feat.names, default=None, return_dtype=pl.String)
            )
    return df


def _csv_columns(f: RawFile, encoding: str) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(f.path, nrows=0, encoding=encoding).columns]
    except Exception as exc:
        raise CorpusError(f"{f.shown}: cannot read as CSV ({first_line(exc)})") from None


def load_file(datasets: Any, cache: str, f: RawFile, encoding: str) -> RawTable:
    """One local file through `datasets.load_dataset("csv"|"json"|"parquet", data_files=...)`."""
    kwargs: dict[str, Any] = {"data_files": [str(f.path)], "split": "train", "cache_dir": cache, "keep_in_memory": True}
    if f.format == "csv":
        enc = text_encoding(f, encoding)
        names = _csv_columns(f, enc)
        if not names:
            raise CorpusError(f"{f.shown}: CSV file has no header row")
        features = datasets.Features({n: datasets.Value("string") for n in names})
        builder = "csv"
        kwargs.update(features=features, keep_default_na=False, encoding=enc)
    elif f.format in ("json", "jsonl"):
        builder = "json"
        kwargs.update(encoding=text_encoding(f, encoding))
    else:
        builder = "parquet"
    if f.path.stat().st_size == 0:
        raise CorpusError(f"{f.shown}: file is empty")
    try:
        ds = datasets.load_dataset(builder, **kwargs)
    except CorpusError:
        raise
    except Exception as exc:
        raise CorpusError(f"{f.shown}: cannot read as {f.format.upper()} ({first_line(exc)})") from None
    return RawTable(f.role, f.shown, _to_polars(ds))


def load_hub(datasets: Any, cache: str, cfg: CorpusConfig) -> list[RawTable]:
    src = cfg.source
    assert src.hub is not None
    dd = datasets.load_dataset(src.hub, src.hub_config, revision=src.hub_revision, cache_dir=cache, keep_in_memory=True)
    tables = []
    for split_name in sorted(dd):
        role = _HUB_ROLES.get(split_name, "all")
        tables.append(RawTable(role, f"hub:{src.hub}[{split_name}]", _to_polars(dd[split_name])))
    if not tables:
        raise CorpusError(f"hub:{src.hub}: the dataset has no splits")
    return tables


def load_raw(
    cfg: CorpusConfig, files: list[RawFile], wanted: Sequence[tuple[str, str]] = ()
) -> tuple[list[RawTable], dict[str, Any]]:
    """Load every raw table of a corpus: from the Hub when `source.hub` is set and reachable, else from files.

    Returns the tables and a description of where they came from (for the manifest).
    """
    data_files = [f for f in files if f.role != "labels"]
    src = cfg.source
    if src.hub is not None:
        if _env_offline() and data_files:
            print(
                f"corpus '{cfg.name}': HF_HUB_OFFLINE is set, using local files instead of hub:{src.hub}"
                " (run with HF_HUB_OFFLINE=0 to load from the Hub)",
                file=sys.stderr,
            )
        else:
            with hf_session(offline=False) as (datasets, cache):
                try:
                    tables = load_hub(datasets, cache, cfg)
                    origin: dict[str, Any] = {"origin": "hub", "hub": src.hub, "hub_config": src.hub_config,
                                              "hub_revision": src.hub_revision}
                    return tables, origin
                except CorpusError:
                    raise
                except Exception as exc:
                    if not data_files:
                        hint = (
                            "; HF_HUB_OFFLINE is set (gepa_lab's default): run with HF_HUB_OFFLINE=0 to download,"
                            " or give source.files"
                            if _env_offline()
                            else ""
                        )
                        raise CorpusError(f"hub:{src.hub}: cannot load the dataset ({first_line(exc)}){hint}") from None
                    print(
                        f"corpus '{cfg.name}': cannot load hub:{src.hub} ({first_line(exc)}); using local files",
                        file=sys.stderr,
                    )
    for f in data_files:
        precheck(f, src.encoding, wanted)
    with hf_session(offline=True) as (datasets, cache):
        tables = [load_file(datasets, cache, f, src.encoding) for f in data_files]
    return tables, {"origin": "files", "hub": src.hub}
