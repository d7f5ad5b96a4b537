"""Sweeps on the test bed (tests/cluster/conftest.py: a head, a CPU node and a GPU node, each its own raylet at
its own loopback address), reached the ways users reach a cluster: Ray jobs (the recipe's `scripts/submit.py`,
and Ray's own `ray job submit`) and `cluster=existing` from a shell, and a node joining while a sweep runs. Each
sweep is small (one to three trials of a few dozen metric calls): what is under test is where things run and what
travels, not the search."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from ray.job_submission import JobSubmissionClient

from gepa_lab.config.identity import GIT_STATE_ENV
from gepa_lab.results import query
from gepa_lab.servers.ray_cluster import alive_nodes, on_each_node
from tests.cluster.conftest import BIN, CPU_NODE_IP, GPU_NODE_IP, HEAD_IP, JOB_KEY_ENV, LATE_NODE_IP
from tests.conftest import ROOT
from tests.sweep.canary import files_containing

pytestmark = pytest.mark.timeout(600)

SMALL = ["tracking=none", "optimizer.max_metric_calls=40", "corpus.splits.train=20", "corpus.splits.val=10",
         "corpus.splits.test=10"]
ONE_MINIBATCH = ["~sweep.space.optimizer.reflection_minibatch_size", "optimizer.reflection_minibatch_size=3"]
# the user's task code: the shipped classifier under its own module name, which writes down, in every Ray worker
# that imports it, where it was imported from and on which node, and in every trial that builds its program, on
# which node. Its program waits (wait_s at most) until `at_once` trials have started: a trial lasts about a second
# here, and Tune would otherwise run the next in a finished one's worker (reuse_actors); with all running at once,
# each holds its node's only trial CPU.
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
        started.write(json.dumps({{"node": ray.util.get_node_ip_address(), "pid": os.getpid()}}) + "\\n")
    deadline = time.time() + {wait_s}
    while len(set(open({started!r}).read().splitlines())) < {at_once} and time.time() < deadline:
        time.sleep(0.2)
    return classifier(*args, **kwargs)


@functools.wraps(label_metric)
def metric(*args, **kwargs):
    return label_metric(*args, **kwargs)
'''


@dataclass
class UserCode:
    """USER_MODULE, written as a module of its own into a folder on no node's sys.path."""

    folder: Path  # for the driver's PYTHONPATH
    module: str
    record: Path  # a JSON line per Ray worker that imported the module: file, node, pid
    started: Path  # a JSON line per trial that built its program: node, pid

    @classmethod
    def write(cls, tmp_path: Path, at_once: int = 2, wait_s: int = 60) -> "UserCode":
        code = cls(tmp_path / "code", f"bed_task_{uuid.uuid4().hex[:8]}", tmp_path / "imports.jsonl",
                   tmp_path / "started.jsonl")
        code.folder.mkdir()
        (code.folder / f"{code.module}.py").write_text(
            USER_MODULE.format(record=str(code.record), started=str(code.started), at_once=at_once, wait_s=wait_s))
        return code

    def overrides(self) -> list[str]:
        return [f"task.program={self.module}:make_program", f"task.metric={self.module}:metric"]

    def imports(self) -> list[dict]:
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def trials(self) -> list[dict]:
        """Each trial that started (a program built twice in one trial is one)."""
        lines = dict.fromkeys(self.started.read_text().splitlines()) if self.started.exists() else {}
        return [json.loads(line) for line in lines]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def errors(result: subprocess.CompletedProcess) -> list[str]:
    """The one-line errors of a sweep that refused to start (exit status 2)."""
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-5000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def shell_sweep_argv(bed, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gepa_lab.sweep", "sweep=demo", f"output_dir={out}", "cluster=existing",
            f"ray.address={bed.address}", *ONE_MINIBATCH, *SMALL, *overrides]


