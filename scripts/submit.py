"""Submit a sweep to a Ray cluster as a Ray job, stream its logs, wait for it.

    python scripts/submit.py [--address http://HEAD:8265] [--no-wait] sweep=NAME output_dir=/shared/sweeps/x [key=value ...]

The same as `ray job submit --working-dir . -- python -m gepa_lab.sweep ...`, with the two things that trip
people up checked first: the job runs in a temporary copy of this folder, so output_dir must be an absolute
path (on storage every node shares, for a multi-node cluster); and the copy skips git-ignored files, so
prepared corpora are not uploaded (the sweep prepares them from corpora/raw, which is committed). The copy has no
`.git` either: the git state (commit, uncommitted changes) is read here, before the upload, and handed to the job
in GEPA_LAB_GIT_STATE (gepa_lab.config.identity), so every trial and the sweep record it.
The address comes from --address, else RAY_ADDRESS, else http://127.0.0.1:8265 (the head's dashboard).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# `ray job stop` sends the job SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default), which Ray's job
# supervisor reads from the job's env_vars: too short for a sweep to stop its trials and servers and save its state
STOP_WAIT = {"RAY_JOB_STOP_WAIT_TIME_S": "60"}


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    args, overrides = parser.parse_known_args(argv)
    out = [o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")]
    if not out or not Path(out[-1]).is_absolute():
        parser.error("give an absolute output_dir=PATH: the job runs in a temporary copy of this folder")
    return args, overrides


async def follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def git_state_env() -> dict[str, str]:
    """GEPA_LAB_GIT_STATE for the job: this checkout's state, else the variable as given here (a copy without .git)."""
    from gepa_lab.config.identity import GIT_STATE_ENV, encode_git_state, read_git_state

    state = read_git_state(ROOT)
    if state is not None:
        return {GIT_STATE_ENV: encode_git_state(state)}
    if os.environ.get(GIT_STATE_ENV):
        return {GIT_STATE_ENV: os.environ[GIT_STATE_ENV]}
    print(f"{ROOT} is not a git checkout and {GIT_STATE_ENV} is not set: the sweep records no git commit", file=sys.stderr)
    return {}


def main(argv: list[str]) -> int:
    args, overrides = parse(argv)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address)
    entrypoint = shlex.join(["python", "-m", "gepa_lab.sweep", *overrides])
    # runtime_env is shown by the Jobs API and the dashboard: the git state belongs there, a secret never does
    runtime_env = {"working_dir": str(ROOT), "env_vars": {**git_state_env(), **STOP_WAIT}}
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(f"submitted {job_id} to {args.address}: {entrypoint}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    asyncio.run(follow(client, job_id))
    status = str(client.get_job_status(job_id).value)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
