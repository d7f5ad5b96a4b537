"""`prepare`: raw files -> cleaned, split Parquet files plus manifest.json under corpora/NAME/, atomically.

The corpus is built in a temp sibling folder (corpora/.NAME.tmp-*) and swapped in by renames only when
complete, so a failed prepare leaves the previous good version untouched. A prepare whose config and raw files
match the stored manifest writes nothing at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from gepa_lab.compose import flatten
from gepa_lab.paths import CORPORA_DIR

from .clean import clean_table, wanted_columns, with_ids
from .config import SPLITS, CorpusConfig, canonical_json
from .errors import CorpusError, display_path
from .raw import RawFile, fingerprint, load_raw, raw_files, read_labels, sha256_file
from .split import allocate

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# the order splits are drawn in: val/test stay put when only the train size changes
DRAW_ORDER = ("test", "val", "train")


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


# ---- locking and leftovers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive lock on the corpora folder itself (flock on the directory; no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _leftovers(root: Path, name: str) -> list[Path]:
    return sorted([*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")])


def _cleanup_leftovers(root: Path, name: str) -> None:
    """Temp folders of a prepare that was killed midway (only ever removed while holding the lock)."""
    for p in _leftovers(root, name):
        shutil.rmtree(p, ignore_errors=True)


# ---- manifest helpers ----------------------------------------------------------------------------------------

def manifest_hash(manifest: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON (sorted keys, no spaces) of the manifest without `manifest_hash`."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _existing_manifest(out: Path) -> dict[str, Any] | None:
    """The stored manifest of a prepared corpus; None when there is none yet; {} when it is unreadable."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise CorpusError(f"{display_path(out)}: exists and is not a folder; move it away to prepare corpus '{out.name}'")
    path = out / MANIFEST
    if not path.exists():
        if any(out.iterdir()):
            raise CorpusError(
                f"{display_path(out)}: exists but holds no {MANIFEST}, so it is not a prepared corpus;"
                " move it away or delete it"
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _raw_key(fp: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(f["role"], f["path"], f["sha256"]) for f in fp]


def stale_reason(old: dict[str, Any] | None, cfg: CorpusConfig, fp: list[dict[str, Any]], out: Path, *, verify_outputs: bool) -> str | None:
    """Why the prepared corpus at `out` does not match `cfg` and the raw files; None when it does."""
    if old is None:
        return "not prepared yet"
    if not old or old.get("manifest_hash") != manifest_hash(old):
        return "manifest unreadable or edited"
    if old.get("format_version") != FORMAT_VERSION:
        return "manifest format changed"
    if old.get("config_sha256") != cfg.config_sha256():
        return "config changed"
    if _raw_key(old.get("source", {}).get("files", [])) != _raw_key(fp):
        return "raw files changed"
    for split, info in old.get("splits", {}).items():
        f = out / info.get("file", f"{split}.parquet")
        if not f.is_file() or f.stat().st_size != info.get("bytes"):
            return f"{f.name} missing or resized"
        if verify_outputs and sha256_file(f) != info.get("sha256"):
            return f"{f.name} modified"
    return None


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two manifests, as short phrases: 'splits.train: 300 -> 50', 'train.csv changed'."""
    if not old:
        return ["previous manifest unreadable"]
    changes = []
    a, b = flatten(old.get("config", {})), flatten(new.get("config", {}))
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            changes.append(f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}")
    ra = {f["path"]: f["sha256"] for f in old.get("source", {}).get("files", [])}
    rb = {f["path"]: f["sha256"] for f in new.get("source", {}).get("files", [])}
    for p in sorted(set(ra) | set(rb)):
        if p not in ra:
            changes.append(f"{p} added")
        elif p not in rb:
            changes.append(f"{p} dropped")
        elif ra[p] != rb[p]:
            changes.append(f"{p} changed")
    rows_a = {s: i.get("rows") for s, i in old.get("splits", {}).items()}
    rows_b = {s: i.get("rows") for s, i in new.get("splits", {}).items()}
    if rows_a != rows_b:
        changes.append("rows " + ", ".join(f"{s} {rows_a.get(s)} -> {rows_b.get(s)}" for s in SPLITS if rows_a.get(s) != rows_b.get(s)))
    if not changes:
        changes.append("same config and raw files; output files differed (library version?)")
    return changes


# ---- building --------------------------------------------------------------------------------------------------

def _declared_labels(cfg: CorpusConfig, files: list[RawFile]) -> tuple[dict[str, list[str] | None], dict[str, str]]:
    """Each answer's declared label set (None: derived from the data) and where it came from."""
    labels: dict[str, list[str] | None] = {}
    labels_from: dict[str, str] = {}
    label_files = iter(f for f in files if f.role == "labels")  # raw_files lists them in answer order
    for answer in cfg.answer:
        declared = cfg.answer_labels(answer)
        if isinstance(declared, list):
            labels[answer], labels_from[answer] = list(declared), "labels in the config"
        elif isinstance(declared, str):
            f = next(label_files)
            labels[answer], labels_from[answer] = read_labels(f, cfg.source.encoding), f.shown
        else:
            labels[answer], labels_from[answer] = None, ""
    return labels, labels_from


def _per_answer(cfg: CorpusConfig, values: dict[str, Any]) -> Any:
    """A manifest entry about the answer: the value itself for one answer (the format single-answer corpora
    have always had), a mapping answer -> value for several."""
    return values[cfg.answer_columns[0]] if len(cfg.answer) == 1 else values


def _content_sha256(df: pl.DataFrame) -> str:
    h = hashlib.sha256()
    for row in df.iter_rows(named=True):
        h.update(canonical_json(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(cfg: CorpusConfig, files: list[RawFile], fp: list[dict[str, Any]], dest: Path) -> dict[str, Any]:
    """Load, clean, split and write the corpus into the (empty) folder `dest`; returns the manifest."""
    labels, labels_from = _declared_labels(cfg, files)
    classification = cfg.resolved_kind == "classification"
    tables, origin = load_raw(cfg, files, wanted_columns(cfg))

    # clean each table, then pool them by what they feed: test, val, or the shared pool (train/all)
    groups: dict[str, list[tuple[str, pl.DataFrame]]] = {}
    file_stats = []
    for t in tables:
        df, stats = clean_table(t, cfg, labels, labels_from)
        file_stats.append(stats)
        group = t.role if t.role in ("val", "test") else "pool"
        groups.setdefault(group, []).append((t.shown, with_ids(df, cfg)))

    pools: dict[str, pl.DataFrame] = {}
    group_stats: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for group in ("test", "val", "pool"):  # a row in test is dropped from val and the pool, one in val from the pool
        if group not in groups:
            continue
        df = pl.concat([d for _, d in groups[group]], how="vertical")
        n = df.height
        # an input whose rows disagree on an answer: which one is right is unknown, and keeping the first would make
        # the corpus depend on the raw row order
        disagree = pl.any_horizontal([pl.col(a).n_unique().over("id") > 1 for a in cfg.answer])
        df = df.filter(~disagree)
        conflicting = n - df.height
        n = df.height
        # the same input and answers again: one row kept, the same whatever the row order (extras may differ)
        df = df.sort(df.columns).unique(subset=["id"], keep="first", maintain_order=True)
        dup = n - df.height
        n = df.height
        df = df.filter(~pl.col("id").is_in(list(seen)))
        overlap = n - df.height
        seen.update(df.get_column("id").to_list())
        pools[group] = df
        group_stats[group] = {
            "sources": [s for s, _ in groups[group]],
            "rows": df.height,
            "dropped_duplicate": dup,
            "dropped_conflicting": conflicting,
            "dropped_overlap": overlap,
        }

    for answer in cfg.answer:
        if classification and labels[answer] is None:
            labels[answer] = sorted({a for df in pools.values() for a in df.get_column(answer).to_list()})
            labels_from[answer] = "derived from the data"

    # which pool each split is drawn from
    drawn_from = {s: (s if s in pools and s != "train" else "pool") for s in SPLITS}
    if "pool" not in pools:
        raise CorpusError(
            f"corpus '{cfg.name}': no rows to draw train from; give source.files a 'train' or 'all' file"
        )
    sizes = cfg.splits.model_dump()
    chosen: dict[str, pl.DataFrame] = {}
    for group, df in pools.items():
        requests = [(s, sizes[s]) for s in DRAW_ORDER if drawn_from[s] == group]
        if not requests:
            continue
        need = sum(n for _, n in requests)
        if need > df.height:
            asked = " + ".join(f"splits.{s}={n}" for s, n in requests)
            raise CorpusError(
                f"{', '.join(group_stats[group]['sources'])}: {asked} ask for {need} rows but only {df.height}"
                f" remain after cleaning; lower the split sizes"
            )
        # several answers: stratified by the first one
        strat = df.get_column(cfg.answer_columns[0]).to_list() if cfg.resolved_stratify else None
        picks = allocate(df.get_column("id").to_list(), requests, cfg.seed, strat)
        for s, idx in picks.items():
            chosen[s] = df[idx]

    columns = ["id", *cfg.inputs, *cfg.answer, *cfg.extras]
    split_info: dict[str, Any] = {}
    for s in SPLITS:
        df = chosen[s].select(columns).with_columns(pl.int_range(0, pl.len(), dtype=pl.Int32).alias("row_index"))
        path = dest / f"{s}.parquet"
        df.write_parquet(path, compression="zstd", statistics=True)
        _fsync(path)
        info: dict[str, Any] = {
            "file": path.name,
            "rows": df.height,
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "content_sha256": _content_sha256(df),
            "drawn_from": group_stats[drawn_from[s]]["sources"],
        }
        if classification:
            counts = {a: Counter(df.get_column(a).to_list()) for a in cfg.answer}
            info["label_counts"] = _per_answer(cfg, {a: {lab: c[lab] for lab in sorted(c)} for a, c in counts.items()})
            info["labels_present"] = _per_answer(cfg, {a: len(c) for a, c in counts.items()})
        split_info[s] = info

    roles = {"id": "id", **{c: "input" for c in cfg.inputs}, **{c: "answer" for c in cfg.answer}, **{c: "extra" for c in cfg.extras}}
    schema = [{"name": c, "type": "string", "role": roles[c]} for c in columns] + [
        {"name": "row_index", "type": "int32", "role": "position"}
    ]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "description": cfg.description,
        "kind": cfg.resolved_kind,
        "inputs": list(cfg.inputs),
        "answer": cfg.answer_columns[0] if len(cfg.answer) == 1 else cfg.answer_columns,
        "extras": list(cfg.extras),
        "labels": _per_answer(cfg, labels) if classification else None,
        "labels_from": _per_answer(cfg, labels_from) if classification else None,
        "schema": schema,
        "splits": split_info,
        "seed": cfg.seed,
        "stratified": cfg.resolved_stratify,
        "source": {**origin, "format": cfg.source.format, "encoding": cfg.source.encoding, "files": fp},
        "cleaning": {"files": file_stats, "pools": group_stats},
        "license": cfg.license,
        "license_file": cfg.license_file,
        "attribution": cfg.attribution,
        "config": cfg.config_dict(),
        "config_sha256": cfg.config_sha256(),
    }
    manifest["manifest_hash"] = manifest_hash(manifest)
    path = dest / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    _fsync(path)
    return manifest


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished build `tmp` at `out`; the old version is renamed aside first and deleted last."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prepare(cfg: CorpusConfig, root: str | os.PathLike = CORPORA_DIR, *, force: bool = False, quiet: bool = False) -> Path:
    """Build corpora/NAME/ from the raw data unless it is already current; returns the prepared folder.

    Idempotent: with the same config and raw files nothing is written. Otherwise the corpus is rebuilt in a
    temp folder and swapped in, and what changed is printed to stderr (unless quiet). Raises CorpusError.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = root / cfg.name
    with _locked(root):
        _cleanup_leftovers(root, cfg.name)
        files = raw_files(cfg)
        fp = fingerprint(cfg, files)
        old = _existing_manifest(out)
        reason = stale_reason(old, cfg, fp, out, verify_outputs=True)
        if reason is None and not force:
            _say(f"corpus '{cfg.name}': up to date ({display_path(out)}, manifest {old['manifest_hash'][:12]})", quiet)  # type: ignore[index]
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.tmp-", dir=root))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the corpus folder should be like any other
        try:
            new = build(cfg, files, fp, tmp)
            if old and reason is None and old.get("manifest_hash") == new["manifest_hash"]:
                _say(f"corpus '{cfg.name}': rebuilt, identical to the stored version ({display_path(out)})", quiet)
                return out
            _swap(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows = ", ".join(f"{s} {new['splits'][s]['rows']}" for s in SPLITS)
        if old is None:
            _say(f"corpus '{cfg.name}': prepared {display_path(out)} ({rows}; manifest {new['manifest_hash'][:12]})", quiet)
        else:
            what = "; ".join(describe_changes(old, new))
            _say(f"corpus '{cfg.name}': rebuilt {display_path(out)} because {reason}: {what} (manifest {new['manifest_hash'][:12]})", quiet)
    return out


def ensure_prepared(cfg: CorpusConfig, root: str | os.PathLike = CORPORA_DIR, *, quiet: bool = False) -> Path:
    """The prepared folder of `cfg`, preparing it first only when missing or stale.

    Fast path (no lock, no writes): the stored manifest's config hash and raw-file hashes match and the split
    files exist with the recorded sizes.
    """
    out = Path(root) / cfg.name
    try:
        old = _existing_manifest(out)
    except CorpusError:
        old = None
    if old:
        try:
            fp = fingerprint(cfg)
        except CorpusError:
            fp = None
        if fp is not None and stale_reason(old, cfg, fp, out, verify_outputs=False) is None:
            return out
    return prepare(cfg, root, quiet=quiet)
