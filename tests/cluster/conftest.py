"""The test bed: a real Ray cluster of three nodes on this machine, started from the recipe in docs/cluster.md.

Each node is its own `ray start --block` (its own raylet, ports and temp dir), one after another, at its own
loopback address, which Ray keeps as given: the head at 127.0.0.2 (the sweep driver's node, trials on its CPU,
the Jobs API), a CPU node at 127.0.0.3 (trials) and a GPU node at 127.0.0.4 (`--num-gpus 1` without hardware:
Ray's real GPU placement; no CPU, so no trials). The recipe's lines run with the substitutions docs/cluster.md
names: HEAD_IP / NODE_IP -> those addresses, CPU and GPU counts -> 1, `ray` -> this environment's, plus what
several nodes on one machine need (`--block`, a temp dir and ports of their own), and on the GPU node a `vllm`
that serves the LM simulator, in place of the recipe's vLLM environment.

No worker node has an LM key (or any variable named like a secret) in its environment; the head holds one, a
canary (`Bed.job_key` in JOB_KEY_ENV), where docs/cluster.md puts the LM key of a sweep run as a Ray job: the job's
driver runs on the head and inherits it. Where mount namespaces are allowed, the CPU node runs in one of its own
with a tmpfs over `private_dir`: a folder it sees differently from every other process, as a node sees a path that
is not shared storage. `Bed.node_joining` adds a CPU node to the running cluster (the recipe's line again), for a
test to stop again.

The fixture is package-scoped: started once for every test under tests/cluster (they run one after another,
tests/conftest.py SERIAL), stopped (each node's process group, nothing else) after the last of them."""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from gepa_lab.servers.process import ChildProcess, free_port, free_ports
from tests.conftest import ROOT

RECIPE = ROOT / "docs" / "cluster.md"
BIN = Path(sys.executable).parent
HEAD_IP, CPU_NODE_IP, GPU_NODE_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LATE_NODE_IP = "127.0.0.5"  # a node a test adds while a sweep runs (Bed.node_joining)
JOB_KEY_ENV = "GEPA_LAB_BED_JOB_KEY"  # the LM key of sweeps run as Ray jobs: in the head's environment only
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
# every port a node opens, given so that several nodes on one machine never meet
NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-grpc-port",
              "dashboard-agent-listen-port", "runtime-env-agent-port")
VLLM_STANDIN = f'''#!{sys.executable}
"""`vllm serve` on the test bed's GPU node: the LM simulator, started with what vLLM's flags ask for."""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["serve"])
parser.add_argument("model_path")
for flag in ("--served-model-name", "--host", "--port", "--max-num-seqs"):
    parser.add_argument(flag, required=True)
args, gpu_flags = parser.parse_known_args()
# like vLLM, require the key in VLLM_API_KEY when it is set
key = ["--api-key-env", "VLLM_API_KEY"] if os.environ.get("VLLM_API_KEY") else []
os.execv(sys.executable, [sys.executable, "-m", "gepa_lab.sim", "--host", args.host, "--port", args.port,
                          "--model", args.served_model_name, "--max-in-flight", args.max_num_seqs, "--latency-ms", "5",
                          *key])
'''


