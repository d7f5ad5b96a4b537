"""What a run is: a hash of its config, the project's git commit, the versions of the stack."""
from __future__ import annotations

import functools
import hashlib
import json
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


@functools.cache
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


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
    return {"config_hash": config_hash(cfg), "git_commit": git_commit(), "versions": versions()}


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
