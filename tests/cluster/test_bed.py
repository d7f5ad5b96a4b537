"""Sweeps on the test bed (tests/cluster/conftest.py: a head, a CPU node and a GPU node, each its own raylet at
its own loopback address), reached the ways users reach a cluster: Ray jobs (the recipe's `scripts/submit.py`,
and Ray's own `ray job submit`) and `cluster=existing` from a shell. Each sweep is small (one or two trials of a
few dozen metric calls): what is under test is where things run and what travels, not the search."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from gepa_lab.config.identity import GIT_STATE_ENV
from gepa_lab.results import query
from tests.cluster.conftest import BIN, CPU_NODE_IP, GPU_NODE_IP, HEAD_IP
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)

SMALL = ["tracking=none", "optimizer.max_metric_calls=40", "corpus.splits.train=20", "corpus.splits.val=10",
         "corpus.splits.test=10"]
ONE_MINIBATCH = ["~sweep.space.optimizer.reflection_minibatch_size", "optimizer.reflection_minibatch_size=3"]
# the user's task code: the shipped classifier under its own module name, which writes down, in every Ray worker
# that imports it, where it was imported from and on which node. Its program waits (a minute at most) until two
# trials have started: a trial lasts about a second here, and Tune would otherwise run the second in the first's
# worker, once it is free (reuse_actors); with both running at once, each holds its node's only trial CPU.
USER_MODULE = '''
import functools
import json
import os
import time

import ray

from gepa_lab.tasks.classify import label_metric, make_program as classifier

if ray.is_initialized():  # a trial's worker (the driver imports it too, to check the import path, before Ray)
    with open({record!r}, "a") as record:
        record.write(json.dumps({{"file": __file__, "node": ray.util.get_node_ip_address(), "pid": os.getpid()}}) + "\\n")


@functools.wraps(classifier)
def make_program(*args, **kwargs):
    with open({started!r}, "a") as started:
        started.write(f"{{os.getpid()}}\\n")
    deadline = time.time() + 60
    while len(set(open({started!r}).read().split())) < 2 and time.time() < deadline:
        time.sleep(0.2)
    return classifier(*args, **kwargs)


@functools.wraps(label_metric)
def metric(*args, **kwargs):
    return label_metric(*args, **kwargs)
'''


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def errors(result: subprocess.CompletedProcess) -> list[str]:
    """The one-line errors of a sweep that refused to start (exit status 2)."""
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-5000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def sweep_from_a_shell(bed, out: Path, *overrides: str, env: dict[str, str] | None = None, prefix: tuple = ()):
    return subprocess.run([*prefix, sys.executable, "-m", "gepa_lab.sweep", "sweep=demo", f"output_dir={out}",
                           "cluster=existing", f"ray.address={bed.address}", *ONE_MINIBATCH, *SMALL, *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env or bed.driver_env())


def test_a_shell_sweep_ships_the_users_code_to_every_node_and_records_where_its_code_came_from(bed, tmp_path):
    code = tmp_path / "elsewhere"  # on the driver's PYTHONPATH only: no node has it on sys.path
    code.mkdir()
    module = f"bed_task_{uuid.uuid4().hex[:8]}"
    record = tmp_path / "imports.jsonl"
    (code / f"{module}.py").write_text(USER_MODULE.format(record=str(record), started=str(tmp_path / "started")))
    out = tmp_path / "shell-sweep"
    result = sweep_from_a_shell(bed, out, f"task.program={module}:make_program", f"task.metric={module}:metric",
                                "corpus.name=banking77_bed_shell", env=bed.driver_env(PYTHONPATH=str(code)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 2

    # the driver joined the cluster at its loopback address (not the interface address Ray picks otherwise)
    assert f"Connecting to existing Ray cluster at address: {bed.address}" in result.stderr
    # both trials' workers imported the module, each on its own node, from what Ray shipped there
    imports = [json.loads(line) for line in record.read_text().splitlines()]
    assert {i["node"] for i in imports} == {HEAD_IP, CPU_NODE_IP}  # the GPU node has no CPU for a trial
    shipped_to = {str(temp_dir) for temp_dir in bed.temp_dirs.values()}
    for imported in imports:
        path = Path(imported["file"])
        assert "runtime_resources" in path.parts and any(imported["file"].startswith(t) for t in shipped_to), imported

    commit = head_commit()
    con = query.connect([out])
    rows = con.execute("SELECT git_commit, git_dirty, git_diff_hash FROM trials").fetchall()
    assert len(rows) == 2 and all(c == commit and isinstance(dirty, bool) and bool(h) == dirty for c, dirty, h in rows)
    assert con.execute("SELECT git_commit FROM sweeps").fetchone()[0] == summary["git_commit"] == commit


def test_the_recipes_submit_line_runs_a_vllm_sweep_as_a_job_recording_the_checkouts_git_state(bed, tmp_path):
    out = tmp_path / "job-sweep"
    bed_sized = ["lm.server.replicas=1", "lm.max_in_flight=4", "lm.server.startup_timeout_s=120",
                 "lm@reflection_lm=sim", "optimizer.auto=null", "sweep.num_samples=1", "sweep.scheduler=fifo",
                 "sweep.resources.cpu=1", "corpus.name=banking77_bed_job", "optimizer.reflection_minibatch_size=8", *SMALL]
    result = subprocess.run([*bed.submit, f"output_dir={out}", *bed_sized], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env=bed.driver_env())
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 1

    # the replica ran the default `vllm serve` command on the GPU node (where Ray placed its num_gpus=1), bound
    # to that node's loopback address
    [replica_log] = (out / "lm").glob("lm*/replicas/*.log")
    command = replica_log.read_text().splitlines()[0]
    assert command.startswith("$ vllm serve Qwen/Qwen2.5-7B-Instruct") and f"--host {GPU_NODE_IP}" in command, command
    assert "--max-num-seqs 4" in command and "--enable-prefix-caching" in command

    # the job's copy of this folder has no .git: the git state came from the submit helper, through the job
    job_id = re.search(r"submitted (\S+) to", result.stderr).group(1)
    given = JobSubmissionClient(bed.dashboard).get_job_info(job_id).runtime_env["env_vars"][GIT_STATE_ENV]
    commit, _, diff_hash = given.partition("+")
    assert commit == head_commit()
    con = query.connect([out])
    assert con.execute("SELECT git_commit, git_dirty, git_diff_hash FROM trials").fetchall() == [
        (commit, bool(diff_hash), diff_hash or None)]
    assert (summary["git_commit"], summary["git_dirty"], summary["git_diff_hash"]) == (commit, bool(diff_hash), diff_hash or None)


def test_an_output_dir_one_node_sees_differently_fails_the_storage_probe_naming_that_node(bed, tmp_path):
    if bed.private_dir is None:
        pytest.skip("this machine allows no mount namespace: no bed node sees a folder of its own")
    out = bed.private_dir / "sweep"  # the CPU node sees its own tmpfs there; the head and the driver, this folder
    # submitted as users do without the helper: Ray's own CLI, the plain sweep CLI as the job (RAY_ADDRESS is set
    # inside a job, so the default cluster=local joins the bed)
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", bed.dashboard, "--working-dir", ".", "--", "python", "-m",
         "gepa_lab.sweep", "sweep=demo", f"output_dir={out}", *ONE_MINIBATCH, *SMALL, "corpus.name=banking77_bed_job"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=bed.driver_env())
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # the job failed
    # the job's log, as `ray job submit` follows it and then repeats its tail: one error line, twice
    [error] = {line for line in result.stdout.splitlines() if line.startswith("error: ")}
    assert f"output_dir {out} is not storage the cluster shares: node {CPU_NODE_IP}" in error, error
    assert not (out / "trials").exists() and not list(out.glob(".storage-probe-*"))


def test_an_lm_endpoint_only_the_driver_reaches_fails_the_preflight_naming_node_and_endpoint(bed, tmp_path, simulator):
    if bed.unshare is None:
        pytest.skip("this machine allows no mount namespace: the driver cannot resolve a name the nodes do not")
    hosts = tmp_path / "hosts"  # the driver's /etc/hosts, with a name no node resolves
    hosts.write_text(Path("/etc/hosts").read_text() + "\n127.0.0.1 bed-lm\n")
    endpoint = simulator.url.replace("127.0.0.1", "bed-lm")
    out = tmp_path / "preflight"
    result = sweep_from_a_shell(
        bed, out, f"lm.api_base={endpoint}", f"reflection_lm.api_base={endpoint}", "lm.router.enabled=never",
        "reflection_lm.router.enabled=never", "corpus.name=banking77_bed_shell",
        prefix=(*bed.unshare, "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)))
    [error] = errors(result)
    assert re.search(rf"from node ({HEAD_IP}|{CPU_NODE_IP}) \(\w+\): LM endpoint {re.escape(endpoint)} does not answer", error), error
    assert not (out / "trials").exists()
