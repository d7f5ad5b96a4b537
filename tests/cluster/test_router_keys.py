"""An LM key on the test bed, whose nodes have no such key in their environment (the head holds only the key of
sweeps run as jobs, under another name): a sweep from a shell on the head holds a canary key in the driver's
environment only, and both LMs require it: the task LM's `vllm_ray` replica on the GPU
node (started with the default `vllm serve` command) and the reflection LM's simulator. Trials on the head and on
the CPU node authenticate with the router's token alone, the replica gets the key in memory, and the canary is in
no file under output_dir nor under any node's Ray temp dir (logs, spilled objects). The sweep's routers are killed
while it runs: each is back on its address, and every trial completes."""
from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import psutil
import pytest

from tests.cluster.conftest import CPU_NODE_IP, GPU_NODE_IP, HEAD_IP
from tests.cluster.test_bed import UserCode, sweep_running
from tests.sweep.canary import files_containing

pytestmark = pytest.mark.timeout(600)

KEY_ENV = "GEPA_LAB_BED_LM_KEY"


def routers(sweep) -> dict[int, list[str]]:
    """The sweep driver's LM routers (child processes): pid -> command line."""
    found = {}
    for child in psutil.Process(sweep.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "gepa_lab.servers.router" in (cmdline := child.cmdline()):
                found[child.pid] = cmdline
    return found


def test_a_key_only_the_driver_holds_reaches_every_trial_and_replica_and_lands_nowhere(bed, tmp_path):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    code = UserCode.write(tmp_path)  # records the node of each trial, and holds two trials at once
    out = tmp_path / "keys"
    with sweep_running(bed, out, *code.overrides(),
                       "lm=vllm_ray", "lm.model=bed-model", "lm.server.replicas=1", "lm.max_in_flight=4",
                       "lm.server.startup_timeout_s=120", f"lm.api_key_env={KEY_ENV}", f"reflection_lm.api_key_env={KEY_ENV}",
                       "corpus.name=banking77_bed_shell", env=bed.driver_env(**{KEY_ENV: canary, "PYTHONPATH": str(code.folder)}),
                       logs=tmp_path) as sweep:
        # both routers (the task LM's, before its replica; the reflection LM's, before the keyed simulator) die
        # while a trial runs: each is started again on its address (same port, same arguments) by its supervisor
        sweep.wait_for(lambda: len(code.trials()) >= 1, "a trial running")
        killed = routers(sweep)
        assert len(killed) == 2, killed
        for pid in killed:
            psutil.Process(pid).kill()
        sweep.wait_for(lambda: len(back := routers(sweep)) == 2 and not back.keys() & killed.keys()
                       and sorted(back.values()) == sorted(killed.values()), "both routers back", timeout_s=60)
        result = sweep.finish()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2

    # a trial on each node that has a CPU for one, neither with the key: both went through the router with the token
    assert {t["node"] for t in code.trials()} == {HEAD_IP, CPU_NODE_IP}
    # the replica ran on the GPU node and required the key, which reached it in memory: not on its command line
    [replica_log] = (out / "lm").glob("lm*/replicas/*.log")
    log = replica_log.read_text()
    assert f"--host {GPU_NODE_IP}" in log.splitlines()[0] and "api key required" in log
    assert summary["lm_utilization"] is not None  # the task LM was behind the router

    assert not files_containing(out, canary)
    for node, temp_dir in bed.temp_dirs.items():
        assert any(Path(temp_dir).rglob("*.log")), node
        assert not files_containing(Path(temp_dir), canary), node
