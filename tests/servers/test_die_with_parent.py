"""Every server gepa_lab starts dies with the process that started it, also when that process is SIGKILLed (no
`finally` runs): the simulator, the router (also one its supervisor thread restarted), Redis, the winner's load-back
process, and a child started from a thread that has ended since (PR_SET_PDEATHSIG fires when the forking *thread*
ends, so gepa_lab forks from one that lasts)."""
import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT

PARENT = """
import json, os, signal, sys, threading, time
from gepa_lab.servers.process import ChildProcess
from gepa_lab.servers.redis import RedisServer
from gepa_lab.servers.router import RouterConfig, RouterProcess
from gepa_lab.servers.simulator import start_simulator
from gepa_lab.tracking.registry import LoadBackProcess

sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
started = {}
thread = threading.Thread(target=lambda: started.update(from_ended_thread=ChildProcess(sleeper, log_path=sys.argv[1])))
thread.start()
thread.join()
sim = start_simulator()
router = RouterProcess(RouterConfig(replicas=[sim.url], max_in_flight=4), check_interval_s=0.1)
first_router = router.pid
os.kill(first_router, signal.SIGKILL)  # its supervisor thread starts a new one
while router.pid == first_router or not router.alive():
    time.sleep(0.1)
pids = {"from_ended_thread": started["from_ended_thread"].pid, "simulator": sim.pid, "restarted_router": router.pid,
        "redis": RedisServer().pid, "load_back": LoadBackProcess().proc.pid}
time.sleep(1)  # the thread that started the first child has long ended: the child must still be there
pids["alive_after_its_thread_ended"] = started["from_ended_thread"].alive()
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended; only its parent's wait is missing
    except OSError:
        return False


def test_every_server_dies_with_a_parent_killed_by_sigkill(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "sleeper.log")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: dict = {}
    try:
        line = parent.stdout.readline()
        assert line, parent.stderr.read()[-3000:]
        pids = json.loads(line)
        assert pids.pop("alive_after_its_thread_ended"), "a child died with the thread that started it"
        assert all(alive(pid) for pid in pids.values()), pids
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.time() + 10
        while (left := {name: pid for name, pid in pids.items() if alive(pid)}) and time.time() < deadline:
            time.sleep(0.2)
        assert not left, f"outlived their SIGKILLed parent: {left}"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in pids.values():  # a failed run of this test must not leave them behind either
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