@dataclass
class Bed:
    address: str  # the head's GCS, HOST:PORT: ray.address for `cluster=existing`
    dashboard: str  # the Jobs API, for `ray job submit` and scripts/submit.py
    submit: list[str]  # the recipe's submit line (argv), substituted; sweep overrides follow it
    temp_dirs: dict[str, Path]  # node address -> its Ray temp dir (sessions, logs, runtime resources)
    private_dir: Path | None  # the folder the CPU node sees as its own tmpfs; None where namespaces are refused
    unshare: list[str] | None  # runs a command in a mount namespace of its own (None: refused here)
    job_key: str  # the canary in JOB_KEY_ENV, in the head's environment
    cpu_node_line: str  # the recipe's CPU node line, HEAD_IP and the head's port filled in
    node_env: dict[str, str]  # a node's environment: no key

    def driver_env(self, **extra: str) -> dict[str, str]:
        """A shell on the head: this environment's python first on PATH, no RAY_ADDRESS of another cluster."""
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
        env.pop("RAY_ADDRESS", None)
        return env

    @contextlib.contextmanager
    def node_joining(self, ip: str, log_path: Path, *, resources: str | None = None,
                     own_private_dir: bool = False) -> Iterator[Path]:
        """A CPU node that joins the running cluster at `ip`, as a user adds one (the recipe's `ray start --address`
        line), without any key in its environment; yields its Ray temp dir once Ray started there. resources:
        `--resources` JSON; own_private_dir: in a mount namespace of its own with a tmpfs over private_dir (it does
        not share that folder). On exit the node is stopped (its process group, nothing else) and the test waits
        until the cluster has marked it dead, so that the next test starts on the bed as it was; its temp dir is
        removed."""
        temp_dir = Path(tempfile.mkdtemp(prefix="gl-bed-"))
        env = dict(self.node_env)
        argv = node_argv(self.cpu_node_line, {"NODE_IP": ip}, env, str(temp_dir))
        argv += [f"--resources={resources}"] if resources else []
        node = None
        try:
            for attempt in (1, 2):  # on 2 busy cores Ray's own start-up waits (30 s for the raylet) can run out: once more
                node = ChildProcess([*(private_mount(self.unshare, self.private_dir) if own_private_dir else []), *argv],
                                    log_path=log_path, env=env, die_with_parent=True, death_signal=signal.SIGTERM)
                try:
                    node.wait_until(lambda: "Ray runtime started" in node.log_tail(100_000), 180,
                                    f"the node joining at {ip}", interval_s=0.2)
                    break
                except RuntimeError:
                    node.kill()
                    if attempt == 2:
                        raise
            yield temp_dir
        finally:
            if node is not None:
                node.stop(timeout=60)  # SIGTERM: Ray leaves the cluster, which marks it dead at once
                node.kill()  # whatever of its group is left
            shutil.rmtree(temp_dir, ignore_errors=True)
            deadline = time.monotonic() + 120
            while ip in self.alive_node_ips() and time.monotonic() < deadline:
                time.sleep(0.5)

    def alive_node_ips(self) -> set[str]:
        """The nodes the cluster counts as alive, from Ray's state API (the head's dashboard)."""
        from ray.util.state import list_nodes

        # unfiltered: with a filter, Ray takes the nodes it leaves out for missing data and raises
        return {n.node_ip for n in list_nodes(address=self.dashboard, limit=1000) if n.state == "ALIVE"}


def recipe() -> dict[str, str]:
    """The recipe's command lines by role: head, gpu_node, cpu_node, vllm_env, submit."""
    page = RECIPE.read_text()
    block = re.search(r"<!-- the recipe[^>]*-->\s*```bash\n(.*?)```", page, re.S)
    assert block, f"{RECIPE} has no recipe block"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
    roles = {"head": "--head", "gpu_node": "--num-gpus", "vllm_env": "pip install", "submit": "scripts/submit.py"}
    found = {role: next(line for line in lines if mark in line) for role, mark in roles.items()}
    found["cpu_node"] = next(line for line in lines if "ray start" in line and line not in found.values())
    return found


def node_argv(line: str, subs: dict[str, str], env: dict[str, str], temp_dir: str) -> list[str]:
    """One recipe `ray start` line as this machine runs it; its leading NAME=VALUE words go into env."""
    for placeholder, value in subs.items():
        line = line.replace(placeholder, value)
    words = shlex.split(line)
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        env[name] = value.replace("$PATH", env["PATH"])
    assert words[:2] == ["ray", "start"], line
    argv = [sys.executable, "-m", "ray.scripts.scripts", *words[1:], "--block", f"--temp-dir={temp_dir}",
            *(f"--{flag}={port}" for flag, port in zip(NODE_PORTS, free_ports(len(NODE_PORTS))))]
    for i, word in enumerate(argv[:-1]):
        if word in ("--num-cpus", "--num-gpus") and argv[i + 1] != "0":
            argv[i + 1] = "1"
    return argv


