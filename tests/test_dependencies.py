"""Every third-party package gepa_lab imports is declared in pyproject.toml (the tests' own ones: in the dev extra)."""
import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def imported(folder: str) -> set[str]:
    """Top-level names imported anywhere under folder, inside functions too."""
    names = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


def declared(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    package = {canonicalize_name(project["name"])} | declared(project["dependencies"]) | declared(extras["cpu-lm"])
    distributions = packages_distributions()  # import name -> the installed distributions providing it
    for folder, allowed in (("gepa_lab", package), ("tests", package | declared(extras["dev"]))):
        # names no installed distribution provides are the tests' own helper modules
        undeclared = {name: distributions[name] for name in imported(folder) if name in distributions
                      and not {canonicalize_name(d) for d in distributions[name]} & allowed}
        assert not undeclared, f"{folder}/ imports packages pyproject.toml does not declare: {undeclared}"
