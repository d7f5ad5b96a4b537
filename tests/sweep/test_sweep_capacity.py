"""A sweep against 3 simulator replicas x max_in_flight 4 at 1 s per request (12 requests/s possible), 3 trials at
once, cache off: the servers are the bottleneck, not this machine. The sweep keeps every replica full: each
simulator reaches 4 requests in flight and never queues one (the router holds the excess), the router never gives a
replica more than 4, and lm_utilization is at least 0.8. The replicas require a canary key that only the driver's
environment holds: every trial authenticates through the router's token, and the key is in no file of the output
folder or of the sweep's Ray temp dir; the router's token in no file of the output folder."""
from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from gepa_lab.servers.simulator import start_simulator
from tests.conftest import run_cli
from tests.sweep.canary import files_containing

pytestmark = pytest.mark.timeout(900)

SLOTS = 4
KEY_ENV = "GEPA_LAB_CANARY_KEY"


class RouterToken:
    """Reads the sweep's token from the environment (/proc) of its router, the one routing to `replica`, while the
    sweep runs: the test's only way to learn a secret the driver makes and hands to the router and the trials alone."""

    def __init__(self, replica: str):
        self.replica = replica.encode()
        self.value: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self.value is None and not self._stop.wait(0.5):
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"gepa_lab.servers.router" in cmdline and self.replica in cmdline:
                        env = dict(v.split(b"=", 1) for v in (proc / "environ").read_bytes().split(b"\0") if b"=" in v)
                        self.value = env[b"GEPA_LAB_ROUTER_TOKEN"].decode()

    def stop(self) -> str | None:
        self._stop.set()
        self._thread.join()
        return self.value


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity") / "sweep"
    canary = f"sk-canary-{uuid.uuid4().hex}"
    # the sweep's temp files, its local Ray's included, go here (short: Ray's socket paths live under it)
    tmp_root = Path(tempfile.mkdtemp(prefix="gl-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            sims = [stack.enter_context(start_simulator(max_in_flight=SLOTS, latency_ms=1000, api_key=canary))
                    for _ in range(3)]
            urls = ",".join(s.url for s in sims)
            token = RouterToken(sims[0].url)
            result = run_cli(
                "gepa_lab.sweep", "sweep=demo", f"output_dir={out}", "cache=off", "tracking=none",
                f"lm.api_base=[{urls}]", f"lm.max_in_flight={SLOTS}", f"lm.api_key_env={KEY_ENV}",
                "reflection_lm.sim.latency_ms=5",  # a simulator of its own: the reflection LM is sized on its own
                "sweep.max_concurrent=3", "sweep.space.optimizer.seed={grid:[0,1,2]}",
                "sweep.space.optimizer.reflection_minibatch_size={grid:[12]}", "optimizer.max_metric_calls=150",
                "corpus.name=banking77_capacity", "corpus.splits.train=40", "corpus.splits.val=24", "corpus.splits.test=16",
                env={KEY_ENV: canary, "TMPDIR": str(tmp_root)}, timeout=850,
            )
            stats = [s.stats() for s in sims]
            router_token = token.stop()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        yield {"out": out, "canary": canary, "stats": stats, "tmp": tmp_root, "stdout": result.stdout,
               "summary": json.loads((out / "summary.json").read_text()), "token": router_token}
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def test_every_replica_is_kept_full_and_never_flooded(sweep):
    summary = sweep["summary"]
    assert summary["trials"]["completed"] == 3
    for sim in sweep["stats"]:
        assert sim["peak_in_flight"] == SLOTS, sim
        assert sim["peak_queued"] == 0, sim  # nothing waited inside a server: the router held the excess
    load = summary["lm_load"]
    assert load["capacity"] == 3 * SLOTS and load["eval_threads"] == [3 * SLOTS]  # 3 shares of 3 trials: all of it
    assert all(r["peak_in_flight"] <= SLOTS for r in load["replicas"]) and len(load["replicas"]) == 3
    assert load["peak_waiting"] > 0  # there was an excess, and the router held it
    print(f"lm_utilization {summary['lm_utilization']}: {load}")
    # the router's integral over the trials' windows agrees with the servers' own (all their traffic came from trials)
    at_servers = sum(sim["mean_in_flight"] * sim["busy_seconds"] for sim in sweep["stats"])
    assert 0.9 * at_servers <= load["busy_slot_s"] <= 1.05 * at_servers, (load, at_servers)
    assert summary["lm_utilization"] >= 0.8, load
    assert f"task LM utilization: {summary['lm_utilization']:.2f} of 12 slots" in sweep["stdout"]


def test_every_trial_authenticated_and_the_key_is_written_nowhere(sweep):
    for sim in sweep["stats"]:
        assert sim["requests_served"] > 0 and sim["errors"]["401"] == 0, sim
    assert not files_containing(sweep["out"], sweep["canary"])
    ray_dirs = list(sweep["tmp"].glob("gepa_lab-ray-*"))
    assert ray_dirs and any(ray_dirs[0].rglob("*.log"))  # the sweep's own Ray temp dir, with its logs
    assert not files_containing(sweep["tmp"], sweep["canary"])
    # the router's token travels to the trials but is written to no file of the sweep's (Ray's own may hold it)
    assert sweep["token"] and not files_containing(sweep["out"], sweep["token"])
