"""Child processes: the one wait-until-ready loop."""
import sys
import time

import pytest

from gepa_lab.servers.process import ChildProcess


def child(tmp_path, code: str) -> ChildProcess:
    return ChildProcess([sys.executable, "-c", code], log_path=tmp_path / "child.log")


def test_wait_until_returns_once_ready(tmp_path):
    flag = tmp_path / "ready"
    proc = child(tmp_path, f"import pathlib, time; time.sleep(0.3); pathlib.Path({str(flag)!r}).touch(); time.sleep(60)")
    try:
        proc.wait_until(flag.exists, 30, "the child (its flag file)")
        assert proc.alive()
    finally:
        proc.stop()


def test_wait_until_fails_at_once_with_the_log_tail_when_the_child_exits(tmp_path):
    proc = child(tmp_path, "import sys; print('no such model'); sys.exit(3)")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        proc.wait_until(lambda: False, 60, "the child (never ready)", error=TimeoutError)
    assert time.monotonic() - started < 10  # not the 60 s timeout
    assert "the child (never ready) exited with code 3" in str(err.value) and "no such model" in str(err.value)


def test_wait_until_times_out_with_the_last_reason_and_stops_the_child(tmp_path):
    proc = child(tmp_path, "print('starting', flush=True); import time; time.sleep(60)")

    def not_yet():
        raise ConnectionError("refused")

    with pytest.raises(RuntimeError) as err:
        proc.wait_until(not_yet, 1.0, "the child (never ready)")
    assert "was not ready within 1s (last: refused)" in str(err.value) and "starting" in str(err.value)
    assert not proc.alive()
