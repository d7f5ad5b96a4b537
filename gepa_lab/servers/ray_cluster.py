"""Ray for a run or sweep, in one place: where trials run (a local head started for the sweep, or an existing
cluster), and what the cluster looks like (is it several nodes; is output_dir shared storage)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from pydantic import Field

from gepa_lab.strict import StrictModel
from gepa_lab.errors import ConfigError
from gepa_lab.servers.process import ChildProcess, free_port

class RayConfig(StrictModel):
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for this sweep; "auto": a running cluster
    num_cpus: int | None = Field(None, ge=1)  # local Ray only
    resources: dict[str, float] = Field(default_factory=dict)  # local Ray only: custom resources to advertise


# Filesystems every node of a cluster can see the same way.
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "cephfs", "glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "9p", "virtiofs"}


@contextlib.contextmanager
def ray_session(cfg: RayConfig, workdir: Path) -> Iterator[None]:
    """Ray for one sweep: the caller's if already connected, the cluster at ray.address (or RAY_ADDRESS), else a
    local head started for this sweep alone and stopped after it (its log: workdir/ray-head.log)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    with contextlib.ExitStack() as stack:
        if not address:
            address = stack.enter_context(local_head(workdir / "ray-head.log", num_cpus=cfg.num_cpus, resources=cfg.resources))
        ray.init(address=address)
        stack.callback(ray.shutdown)
        yield


@contextlib.contextmanager
def local_head(log_path: Path, num_cpus: int | None = None, resources: dict[str, float] | None = None,
               dashboard_port: int | None = None, timeout_s: float = 300) -> Iterator[str]:
    """`ray start --head --block` on this machine for one sweep (or run) alone; yields its address. With a
    dashboard_port, the dashboard (and its job API, for `ray job submit`) listens on 127.0.0.1 there.

    Not `ray.init(address="local")`: that lets each Ray agent pick a port and write it to a file, and the raylet
    aborts when an agent takes over 15 s (hard-coded) to do so, which happened on 2 busy cores. Every port is
    given here, so nothing waits on a file. The head runs in its own process group: Ctrl-C reaches the sweep,
    not Ray, and killing the group ends every Ray process at once (nothing is left to drain after a sweep). Its
    temp dir (sessions, logs) is its own, so it never becomes the address that `ray.init()` and the job agents
    of another cluster on this machine look up in /tmp/ray/ray_current_cluster."""
    ports = {flag: free_port() for flag in ("port", "metrics-export-port", "dashboard-agent-grpc-port",
                                            "dashboard-agent-listen-port", "runtime-env-agent-port")}
    temp_dir = tempfile.mkdtemp(prefix="gepa_lab-ray-")  # short: Ray's socket paths live under it
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
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
    head = ChildProcess(argv, log_path=log_path, env={**os.environ, "RAY_ADDRESS": ""}, die_with_parent=True,
                        death_signal=signal.SIGTERM)
    try:
        head.wait_until(lambda: "Ray runtime started" in head.log_tail(100_000), timeout_s,
                        "the local Ray head ('Ray runtime started' in its log)", interval_s=0.2)
        yield f"127.0.0.1:{ports['port']}"
    finally:
        head.kill()


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest matching mount point."""
    path = path.resolve()
    best, kind = "", "unknown"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount_point, fs_type, *_ = line.split()
            if (path == Path(mount_point) or Path(mount_point) in path.parents) and len(mount_point) > len(best):
                best, kind = mount_point, fs_type
    return kind


def check_shared_storage(output_dir: Path) -> None:
    """On a multi-node cluster, every trial writes into output_dir: it must be shared storage."""
    if multi_node() and filesystem_type(output_dir) not in SHARED_FS:
        raise ConfigError(
            f"output_dir {output_dir} is on local storage ({filesystem_type(output_dir)}) but the Ray cluster has "
            f"{len(alive_nodes())} nodes: put output_dir on storage every node shares (NFS or a mounted object store)"
        )


def alive_nodes() -> list[dict]:
    """The live nodes of the Ray cluster this process is connected to ([] when not connected)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []


def multi_node() -> bool:
    """Is this process connected to a Ray cluster of more than one live node?"""
    return len(alive_nodes()) > 1