def sweep_from_a_shell(bed, out: Path, *overrides: str, env: dict[str, str] | None = None, prefix: tuple = ()):
    return subprocess.run([*prefix, *shell_sweep_argv(bed, out, *overrides)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env or bed.driver_env())


class RunningSweep:
    """A sweep from a shell, running while the test acts on the cluster; its output in files under `logs`."""

    def __init__(self, argv: list[str], env: dict[str, str], logs: Path):
        self.stdout, self.stderr = logs / "sweep.out", logs / "sweep.err"
        with open(self.stdout, "w") as stdout, open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)

    def output(self) -> str:
        return self.stdout.read_text()[-3000:] + self.stderr.read_text()[-5000:]

    def wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
        deadline = time.time() + timeout_s
        while not ready():
            assert self.proc.poll() is None, f"the sweep ended before {what}: {self.output()}"
            assert time.time() < deadline, f"no {what} within {timeout_s} s: {self.output()}"
            time.sleep(0.5)

    def finish(self, timeout_s: float = 600) -> subprocess.CompletedProcess:
        self.proc.wait(timeout=timeout_s)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.stdout.read_text(),
                                           self.stderr.read_text())


@contextlib.contextmanager
def sweep_running(bed, out: Path, *overrides: str, env: dict[str, str], logs: Path) -> Iterator[RunningSweep]:
    sweep = RunningSweep(shell_sweep_argv(bed, out, *overrides), env, logs)
    try:
        yield sweep
    finally:
        if sweep.proc.poll() is None:  # a failed assertion: what the driver started dies with it
            sweep.proc.kill()
            sweep.proc.wait()


def test_a_shell_sweep_ships_the_users_code_to_every_node_also_one_joining_mid_sweep_and_records_its_code(bed, tmp_path):
    # three trials at once: one on each node that can run one (the head, the CPU node; the GPU node has no CPU for
    # a trial), each holding its node's only trial CPU until the third starts, which waits for a node to join
    code = UserCode.write(tmp_path, at_once=3, wait_s=300)
    out = tmp_path / "shell-sweep"
    with sweep_running(bed, out, *code.overrides(), "sweep.space.optimizer.seed={grid:[0,1,2]}", "sweep.max_concurrent=3",
                       "corpus.name=banking77_bed_shell", env=bed.driver_env(PYTHONPATH=str(code.folder)), logs=tmp_path) as sweep:
        sweep.wait_for(lambda: len(code.trials()) >= 2, "two trials running")
        assert {t["node"] for t in code.trials()} == {HEAD_IP, CPU_NODE_IP}
        with bed.node_joining(LATE_NODE_IP, tmp_path / "late-node.log") as late_temp_dir:
            result = sweep.finish()
            imports = code.imports()
    assert LATE_NODE_IP not in bed.alive_node_ips()  # stopped, and the cluster knows it
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["total"] == summary["trials"]["completed"] == 3
    # the third trial ran on the node that joined (its trial CPU the only one free), which passed the checks a
    # trial runs first on its node (output_dir shared, the LM endpoints answer)
    assert sorted(t["node"] for t in code.trials()) == sorted([HEAD_IP, CPU_NODE_IP, LATE_NODE_IP])

    # the driver joined the cluster at its loopback address (not the interface address Ray picks otherwise)
    assert f"Connecting to existing Ray cluster at address: {bed.address}" in result.stderr
    # every trial's worker imported the module on its own node, from what Ray shipped there (also to the late node)
    assert {i["node"] for i in imports} == {HEAD_IP, CPU_NODE_IP, LATE_NODE_IP}
    shipped_to = [str(temp_dir) for temp_dir in [*bed.temp_dirs.values(), late_temp_dir]]
    for imported in imports:
        path = Path(imported["file"])
        assert "runtime_resources" in path.parts and any(imported["file"].startswith(t) for t in shipped_to), imported

    commit = head_commit()
    con = query.connect([out])
    rows = con.execute("SELECT git_commit, git_dirty, git_diff_hash FROM trials").fetchall()
    assert len(rows) == 3 and all(c == commit and isinstance(dirty, bool) and bool(h) == dirty for c, dirty, h in rows)
    assert con.execute("SELECT git_commit FROM sweeps").fetchone()[0] == summary["git_commit"] == commit


