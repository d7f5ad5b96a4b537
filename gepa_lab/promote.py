"""Promote a registered winner to `champion` only when it beats the champion: the paired-bootstrap guard, a rule
across sweeps, --force and --rollback.

    python -m gepa_lab.promote DIR [DIR ...] [--sql QUERY] [--force] [--tracking-uri URI] [--api-base URL]
    python -m gepa_lab.promote --rollback --name NAME [--tracking-uri URI]

The guard pairs the challenger's per-example test scores with the champion's on the same example ids of the same
corpus manifest (both recorded in the models' metadata at registration; a champion without them is re-scored first,
in a fresh `python -m gepa_lab.serve check` process against --api-base) and moves the alias only if the lower bound
of the 95% paired-bootstrap interval of the gain lies above --min-gain (0). Otherwise the version becomes
`challenger` and the reason is printed. Different corpora or test examples are refused, never compared.
The rule picks the candidate: the first row of --sql (DuckDB over the DIRs' results tables, returning sweep_id and
trial_id) whose trial has a registered version that passed its load-back check; by default the best test score.
Exit status: 0 promoted (or rolled back), 1 refused by the guard, 2 bad input or nothing to promote.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gepa_lab.config.schema import MlflowConfig
from gepa_lab.results.stats import paired_bootstrap_ci
from gepa_lab.tracking import registry
from gepa_lab.tracking.mlflow_sink import METADATA_KEY, mlflow_uris, retry

BEST_TEST = ("SELECT sweep_id, trial_id FROM trials WHERE status = 'completed' AND best_test_score IS NOT NULL "
             "ORDER BY best_test_score DESC, metric_calls ASC")


class PromotionError(RuntimeError):
    pass


@dataclass
class Verdict:
    passed: bool
    reason: str
    by_guard: bool = False  # refused by the paired-bootstrap comparison itself (not by missing or mismatched data)
    gain: float | None = None
    ci95: tuple[float, float] | None = None
    n: int = 0
    champion_test_score: float | None = None
    challenger_test_score: float | None = None


def guard(champion: dict[str, Any], challenger: dict[str, Any], min_gain: float = 0.0) -> Verdict:
    """Does `challenger` beat `champion` (their gepa_lab model metadata) on the same test examples?"""
    for key, what in (("corpus", "corpus"), ("corpus_manifest_hash", "corpus manifest")):
        if champion.get(key) != challenger.get(key):
            return Verdict(False, f"refused: different {what} ({champion.get(key)} vs {challenger.get(key)}): not comparable")
    a, b = champion.get("test_scores"), challenger.get("test_scores")
    if not b:
        return Verdict(False, "refused: the challenger has no per-example test scores")
    if not a:
        return Verdict(False, "refused: the champion has no per-example test scores")
    if set(a) != set(b):
        return Verdict(False, f"refused: different test examples ({len(a)} vs {len(b)}, {len(set(a) ^ set(b))} not shared)")
    ids = sorted(a)
    low, high = paired_bootstrap_ci([a[i] for i in ids], [b[i] for i in ids])
    champ, chall = sum(a.values()) / len(a), sum(b.values()) / len(b)
    passed = low > min_gain
    reason = (f"gain {chall - champ:+.4f} on {len(ids)} test examples, 95% interval [{low:+.4f}, {high:+.4f}] "
              + ("above" if passed else "not above") + f" {min_gain:g}")
    return Verdict(passed, reason if passed else f"refused by the guard: {reason}", by_guard=not passed,
                   gain=chall - champ, ci95=(low, high), n=len(ids), champion_test_score=champ, challenger_test_score=chall)


def version_metadata(uri: str, name: str, version: str) -> dict[str, Any]:
    """The gepa_lab metadata a version's MLmodel file holds."""
    import mlflow
    from mlflow.models import Model

    with mlflow_uris(uri), tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        return (Model.load(local).metadata or {}).get(METADATA_KEY) or {}


def rescored(uri: str, name: str, version: str, meta: dict[str, Any], n: int, api_base: str | None) -> dict[str, Any]:
    """meta with test_scores measured now: the first n test examples, in a fresh load-back process."""
    if not api_base:
        raise PromotionError(f"models:/{name}/{version} has no per-example test scores; give a live LM (--api-base) to re-score it")
    lm = meta.get("lm") or {}
    check = registry.load_back_check(uri, f"models:/{name}/{version}", n, api_base, lm.get("api_key_env"), max_error_rate=1.0)
    if not check.get("example_ids"):
        raise PromotionError(f"re-scoring models:/{name}/{version} failed: {check.get('error')}")
    return {**meta, "test_scores": dict(zip(check["example_ids"], check["scores"]))}


