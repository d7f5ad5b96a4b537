"""Where trials run: a local Ray started for the sweep, or an existing cluster."""
from __future__ import annotations

import os
from pathlib import Path

import ray

from gepa_lab.errors import ConfigError
from gepa_lab.sweep.config import RayConfig

# Filesystems every node of a cluster can see the same way.
SHARED_FS = {"nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "cephfs", "glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "9p", "virtiofs"}


def connect(cfg: RayConfig) -> bool:
    """Connect to Ray; returns True when this call started a local Ray (which the sweep then stops)."""
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
        return False
    # "local": a new instance, never the cluster a past `ray start` on this machine left in /tmp/ray/ray_current_cluster
    ray.init(address="local", num_cpus=cfg.num_cpus, resources=cfg.resources or None, include_dashboard=False)
    return True


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
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and filesystem_type(output_dir) not in SHARED_FS:
        raise ConfigError(
            f"output_dir {output_dir} is on local storage ({filesystem_type(output_dir)}) but the Ray cluster has "
            f"{len(nodes)} nodes: put output_dir on storage every node shares (NFS or a mounted object store)"
        )