def mount_namespace(folder: Path) -> list[str] | None:
    """`unshare` that runs a command in a mount namespace of its own where it may mount (as root, or in a user
    namespace); None where this machine refuses both (a tmpfs over `folder` is the test)."""
    for unshare in (["unshare", "-m", "--propagation", "private"], ["unshare", "-rm", "--propagation", "private"]):
        if subprocess.run([*unshare, "mount", "-t", "tmpfs", "gepa_lab_bed", str(folder)], capture_output=True).returncode == 0:
            return unshare
    return None


def private_mount(unshare: list[str] | None, folder: Path | None) -> list[str]:
    """The prefix that runs a command in a mount namespace of its own, with a tmpfs over `folder`."""
    assert unshare and folder, "this machine allows no mount namespace"
    return [*unshare, "sh", "-c", 'mount -t tmpfs gepa_lab_bed "$0" && exec "$@"', str(folder)]


@pytest.fixture(scope="package")
def bed(tmp_path_factory):
    lines = recipe()
    work = tmp_path_factory.mktemp("bed")
    standin = work / "vllm-env"
    standin.mkdir()
    (standin / "vllm").write_text(VLLM_STANDIN)
    (standin / "vllm").chmod(0o755)
    private = work / "private"
    private.mkdir()
    unshare = mount_namespace(private)
    wrap = private_mount(unshare, private) if unshare else []
    gcs, dashboard = map(str, free_ports(2))
    base_env = {k: v for k, v in os.environ.items() if not SECRET_NAME.search(k)}
    base_env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_ADDRESS="")
    job_key = f"sk-job-canary-{uuid.uuid4().hex}"
    nodes: list[ChildProcess] = []
    temp_dirs: dict[str, Path] = {}
    try:
        for role, ip, prefix in (("head", HEAD_IP, []), ("cpu_node", CPU_NODE_IP, wrap), ("gpu_node", GPU_NODE_IP, [])):
            env = {**base_env, JOB_KEY_ENV: job_key} if role == "head" else dict(base_env)
            temp_dirs[ip] = Path(tempfile.mkdtemp(prefix="gl-bed-"))  # short: Ray's socket paths live under it
            subs = {"HEAD_IP": HEAD_IP, "NODE_IP": ip, "6379": gcs, "8265": dashboard, "/opt/vllm/bin": str(standin)}
            argv = node_argv(lines[role], subs, env, str(temp_dirs[ip]))
            if role == "head":
                argv.append(f"--ray-client-server-port={free_port()}")
            # if pytest dies without its finally, SIGTERM makes `ray start --block` stop its node
            node = ChildProcess([*prefix, *argv], log_path=work / f"{role}.log", env=env, die_with_parent=True,
                                death_signal=signal.SIGTERM)
            nodes.append(node)
            node.wait_until(lambda: "Ray runtime started" in node.log_tail(100_000), 180, f"the bed's {role} ({ip})",
                            interval_s=0.2)
        submit = shlex.split(lines["submit"].replace("HEAD_IP:8265", f"{HEAD_IP}:{dashboard}"))
        assert submit[:2] == ["python", "scripts/submit.py"], lines["submit"]
        submit = [sys.executable, *submit[1:]]
        yield Bed(address=f"{HEAD_IP}:{gcs}", dashboard=f"http://{HEAD_IP}:{dashboard}",
                  submit=[w for w in submit if not w.startswith("output_dir=")], temp_dirs=temp_dirs,
                  private_dir=private if unshare else None, unshare=unshare, job_key=job_key,
                  cpu_node_line=lines["cpu_node"].replace("HEAD_IP", HEAD_IP).replace("6379", gcs), node_env=base_env)
    finally:
        for node in reversed(nodes):
            node.kill()
        for temp_dir in temp_dirs.values():
            shutil.rmtree(temp_dir, ignore_errors=True)
