"""Reading W&B offline runs back (wandb has no public reader for .wandb files)."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator


def wandb_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(record type, protobuf) of every record in a .wandb file (LevelDB-style log: 32 KiB blocks,
    7-byte headers crc32/length/type, FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B data file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            whole = chunk
        elif kind == 2:
            buf = chunk
            continue
        elif kind == 3:
            buf += chunk
            continue
        else:
            whole, buf = buf + chunk, b""
        record = pb.Record()
        record.ParseFromString(whole)
        which = record.WhichOneof("record_type")
        yield which, getattr(record, which)


def wandb_run(run_dir: Path) -> dict[str, Any]:
    """The run, config, history rows, final summary, logged artifacts and exit code of one offline run folder."""
    (data_file,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"run": None, "config": {}, "history": [], "summary": {}, "exit_code": None, "artifacts": []}
    for kind, rec in wandb_records(data_file):
        if kind == "run":
            out["run"], out["run_id"], out["group"] = rec, rec.run_id, rec.run_group
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.update})
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in rec.item})
        elif kind == "summary":
            for u in rec.update:
                out["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.name, "type": rec.type, "files": [f.path for f in rec.manifest.contents]})
        elif kind == "exit":
            out["exit_code"] = rec.exit_code
    return out


def runs_by_job_type(wandb_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The offline runs under wandb_dir (OUTPUT_DIR/wandb), read by wandb_run, grouped by job type (trial, report);
    each with its folder under "dir"."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for run_dir in sorted(wandb_dir.glob("offline-run-*")):
        run = {**wandb_run(run_dir), "dir": run_dir}
        runs.setdefault(run["run"].job_type, []).append(run)
    return runs


def logged_html(run: dict[str, Any], key: str) -> str:
    """The page a run logged as wandb.Html under key (its last one)."""
    [path] = [row[f"{key}/path"] for row in run["history"] if f"{key}/path" in row][-1:]
    return (run["dir"] / "files" / path).read_text()
