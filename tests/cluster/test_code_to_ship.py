"""Which code a sweep ships to the nodes with it (gepa_lab.servers.ray_cluster.code_to_ship), and which address
a driver joins a cluster as. No Ray is started here: tests/cluster/test_bed.py runs the shipping on a cluster."""
import sys

import pytest

from gepa_lab.errors import ConfigError
from gepa_lab.servers.ray_cluster import code_to_ship, driver_node_ip


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module and a package in a folder on this process's sys.path only, as a shell's PYTHONPATH puts them."""
    (tmp_path / "ship_me_module.py").write_text("def metric(*a, **k):\n    return 1.0\n")
    package = tmp_path / "ship_me_package"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("def program():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("ship_me_")]:
        del sys.modules[name]


def test_user_code_outside_installed_code_is_shipped_as_its_file_or_top_level_package(user_code):
    shipped = code_to_ship(["ship_me_package.sub:program", "ship_me_module:metric"])
    assert shipped == [str(user_code / "ship_me_package"), str(user_code / "ship_me_module.py")]


def test_installed_code_and_gepa_lab_itself_are_not_shipped(user_code):
    assert code_to_ship(["gepa_lab.tasks.classify:make_program", "gepa_lab.tasks.classify:label_metric"]) == []
    assert code_to_ship(["dspy:Predict", "json:dumps", "math:sqrt"]) == []  # site-packages, the standard library, built-in


def test_code_already_delivered_by_ray_is_not_shipped_again(tmp_path, monkeypatch):
    delivered = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    delivered.mkdir(parents=True)
    (delivered / "ship_me_delivered.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(delivered))
    assert code_to_ship(["ship_me_delivered:x"]) == []


def test_ray_py_modules_are_shipped_too_and_must_exist(user_code, tmp_path):
    extra = tmp_path / "helpers"
    extra.mkdir()
    assert code_to_ship(["ship_me_module:metric"], [str(extra)]) == [str(extra), str(user_code / "ship_me_module.py")]
    with pytest.raises(ConfigError, match="ray.py_modules: /nowhere/helpers does not exist"):
        code_to_ship([], ["/nowhere/helpers"])


@pytest.mark.parametrize("address, node_ip", [
    ("127.0.0.2:6379", "127.0.0.2"),  # a cluster on this machine's loopback: join it there
    ("127.0.0.1:6379", None),  # Ray rewrites 127.0.0.1 anyway: its choice
    ("10.1.2.3:6379", None), ("auto", None), ("head.example:6379", None), ("ray://127.0.0.2:10001", None),
])
def test_a_driver_joins_a_loopback_cluster_at_its_loopback_address(address, node_ip):
    assert driver_node_ip(address) == node_ip
