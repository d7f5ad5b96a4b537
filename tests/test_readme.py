"""README's five-minute tour runs exactly as written, so the README cannot rot: every command line of the ```bash
blocks in its tour section, in order, in one bash process from the project root (a later command may use what an
earlier one started, as `kill $!` does), each expected to exit 0 and to show what it is there to show. Also: the
README stays short, and every relative link of README.md and docs/ leads to a file and heading that exist."""
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.processes import tagged_env, tagged_processes

README = ROOT / "README.md"
TOUR_HEADING = "## A five-minute tour"
MARK = "@@readme-tour-command"  # echoed with the command's index and exit status after each command


def tour_commands(readme: str) -> list[str]:
    """The command lines of the tour's ```bash blocks, as written; a line ending in a backslash continues."""
    section = readme.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending += line + "\n"
            if not line.endswith("\\"):
                commands.append(pending.rstrip("\n"))
                pending = ""
    return commands


def _option(command: str, name: str) -> str:
    """The value of `name=VALUE` or `--name VALUE` in a command line."""
    found = re.search(rf"(?:\b{re.escape(name)}=|--{re.escape(name)} )(\S+)", command)
    assert found, f"{name} not in {command!r}"
    return found.group(1)


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def _check_output(command: str, output: str, seen: dict) -> None:
    """What each kind of tour command must show beyond exiting 0; records the kinds it met in `seen`."""
    if command.startswith("python -m gepa_lab.run "):
        summary = json.loads((ROOT / _option(command, "output_dir") / "summary.json").read_text())
        assert summary["metric_calls"] <= int(_option(command, "optimizer.max_metric_calls")), summary
        assert "winner" in output, output[-2000:]
        seen["compile"] = summary
    elif command.startswith("python -m gepa_lab.sweep "):
        summary = json.loads((ROOT / _option(command, "output_dir") / "summary.json").read_text())
        assert summary["trials"]["completed"] == summary["trials"]["total"] > 1, summary["trials"]
        assert summary["registered_model"]["alias"] == "champion", summary["registered_model"]
        seen["sweep"] = summary
    elif command.startswith("python -m gepa_lab.results ") and "--sql" not in command:
        assert "leaderboard" in output and seen["sweep"]["best_trial_id"] in output, output[-3000:]
        seen["leaderboard"] = True
    elif command.startswith("python -m gepa_lab.results ") and "SELECT" in command:
        folders = [arg for arg in command.split() if arg.startswith("outputs/")]
        assert folders and all(folder in output for folder in folders), output[-3000:]
        seen["sql"] = True
    elif command.startswith("python -m gepa_lab.serve check "):
        verdict = _last_json(output)
        assert verdict["ok"] is True and verdict["n"] == int(_option(command, "n")), verdict
        seen["champion"] = verdict
    elif command.startswith("python -m gepa_lab.serve predict "):
        assert _last_json(output).get("intent"), output[-2000:]


def _tour_outputs(commands: list[str]) -> list[Path]:
    folders = {arg.split("=", 1)[1] for command in commands for arg in command.split() if arg.startswith("output_dir=")}
    assert folders and all(folder.startswith("outputs/tour-") for folder in folders), folders  # git-ignored, ours
    return [ROOT / folder for folder in sorted(folders)]


def test_the_tour_shows_a_compile_a_sweep_the_results_and_the_champion():
    commands = tour_commands(README.read_text())
    starts = [" ".join(command.split()[:4]) for command in commands]
    for part in ("python -m gepa_lab.run", "python -m gepa_lab.sweep", "python -m gepa_lab.results",
                 "python -m gepa_lab.serve check"):
        assert any(start.startswith(part) for start in starts), f"the tour has no `{part}`: {starts}"
    _tour_outputs(commands)


def test_readme_stays_a_five_minute_read():
    assert len(README.read_text().splitlines()) <= 300


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str) -> set[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", prose, re.M)}


def test_links_lead_to_existing_files_and_headings():
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _headings(linked.read_text())):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def _stop_group(proc: subprocess.Popen) -> None:
    """End whatever the tour left running in its process group: SIGTERM (a sweep then stops its Ray head), SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.time() + 60
        try:
            os.killpg(proc.pid, sig)
            while time.time() < deadline:
                proc.poll()  # reap bash, or the group never empties
                os.killpg(proc.pid, 0)
                time.sleep(0.5)
        except ProcessLookupError:
            return


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_tour_runs_as_written(tmp_path):
    commands = tour_commands(README.read_text())
    outputs = _tour_outputs(commands)
    # the mark on a line of its own, also after output without a final newline (curl's)
    script = "".join(f'{command}\nrc=$?; printf "\\n{MARK} {i} %d\\n" $rc; [ $rc -eq 0 ] || exit $rc\n'
                     for i, command in enumerate(commands))
    tag, env = tagged_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this environment's
    log = tmp_path / "tour.log"
    for folder in outputs:
        shutil.rmtree(folder, ignore_errors=True)
    # output to a file, not a pipe: a server the tour left in the background would hold a pipe open
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        proc.wait(timeout=1200)
        text = log.read_text()
        chunks = re.split(rf"^{MARK} (\d+) (\d+)$\n?", text, flags=re.M)
        seen: dict = {}
        for i, command in enumerate(commands):
            assert 3 * i + 2 < len(chunks), f"the tour stopped before `{command}`:\n{text[-5000:]}"
            output, index, status = chunks[3 * i], int(chunks[3 * i + 1]), int(chunks[3 * i + 2])
            assert index == i and status == 0, f"`{command}` exited {status}:\n{output[-5000:]}"
            _check_output(command, output, seen)
        assert {"compile", "sweep", "leaderboard", "sql", "champion"} <= seen.keys(), seen.keys()
        deadline = time.time() + 30
        while (left := tagged_processes(tag, "gepa_lab") + tagged_processes(tag, "ray")) and time.time() < deadline:
            time.sleep(0.5)
        assert not left, f"the tour left processes running: {left}"
    finally:
        _stop_group(proc)  # only finds something when the tour failed or timed out
        for folder in outputs:
            shutil.rmtree(folder, ignore_errors=True)
