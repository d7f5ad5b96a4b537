import pytest


@pytest.fixture
def sim(simulator):
    """The session's simulator (tests/conftest.py), under the name the simulator's own tests use."""
    return simulator
