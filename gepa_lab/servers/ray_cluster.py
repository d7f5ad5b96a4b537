"""Ray for a run or sweep, in one place: where trials run (a local head started for the sweep, or an existing
cluster), what travels to its nodes with the sweep (the user's code, environment variables), and checks run from
every node that can run a trial (is output_dir the same storage there; does each LM endpoint answer there): before
the sweep from each node present, and by each trial on its own node, which covers nodes that join later."""
from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import site
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import Field

from gepa_lab import atomic
from gepa_lab.cli import reclaim_stop_signals
from gepa_lab.strict import StrictModel
from gepa_lab.errors import ConfigError, GepaLabError
from gepa_lab.servers.process import ChildProcess, EndpointError, check_endpoint, free_ports

class RayConfig(StrictModel):
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for this sweep; "auto": a running cluster
    num_cpus: int | None = Field(None, ge=1)  # local Ray only
    resources: dict[str, float] = Field(default_factory=dict)  # local Ray only: custom resources to advertise
    # local folders (packages) or .py files every node must import, shipped with the sweep (Ray's py_modules);
    # the modules of task.program and task.metric are found without it (code_to_ship)
    py_modules: list[str] = Field(default_factory=list)


# Ray rewrites 127.0.0.1 (and localhost) to the host's interface address; another loopback address it keeps as given.
LOCAL_NODE_IP = "127.0.0.2"
PROBE_TIMEOUT_S = 300  # a task per node: its worker may have to start first, slowly on a busy node
STORAGE_MARK = ".storage-mark"  # in output_dir: the driver's token, which every trial reads on its node


class NodeRefused(GepaLabError):
    """A trial's node fails a check the sweep ran before it started, on the nodes present then: a node that joined
    later (or lost a mount since). The sweep stops (gepa_lab.sweep.node_gate)."""


def driver_node_ip(address: str) -> str | None:
    """The node address this process joins `address` as: the cluster's own loopback address when it is one (a
    cluster on this machine; Ray would otherwise pick the interface address), else Ray's choice (None)."""
    host = address.rpartition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # "auto", a host name, a ray:// or http:// URL
        return None
    return host if ip.is_loopback and host != "127.0.0.1" else None


def _runtime_env(py_modules: list[str]) -> dict[str, Any] | None:
    """ray.init's runtime_env for a sweep that ships `py_modules`. Inside a Ray job, whose runtime_env Ray merges
    with this one but refuses to merge a field both set, the job's own py_modules must then name them too."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if not py_modules:
        return None
    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}
    if job.get("py_modules"):
        raise ConfigError(f"this Ray job ships py_modules of its own: add {', '.join(py_modules)} to them "
                          "(ray job submit --py-modules PATH ...)")
    return {"py_modules": py_modules}


@contextlib.contextmanager
def ray_session(cfg: RayConfig, workdir: Path, *, py_modules: list[str] | None = None,
                trial_resources: dict[str, float] | None = None) -> Iterator[None]:
    """Ray for one sweep: the caller's if already connected, the cluster at ray.address (or RAY_ADDRESS), else a
    local head started for this sweep alone and stopped after it (its log: workdir/ray-head.log).

    py_modules: code every worker of the sweep must import (code_to_ship), shipped by Ray to each node.
    trial_resources: what one trial holds; workdir is then where the trials write, and
    every node that can hold a trial must see it as this process does (check_shared_storage)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    with contextlib.ExitStack() as stack:
        if not address:
            address = stack.enter_context(local_head(workdir / "ray-head.log", num_cpus=cfg.num_cpus, resources=cfg.resources))
        ray.init(address=address, _node_ip_address=driver_node_ip(address),
                 runtime_env=_runtime_env(py_modules or []))
        stack.callback(ray.shutdown)
        reclaim_stop_signals()  # ray.init made SIGTERM exit at once (sys.exit): stop like Ctrl-C instead
        if trial_resources is not None:
            check_shared_storage(workdir, trial_resources)
        yield


def _outside_installed_code(path: Path) -> bool:
    """Not the interpreter's, not an installed package's, not gepa_lab's own and not already delivered by Ray (a
    job's working dir or py_modules, under a node's runtime_resources folder)."""
    installed = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    installed |= {*site.getsitepackages(), site.getusersitepackages(), sys.prefix, sys.base_prefix}
    gepa_lab_root = Path(__file__).resolve().parents[1]
    roots = [Path(p).resolve() for p in installed if p] + [gepa_lab_root]
    return not any(path == root or root in path.parents for root in roots) and "runtime_resources" not in path.parts


