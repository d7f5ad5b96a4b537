"""Child processes and LM endpoints: the one wait-until-ready loop, and the one "does the endpoint answer" check."""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

from gepa_lab.servers.process import ChildProcess, EndpointError, check_endpoint, free_port, free_ports


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
    with pytest.raises(EndpointError) as err:
        proc.wait_until(lambda: False, 60, "the child (never ready)", error=EndpointError)
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


class _Models(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"data": [{"id": "m"}]}')

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [401, 404])
def test_a_running_server_that_refuses_is_up_only_for_readiness(status):
    """Starting and supervising ask 'is it running' (any reply below 500); a trial asks 'will it take my requests'."""
    handler = type("Handler", (_Models,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        check_endpoint(url, timeout_s=5, running_is_up=True)
        with pytest.raises(EndpointError, match="refuses the API key" if status == 401 else "HTTP 404"):
            check_endpoint(url, timeout_s=5)
    finally:
        server.shutdown()
    with pytest.raises(EndpointError, match="does not answer"):
        check_endpoint(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2, running_is_up=True)


def test_free_ports_are_distinct_where_one_at_a_time_they_repeat():
    # a port just released may be the next one handed out: the local Ray head once got one port for two of its
    # flags and refused to start (dashboard_agent_grpc == dashboard_agent_http)
    draws = [free_ports(5) for _ in range(20_000)]
    assert all(len(set(ports)) == 5 for ports in draws)