def guarded_promotion(uri: str, *, api_base: str | None = None, min_gain: float = 0.0, force: bool = False,
                      by: str = "sweep", attempts: int = 5):
    """The promote(c, name, version, alias) register_winner calls: guard, then a compare-and-set move; a move that
    lost a race is decided again against the new champion."""

    def promote(c, name: str, version: str, alias: str) -> dict[str, Any]:
        challenger = version_metadata(uri, name, version)
        for _ in range(attempts):
            current = registry.alias_version(c, name, alias)
            if current is None or current == version:
                verdict = Verdict(True, "no champion yet" if current is None else "already the champion")
            elif force:
                verdict = Verdict(True, f"forced over version {current}")
            else:
                champion = version_metadata(uri, name, current)
                if not champion.get("test_scores") and challenger.get("test_scores"):
                    champion = rescored(uri, name, current, champion, len(challenger["test_scores"]), api_base)
                verdict = guard(champion, challenger, min_gain)
            record = {"by": by, **{k: v for k, v in asdict(verdict).items() if k != "passed"}, "against_version": current}
            try:
                if verdict.passed:
                    registry.move_alias(c, name, alias, version, expected=current, record=record, champion_alias=alias)
                    return {"alias": alias, **record}
                registry.move_alias(c, name, registry.CHALLENGER, version,
                                    expected=registry.alias_version(c, name, registry.CHALLENGER), record=record)
                return {"alias": registry.CHALLENGER, **record}
            except registry.AliasMoveConflict:
                continue  # someone moved it between our read and our move: decide again
        raise PromotionError(f"{name}@{alias} kept moving: gave up after {attempts} attempts")

    return promote


# ---- the command line ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gepa_lab.promote", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", help="sweep output folders whose results tables the rule reads")
    p.add_argument("--sql", default=BEST_TEST, help="DuckDB query returning sweep_id, trial_id, best first (default: best test score)")
    p.add_argument("--name", default=None, help="registered model name (needed with --rollback)")
    p.add_argument("--alias", default=MlflowConfig().alias)
    p.add_argument("--tracking-uri", default=None,
                   help="registry URI; default MLFLOW_TRACKING_URI, else the project registry next to the first DIR")
    p.add_argument("--api-base", default=None, help="live LM endpoint to re-score a champion that has no per-example test scores")
    p.add_argument("--min-gain", type=float, default=0.0, help="the lower bound of the gain's 95%% interval must be above this")
    p.add_argument("--force", action="store_true", help="move the alias without the guard")
    p.add_argument("--rollback", action="store_true", help="champion back to the version kept under 'previous'")
    return p


def _registry_uri(args) -> str:
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return args.tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    if not args.dirs:
        raise PromotionError("give --tracking-uri (or MLFLOW_TRACKING_URI) or a sweep folder")
    return registry.registry_uri(MlflowConfig(), args.dirs[0])


def candidate(c, dirs: list[str], sql: str) -> tuple[str, str]:
    """(name, version) of the first row of `sql` whose trial has a registered version that passed its load-back."""
    from gepa_lab.results import query

    try:
        rows = query.sql(query.connect(dirs), sql).dicts()
    except Exception as exc:  # DuckDB's own message names the problem
        raise PromotionError(f"the rule's query failed: {type(exc).__name__}: {exc}") from None
    if rows and not {"sweep_id", "trial_id"} <= set(rows[0]):
        raise PromotionError(f"the rule's query must return sweep_id and trial_id columns, not {sorted(rows[0])}")
    for row in rows:
        found = retry(c.search_model_versions, f"tags.`gepa_lab.sweep_id` = '{row['sweep_id']}' AND "
                                               f"tags.`gepa_lab.trial_id` = '{row['trial_id']}'")
        passed = [mv for mv in found if mv.tags.get("load_back_status") == "passed"]
        if passed:
            mv = max(passed, key=lambda mv: int(mv.version))
            return mv.name, str(mv.version)
    raise PromotionError(f"no trial the rule returned ({len(rows)} rows) has a registered version that passed its load-back check")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        uri = _registry_uri(args)
        c = registry.open_registry(uri)
        if args.rollback:
            if not args.name:
                raise PromotionError("--rollback needs --name")
            moved = registry.rollback(c, args.name, args.alias)
            print(f"rolled back: {args.name}@{args.alias} -> version {moved['champion']} (was {moved[registry.PREVIOUS]})", file=sys.stderr)
            print(json.dumps(moved))
            return 0
        if not args.dirs:
            raise PromotionError("give the sweep folders whose trials the rule ranks")
        missing = [d for d in args.dirs if not Path(d).is_dir()]
        if missing:
            raise PromotionError(f"no such folder: {', '.join(missing)}")
        name, version = candidate(c, args.dirs, args.sql)
        promote = guarded_promotion(uri, api_base=args.api_base, min_gain=args.min_gain, force=args.force,
                                    by="force" if args.force else "python -m gepa_lab.promote")
        result = promote(c, name, version, args.alias)
    except (PromotionError, registry.RegistrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    promoted = result["alias"] == args.alias
    print(f"{name} version {version}: " + (f"now {args.alias}" if promoted else f"labelled {result['alias']}") + f" ({result['reason']})",
          file=sys.stderr)
    print(json.dumps({"name": name, "version": version, **result}, default=str))
    return 0 if promoted else 1


if __name__ == "__main__":
    sys.exit(main())
