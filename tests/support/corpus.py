"""The small banking77 corpus most scenario tests run on, defined once.

Test files run in parallel over one corpora/ folder: a second config under the same name would re-prepare
corpora/banking77_tiny while another test reads it (CI saw a trial read a half-swapped val.parquet).
"""
TINY_CORPUS = ["corpus.name=banking77_tiny", "corpus.splits.train=40", "corpus.splits.val=20", "corpus.splits.test=20"]
