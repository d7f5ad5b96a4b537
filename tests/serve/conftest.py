import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tracking"))  # tracking_helpers
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    from tracking_helpers import tracked_sweep

    return tracked_sweep(tmp_path_factory.mktemp("tracked"))


@pytest.fixture(scope="module")
def sim(sweep):
    """A fresh live endpoint (another port than the one the model was optimized against)."""
    from gepa_lab.servers.simulator import start_simulator

    with start_simulator(model="sim", api_key=sweep["key"]) as s:
        yield s
