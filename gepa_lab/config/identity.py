"""What a run is: a hash of its config, the project's git state (commit; uncommitted changes), the versions of the stack.

The git state comes from the checkout this code runs from, or, where that has no `.git` (a Ray job's uploaded
working dir, an installed copy), from the GEPA_LAB_GIT_STATE variable: `COMMIT` for a clean tree, `COMMIT+DIFFHASH`
with uncommitted changes. scripts/submit.py sets it for a job; `python -m gepa_lab.config.identity` prints it."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gepa_lab import atomic
from gepa_lab.errors import GepaLabError
from gepa_lab.paths import PROJECT_ROOT

PACKAGES = ("dspy", "gepa", "ray", "mlflow", "wandb", "duckdb", "polars", "hydra-core", "litellm")
# Keys that say where a run goes or how it is watched, not what it computes.
NOT_IDENTITY = {"output_dir", "tracking"}


def config_hash(cfg: BaseModel) -> str:
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


GIT_STATE_ENV = "GEPA_LAB_GIT_STATE"


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30, check=True).stdout


def _content(path: Path) -> bytes:
    """What git would record for an untracked file: a symlink's content is its target (it may be a folder, or missing)."""
    return os.fsencode(os.readlink(path)) if path.is_symlink() else path.read_bytes()


def read_git_state(root: Path) -> dict[str, Any] | None:
    """The git state of the checkout at `root` (None when `root` is not the top of a git checkout: a folder
    inside some other repository must not lend it its commit). git_diff_hash hashes every uncommitted change:
    the diff of tracked files against HEAD and the untracked files git does not ignore (names and contents)."""
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel").decode().strip())
        if top.resolve() != root.resolve():
            return None
        commit = _git(root, "rev-parse", "HEAD").decode().strip()
        diff = hashlib.sha256(_git(root, "diff", "HEAD", "--binary"))
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
        for name in sorted(filter(None, untracked)):
            diff.update(b"\0" + name + b"\0" + _content(root / name.decode()))
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = diff.hexdigest() != hashlib.sha256(b"").hexdigest()
    return {"git_commit": commit, "git_dirty": dirty, "git_diff_hash": diff.hexdigest()[:16] if dirty else None}


def encode_git_state(state: dict[str, Any]) -> str:
    """The GEPA_LAB_GIT_STATE value for `state`."""
    return state["git_commit"] + (f"+{state['git_diff_hash']}" if state["git_dirty"] else "")


def decode_git_state(value: str) -> dict[str, Any]:
    commit, _, diff_hash = value.partition("+")
    return {"git_commit": commit, "git_dirty": bool(diff_hash), "git_diff_hash": diff_hash or None}


@functools.cache
def git_state() -> dict[str, Any]:
    """{git_commit, git_dirty, git_diff_hash} of the code this process runs: its checkout's, else
    GEPA_LAB_GIT_STATE's, else all None (unknown)."""
    state = read_git_state(PROJECT_ROOT)
    if state is None and os.environ.get(GIT_STATE_ENV):
        state = decode_git_state(os.environ[GIT_STATE_ENV])
    return state or {"git_commit": None, "git_dirty": None, "git_diff_hash": None}


def git_commit() -> str | None:
    return git_state()["git_commit"]


@functools.cache
def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def run_identity(cfg: BaseModel) -> dict[str, Any]:
    return {"config_hash": config_hash(cfg), **git_state(), "versions": versions()}


def claim_output_dir(cfg: BaseModel, out: Path) -> bool:
    """Record cfg in out/config.json. Returns True when out already held this same config (a resume);
    refuses an output_dir that holds a run of another config."""
    record = out / "config.json"
    digest = config_hash(cfg)
    if record.exists():
        previous = json.loads(record.read_text())
        if previous.get("config_hash") != digest:
            raise GepaLabError(
                f"output_dir {out} holds a run with another config (hash {previous.get('config_hash')}, "
                f"now {digest}); rerun with the same config to resume, or choose a new output_dir"
            )
        return True
    atomic.write_json(record, {"config_hash": digest, "config": cfg.model_dump(mode="json")})
    return False


if __name__ == "__main__":  # export GEPA_LAB_GIT_STATE=$(python -m gepa_lab.config.identity)
    state = read_git_state(PROJECT_ROOT)
    if state is None:
        raise SystemExit(f"{PROJECT_ROOT} is not a git checkout: nothing to record")
    print(encode_git_state(state))