def code_to_ship(import_paths: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """What the nodes need, besides installed packages, to import `import_paths` (module:attribute, importable
    here): the top-level package folder, or the .py file, of each that this process finds outside installed code
    (a module on this shell's PYTHONPATH or in its working folder is on no node's sys.path). Plus `extra`
    (RayConfig.py_modules), which must exist."""
    shipped: list[str] = []
    for path in extra:
        if not Path(path).exists():
            raise ConfigError(f"ray.py_modules: {path} does not exist")
        shipped.append(str(Path(path).resolve()))
    for import_path in import_paths:
        spec = importlib.util.find_spec(import_path.partition(":")[0].split(".")[0])
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue  # a namespace package or a built-in: nothing this can ship
        origin = Path(spec.origin).resolve()
        code = origin.parent if spec.submodule_search_locations else origin  # a package: its folder
        if _outside_installed_code(code) and str(code) not in shipped:
            shipped.append(str(code))
    return shipped


@contextlib.contextmanager
def local_head(log_path: Path, num_cpus: int | None = None, resources: dict[str, float] | None = None,
               dashboard_port: int | None = None, timeout_s: float = 300) -> Iterator[str]:
    """`ray start --head --block` on this machine for one sweep (or run) alone, at LOCAL_NODE_IP (loopback, kept by
    Ray as given); yields its address. With a dashboard_port, the dashboard (and its job API, for `ray job
    submit`) listens on 127.0.0.1 there.

    Not `ray.init(address="local")`: that lets each Ray agent pick a port and write it to a file, and the raylet
    aborts when an agent takes over 15 s (hard-coded) to do so, which happened on 2 busy cores. Every port is
    given here, so nothing waits on a file. The head runs in its own process group: Ctrl-C reaches the sweep,
    not Ray, and killing the group ends every Ray process at once (nothing is left to drain after a sweep). Its
    temp dir (sessions, logs) is its own, so it never becomes the address that `ray.init()` and the job agents
    of another cluster on this machine look up in /tmp/ray/ray_current_cluster."""
    flags = ("port", "metrics-export-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
             "runtime-env-agent-port")
    ports = dict(zip(flags, free_ports(len(flags))))  # distinct: Ray refuses to start when two flags share a port
    temp_dir = tempfile.mkdtemp(prefix="gepa_lab-ray-")  # short: Ray's socket paths live under it
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", LOCAL_NODE_IP,
            f"--temp-dir={temp_dir}", *(f"--{flag}={port}" for flag, port in ports.items())]
    if dashboard_port is None:
        argv.append("--include-dashboard=false")
    else:
        argv += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)  # "started" below must come from this head
    # if this process dies without its finally (SIGKILL, out of memory), SIGTERM makes `ray start` stop its cluster
    # no prestarted workers: a trial (a Tune actor) never runs in one, so on a job's start they only take CPU
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_enable_worker_prestart": "0", "RAY_prestart_worker_first_driver": "0"}
    head = ChildProcess(argv, log_path=log_path, env=env, die_with_parent=True,
                        death_signal=signal.SIGTERM)
    try:
        head.wait_until(lambda: "Ray runtime started" in head.log_tail(100_000), timeout_s,
                        "the local Ray head ('Ray runtime started' in its log)", interval_s=0.2)
        yield f"{LOCAL_NODE_IP}:{ports['port']}"
    finally:
        head.kill()


def alive_nodes() -> list[dict]:
    """The live nodes of the Ray cluster this process is connected to ([] when not connected)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []


def reachable_host() -> str:
    """Where a server this process starts binds so that every node of its Ray cluster reaches it, also nodes that
    join later: this node's address in the cluster (a loopback address for a cluster on one machine). Without Ray,
    127.0.0.1."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def trial_nodes(trial_resources: dict[str, float]) -> list[dict]:
    """The live nodes that can run a trial: those whose resources (in total) hold what one trial asks for."""
    return [n for n in alive_nodes() if all(n["Resources"].get(k, 0) >= v for k, v in trial_resources.items() if v > 0)]


def _node_name(node: dict) -> str:
    return f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]})"


def on_each_node(nodes: list[dict], fn, *args: Any) -> dict[str, Any]:
    """Run fn(*args) as a Ray task pinned to each node (no CPU held: it runs beside busy trials); returns each
    node's result by _node_name, or the exception that kept it from one. A node that left the cluster meanwhile
    (its task can no longer be placed there, though the cluster may not have marked it dead yet) is left out: it
    runs no trial, and should it come back, its trials check it (NodeChecks)."""
    import ray
    from ray.exceptions import TaskUnschedulableError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {_node_name(n): task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(*args)
            for n in nodes}
    results: dict[str, Any] = {}
    for name, ref in refs.items():
        try:
            results[name] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except TaskUnschedulableError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported per node by the caller
            results[name] = exc
    return results


def _driver_node_only(nodes: list[dict]) -> bool:
    """No node but this process's own (whose workers see what it sees)."""
    import ray

    return all(n["NodeID"] == ray.get_runtime_context().get_node_id() for n in nodes)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _write_probe(directory: str, token: str) -> None:
    import ray

    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / ray.get_runtime_context().get_node_id()).write_text(token)


