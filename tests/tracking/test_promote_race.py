"""Compare-and-set alias moves: two promotions racing on one real `mlflow server` (the session's) leave `champion` on a
version that passed its guard against the very version it replaced, never on one judged against a stale champion."""
import threading

from gepa_lab import promote
from gepa_lab.config.schema import MlflowConfig
from gepa_lab.tracking import registry
from tracking_helpers import register_in_new_sweep, scores

NAME = "race-reviews"


def held(c, name, version, alias):
    return {"alias": None, "reason": "held for the race"}


def test_two_concurrent_promotions_never_leave_a_stale_champion(sweep, simulator, mlflow_server, tmp_path, monkeypatch):
    url, _ = mlflow_server
    mcfg = MlflowConfig(tracking_uri=url, experiment="race", registered_model_name=NAME)
    v1 = register_in_new_sweep(tmp_path, "r1", scores(5), simulator.url, mcfg=mcfg)["version"]  # the first champion
    v2 = register_in_new_sweep(tmp_path, "r2", scores(12), simulator.url, promote=held, mcfg=mcfg)["version"]
    v3 = register_in_new_sweep(tmp_path, "r3", scores(20), simulator.url, promote=held, mcfg=mcfg)["version"]
    c = registry.open_registry(url)
    assert registry.alias_version(c, NAME, "champion") == v1

    # both racers read champion v1 and judge against it before either moves: the race a plain set_alias loses
    barrier, seen, real_guard = threading.Barrier(2, timeout=120), set(), promote.guard

    def racing_guard(champion, challenger, min_gain=0.0):
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            barrier.wait()
        return real_guard(champion, challenger, min_gain)

    monkeypatch.setattr(promote, "guard", racing_guard)
    results, errors = {}, []

    def race(version):
        try:
            results[version] = promote.guarded_promotion(url, by=f"racer {version}")(c, NAME, version, "champion")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(v,)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    # v3 beats both; v2 beats v1 only. Whoever moved second was judged against whoever moved first.
    assert registry.alias_version(c, NAME, "champion") == v3
    moves = [m for v in (v2, v3) for m in registry.alias_moves(c, NAME, v) if m["alias"] == "champion"]
    assert moves and all(m["against_version"] == m["from_version"] for m in moves), moves
    if results[v2]["alias"] == "champion":  # v2 moved first: v3 then replaced v2, judged against it
        assert results[v3]["against_version"] == v2
    else:  # v3 moved first: v2 was judged again, against v3, and refused
        assert results[v2]["alias"] == "challenger" and results[v2]["against_version"] == v3
    assert registry.alias_version(c, NAME, "previous") in (v1, v2)
