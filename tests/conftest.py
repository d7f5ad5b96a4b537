import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Embedded, offline defaults for every test process (and the subprocesses and Ray workers they start).
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["DSPY_CACHEDIR"] = str(ROOT / "outputs" / ".test-dspy-cache")  # never the home folder


def run_cli(module: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` from the project root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def simulator():
    """One simulator for tests that only need a live endpoint (each run may also start its own)."""
    from gepa_lab.servers.simulator import start_simulator

    with start_simulator(max_in_flight=8) as sim:
        yield sim


@pytest.fixture
def sim(simulator):
    """The session's simulator, under the name the LM and simulator tests use."""
    return simulator


def wait_until_answers(url: str, server=None, timeout: float = 300) -> None:
    """Poll GET url until it answers 200; fail with the server's log tail (a ChildProcess) if it dies or never answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server is None or server.alive(), server.log_tail()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer: {server.log_tail() if server else ''}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 without a local artifact root: artifacts are proxied through it.
    It spawns helper processes (uvicorn): stopping its process group stops them all. Yields (url, root).
    One per session (it takes ~50 s to start on 2 cores): tests use their own experiment and model names."""
    from gepa_lab.servers.process import ChildProcess, free_port
    from gepa_lab.tracking.mlflow_sink import create_sqlite_store

    root = tmp_path_factory.mktemp("mlflow-server")
    create_sqlite_store(root / "mlflow.db")  # as a sweep would: the server opens it without migrating it
    port = free_port()
    server = ChildProcess([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                           f"sqlite:///{root}/mlflow.db", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          log_path=root / "server.log", cwd=root,
                          # its job runner and seven huey consumers (GenAI jobs, unused here) keep a whole core busy
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{url}/health", server)  # ~14 s on an idle machine; much more under load
        yield url, root
    finally:
        server.stop(timeout=15)


# make test runs two pytest-xdist workers (-n 2 --dist loadfile). The SERIAL files are one unit of work: they run
# one after another on one worker at normal priority, as they start Ray heads (whose raylet gives up when starved
# of CPU: 30 s to register with the GCS) or assert wall times. Every other file runs whole on the other worker at
# nice 19 (below Ray's trial workers, which Ray runs at 15), so it takes the CPU the first one leaves idle (about
# half: it waits on child processes) with little slowing of it. (xdist's --dist loadgroup groups nothing with pytest 9.)
SERIAL = ["tests/sweep/test_sweep_e2e.py", "tests/sweep/test_submit.py", "tests/cluster/test_bed.py",
          "tests/cluster/test_job_stop.py", "tests/sweep/test_sweep_proposals.py",
          "tests/test_bench.py",
          "tests/cluster/test_loopback.py", "tests/cluster/test_router_keys.py", "tests/sweep/test_sweep_capacity.py",
          "tests/sweep/test_lm_load.py", "tests/servers/test_router_guard.py", "tests/sweep/test_sweep_lm_edge.py",
          "tests/sweep/test_sweep_register_once.py", "tests/tracking/test_promote_race.py",
          "tests/sweep/test_sweep_interrupt.py", "tests/sweep/test_sweep_crashes.py", "tests/sweep/test_sweep_budgets.py",
          "tests/servers/test_llamacpp.py", "tests/sweep/test_sweep_search.py", "tests/sweep/test_flaky_lms.py",
          "tests/servers/test_replicas.py", "tests/tracking/test_mlflow_server.py", "tests/sim/test_sim_server.py",
          "tests/lm/test_endpoint.py", "tests/lm/test_cache.py", "tests/test_readme.py",
          "tests/sweep/test_sweep_groups.py", "tests/sweep/test_reproducible.py", "tests/sweep/test_pbt.py"]
OTHERS_LONGEST_FIRST = ["tests/test_run.py", "tests/serve/test_serve.py", "tests/tracking/test_registry.py",
                        "tests/sweep/test_wandb_sweeps.py"]


def _file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(items):
    order = SERIAL + OTHERS_LONGEST_FIRST
    missing = [path for path in order if not (ROOT / path).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py names test files that are gone: {missing}")
    rank = {path: i for i, path in enumerate(order)}
    items.sort(key=lambda item: rank.get(_file(item.nodeid), len(rank)))  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SerialFilesAsOneUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "serial" if _file(nodeid) in SERIAL else _file(nodeid)

    return SerialFilesAsOneUnit(config, log)


@pytest.fixture(autouse=True)
def _nice_beside_the_serial_files(request):
    if os.environ.get("PYTEST_XDIST_WORKER") and _file(request.node.nodeid) not in SERIAL:
        os.nice(max(0, 19 - os.nice(0)))  # this worker and all it starts, from now on
    yield
