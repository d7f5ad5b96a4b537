import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    from tracking_helpers import tracked_sweep

    return tracked_sweep(tmp_path_factory.mktemp("tracked"))
