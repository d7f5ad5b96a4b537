"""Corpora: raw data -> cleaned, seeded train/val/test Parquet splits with a manifest; read back with DuckDB.

    cfg = load_corpus_config("banking77", ["splits.train=50"])
    corpus_dir = ensure_prepared(cfg)            # corpora/banking77, rebuilt only when stale
    rows = read_split(corpus_dir, "train", limit=20)
    manifest_hash = read_manifest(corpus_dir)["manifest_hash"]   # record this with every run
"""
from .config import CorpusConfig, SourceConfig, SplitSizes, available_corpora, load_corpus_config, validate_config
from .errors import CorpusError
from .prepare import ensure_prepared, prepare
from .read import answer_columns, connect, corpus_dir, label_sets, read_manifest, read_split, split_path

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "SourceConfig",
    "SplitSizes",
    "answer_columns",
    "available_corpora",
    "connect",
    "corpus_dir",
    "ensure_prepared",
    "label_sets",
    "load_corpus_config",
    "prepare",
    "read_manifest",
    "read_split",
    "split_path",
    "validate_config",
]
