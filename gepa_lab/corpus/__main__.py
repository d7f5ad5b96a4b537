"""python -m gepa_lab.corpus prepare NAME [key=value ...] | list | show NAME

Errors in the input print one line, `error: ...`, to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gepa_lab.paths import CORPORA_DIR

from . import CorpusError, answer_columns, available_corpora, label_sets, load_corpus_config, prepare, read_manifest
from .config import CORPUS_CONF_DIR, SPLITS
from .errors import display_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gepa_lab.corpus", description="Prepare and inspect corpora.")
    p.add_argument("--conf-dir", type=Path, default=CORPUS_CONF_DIR, help="folder of corpus YAML files (default conf/corpus)")
    p.add_argument("--root", type=Path, default=CORPORA_DIR, help="where prepared corpora go (default corpora/)")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="build corpora/NAME from the raw data (no-op when up to date)")
    pp.add_argument("name", help="corpus name (conf/corpus/NAME.yaml) or a path to a YAML file")
    pp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. splits.train=50 seed=1")
    pp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    pp.add_argument("--quiet", "-q", action="store_true")
    sub.add_parser("list", help="corpus configs and whether each is prepared")
    ps = sub.add_parser("show", help="summary of a prepared corpus' manifest")
    ps.add_argument("name")
    ps.add_argument("--json", action="store_true", help="print the whole manifest")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "prepare":
            cfg = load_corpus_config(args.name, args.overrides, conf_dir=args.conf_dir)
            out = prepare(cfg, args.root, force=args.force, quiet=args.quiet)
            print(f"{display_path(out)} manifest_hash={read_manifest(out)['manifest_hash']}")
        elif args.cmd == "list":
            for name in available_corpora(args.conf_dir):
                d = args.root / name
                try:
                    m = read_manifest(d)
                    rows = " ".join(f"{s}={m['splits'][s]['rows']}" for s in SPLITS)
                    state = f"prepared {rows} manifest={m['manifest_hash'][:12]}"
                except CorpusError:
                    state = "not prepared"
                print(f"{name}\t{state}")
        elif args.cmd == "show":
            m = read_manifest(args.root / args.name if "/" not in args.name else Path(args.name))
            if args.json:
                print(json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False))
            else:
                print(f"name: {m['name']}  kind: {m['kind']}  seed: {m['seed']}  stratified: {m['stratified']}")
                print(f"inputs: {', '.join(m['inputs'])}  answer: {', '.join(answer_columns(m))}" + (f"  extras: {', '.join(m['extras'])}" if m["extras"] else ""))
                sets = label_sets(m)
                for answer, labels in sets.items():
                    origin = m["labels_from"][answer] if isinstance(m["labels_from"], dict) else m["labels_from"]
                    print(f"labels: {len(labels)} ({origin})" if len(sets) == 1 else f"labels of {answer}: {len(labels)} ({origin})")
                for s in SPLITS:
                    info = m["splits"][s]
                    print(f"{s}: {info['rows']} rows  sha256 {info['sha256'][:12]}")
                print(f"source: {m['source']['origin']} " + ", ".join(f['path'] for f in m['source']['files']))
                print(f"license: {m['license']}")
                print(f"manifest_hash: {m['manifest_hash']}")
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