def test_the_recipes_submit_line_runs_a_keyed_vllm_sweep_as_a_job_recording_the_checkouts_git_state(bed, tmp_path):
    """Both LMs require the key, which is in the head's environment only (never in the job's runtime_env)."""
    out = tmp_path / "job-sweep"
    bed_sized = ["lm.server.replicas=1", "lm.max_in_flight=4", "lm.server.startup_timeout_s=120",
                 "lm@reflection_lm=sim", "optimizer.auto=null", "sweep.num_samples=1", "sweep.scheduler=fifo",
                 "sweep.resources.cpu=1", "corpus.name=banking77_bed_job", "optimizer.reflection_minibatch_size=8",
                 f"lm.api_key_env={JOB_KEY_ENV}",
                 f"reflection_lm.api_key_env={JOB_KEY_ENV}", *SMALL]
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
    assert "api key required" in replica_log.read_text()  # the key reached the replica (in memory)

    # the job's copy of this folder has no .git: the git state came from the submit helper, through the job
    job_id = re.search(r"submitted (\S+) to", result.stderr).group(1)
    given = JobSubmissionClient(bed.dashboard).get_job_info(job_id).runtime_env["env_vars"][GIT_STATE_ENV]
    commit, _, diff_hash = given.partition("+")
    assert commit == head_commit()
    con = query.connect([out])
    assert con.execute("SELECT git_commit, git_dirty, git_diff_hash FROM trials").fetchall() == [
        (commit, bool(diff_hash), diff_hash or None)]
    assert (summary["git_commit"], summary["git_dirty"], summary["git_diff_hash"]) == (commit, bool(diff_hash), diff_hash or None)

    # the key is nowhere the job left a trace: the Jobs API (as the dashboard shows it), output_dir, any node's Ray
    # temp dir (the job's driver log among them)
    jobs_api = [httpx.get(f"{bed.dashboard}/api/jobs/{path}", timeout=30) for path in ("", job_id, f"{job_id}/logs")]
    assert [r.status_code for r in jobs_api] == [200, 200, 200] and job_id in jobs_api[0].text
    assert not [r.request.url for r in jobs_api if bed.job_key in r.text]
    assert not files_containing(out, bed.job_key)
    for node, temp_dir in bed.temp_dirs.items():
        assert not files_containing(temp_dir, bed.job_key), node


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


def test_a_node_joining_mid_sweep_that_does_not_share_output_dir_stops_the_sweep_naming_it(bed, tmp_path):
    if bed.unshare is None:
        pytest.skip("this machine allows no mount namespace: no node can see a folder of its own")
    out = bed.private_dir / "late-join"  # the joining node sees its own tmpfs there; the driver, this folder
    # the trial needs a resource only the joining node has: the sweep starts with no node that can run it (the
    # checks before the sweep have none to probe) and waits for one, as on a cluster that scales up
    with sweep_running(bed, out, "sweep.space.optimizer.seed={grid:[0]}", "+sweep.resources.custom.late_bed=1",
                       "corpus.name=banking77_bed_shell", env=bed.driver_env(), logs=tmp_path) as sweep:
        sweep.wait_for(lambda: "sweep demo: 1 trials" in sweep.stderr.read_text(), "the sweep's start")
        with bed.node_joining(LATE_NODE_IP, tmp_path / "late-node.log", resources='{"late_bed": 1}',
                              own_private_dir=True):
            result = sweep.finish()
    [error] = errors(result)
    assert f"output_dir {out} is not storage the cluster shares: node {LATE_NODE_IP} (" in error, error
    assert not (out / "trials").exists() and not (out / "results").exists()  # the trial never began


def test_the_checks_before_a_sweep_leave_out_a_node_that_is_gone_but_not_yet_marked_dead(bed):
    """A node killed without a word is counted alive until the cluster has missed enough of its heartbeats: a
    task pinned to it cannot be placed (TaskUnschedulableError). It runs no trial either, so the checks leave it
    out rather than refuse the sweep."""
    import ray

    ray.init(address=bed.address, _node_ip_address=HEAD_IP)
    try:
        [head] = [n for n in alive_nodes() if n["NodeManagerAddress"] == HEAD_IP]
        gone = {**head, "NodeID": uuid.uuid4().hex + uuid.uuid4().hex[:24], "NodeManagerAddress": "127.0.0.9"}
        assert list(on_each_node([head, gone], ray.util.get_node_ip_address).values()) == [HEAD_IP]
    finally:
        ray.shutdown()