def check_shared_storage(output_dir: Path, trial_resources: dict[str, float]) -> None:
    """Every node that can run a trial writes a token into output_dir, and this process must read each back: a
    probe, so any storage that behaves as shared passes and nothing else does. Nodes that join the cluster later
    are checked by the trials they get (NodeChecks)."""
    nodes = trial_nodes(trial_resources)
    if _driver_node_only(nodes):
        return
    probe_dir = output_dir / f".storage-probe-{secrets.token_hex(4)}"
    token = secrets.token_hex(16)
    written = on_each_node(nodes, _write_probe, str(probe_dir), token)
    try:
        for node in (n for n in nodes if _node_name(n) in written):
            name = _node_name(node)
            if isinstance(written[name], Exception):
                raise ConfigError(f"output_dir {output_dir}: {name} cannot write into it: {_one_line(written[name])}")
            probe = probe_dir / node["NodeID"]
            if not probe.is_file() or probe.read_text() != token:
                on_each_node([node], shutil.rmtree, str(probe_dir), True)  # its own copy of the folder
                raise ConfigError(
                    f"output_dir {output_dir} is not storage the cluster shares: {name} can run trials and wrote a "
                    f"probe file there that this driver cannot read; put output_dir on storage every node mounts at "
                    f"the same path (NFS, Lustre, CephFS, a mounted object store)")
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def _check_endpoints_here(api_bases: list[str]) -> list[str]:
    errors = []
    for base in api_bases:
        try:
            check_endpoint(base, running_is_up=True)  # reachability: the key is checked from the driver
        except EndpointError as exc:
            errors.append(str(exc))
    return errors


def check_endpoints_from_trial_nodes(api_bases: list[str], trial_resources: dict[str, float]) -> set[str]:
    """Every LM endpoint the trials use answers from every node that can run a trial (not only from the driver:
    a server bound to one node's loopback, a firewall): one line naming the first node and endpoint that fail.
    Returns the IDs of the nodes it covered (the driver's among them)."""
    import ray

    nodes = trial_nodes(trial_resources)
    covered = {ray.get_runtime_context().get_node_id()}
    if _driver_node_only(nodes):
        return covered  # what the driver reaches (checked when it started or found them)
    ids = {_node_name(n): n["NodeID"] for n in nodes}
    for name, result in on_each_node(nodes, _check_endpoints_here, sorted(set(api_bases))).items():
        if isinstance(result, Exception):
            raise GepaLabError(f"{name} could not check the LM endpoints: {_one_line(result)}")
        if result:
            raise EndpointError(f"from {name}: {result[0]}")
        covered.add(ids[name])
    return covered


@dataclass(frozen=True)
class NodeChecks:
    """What every trial checks on its node before anything else (check_here): the checks the sweep ran before its
    trials, on the nodes present then, for a node that may have joined since. Made by check_trial_nodes; travels to
    the trials in memory, with the sweep's context."""

    output_dir: str
    storage_mark: str  # the random token the driver wrote into output_dir/STORAGE_MARK
    api_bases: tuple[str, ...]  # every LM endpoint the trials use
    endpoints_checked_on: frozenset[str]  # IDs of the nodes whose endpoints the driver checked before the trials

    def check_here(self) -> None:
        """output_dir must hold the driver's mark as the driver wrote it (the storage probe, read the other way:
        a node that does not see the driver's file does not see its folder), and on a node the driver did not
        check, every LM endpoint must answer (on one it did, an endpoint that stopped answering since is the
        endpoint's failure, not the node's: the trial fails as it would without this). Raises NodeRefused, one
        line naming this node."""
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        name = _node_name({"NodeManagerAddress": ray.util.get_node_ip_address(), "NodeID": node_id})
        mark = Path(self.output_dir) / STORAGE_MARK
        try:
            seen = mark.read_text()
        except OSError:
            seen = None
        if seen != self.storage_mark:
            raise NodeRefused(
                f"output_dir {self.output_dir} is not storage the cluster shares: {name} (which joined after the "
                f"sweep's checks, or lost a mount) was given a trial but does not see the file {STORAGE_MARK} the "
                f"driver wrote there; put output_dir on storage every node mounts at the same path (NFS, Lustre, "
                f"CephFS, a mounted object store)")
        if node_id not in self.endpoints_checked_on and (errors := _check_endpoints_here(list(self.api_bases))):
            raise NodeRefused(f"from {name}, which joined after the sweep's checks and was given a trial: {errors[0]}")


def check_trial_nodes(output_dir: Path, api_bases: list[str], trial_resources: dict[str, float]) -> NodeChecks:
    """Before the trials: every LM endpoint answers from each node that can run one now
    (check_endpoints_from_trial_nodes; output_dir was probed when Ray started, check_shared_storage), and a fresh
    mark in output_dir. Returns what each trial checks on its own node (NodeChecks.check_here)."""
    covered = check_endpoints_from_trial_nodes(api_bases, trial_resources)
    token = secrets.token_hex(16)
    atomic.write_text(output_dir / STORAGE_MARK, token)
    return NodeChecks(str(output_dir), token, tuple(sorted(set(api_bases))), frozenset(covered))
