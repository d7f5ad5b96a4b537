"""Running a notebook for real: every cell in a Jupyter kernel (nbclient), as a user's Jupyter would, failing on the
first cell that raises."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from tests.conftest import ROOT

EXPLORE_NOTEBOOK = ROOT / "notebooks" / "explore_results.ipynb"


class ThisPythonKernel(AsyncKernelManager):
    """ipykernel's own 'python3' kernel, started by this interpreter (the project's venv): no kernelspec folder is
    searched, so a 'python3' spec of the user's or the system's Jupyter (another Python, without gepa_lab) never wins."""

    def __init__(self, **kwargs: Any):
        super().__init__(kernel_spec_manager=KernelSpecManager(kernel_dirs=[]), **kwargs)


def outputs(cell: dict[str, Any], kind: str) -> list[Any]:
    """A cell's outputs of one kind: 'stream' -> their texts, 'image/png' -> the images it displayed."""
    if kind == "stream":
        return [o["text"] for o in cell["outputs"] if o["output_type"] == "stream"]
    return [o["data"][kind] for o in cell["outputs"] if kind in o.get("data", {})]


def run_notebook(path: Path, results_dirs: list[Path], timeout: int = 600) -> nbformat.NotebookNode:
    """Execute the notebook at path from the project root, with GEPA_LAB_RESULTS_DIRS naming results_dirs; return it
    with its outputs (the file is left as it is). A cell that raises fails here (nbclient's CellExecutionError)."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable, end='')"))  # which Python ran it
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class=ThisPythonKernel,
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute(env={**os.environ, "GEPA_LAB_RESULTS_DIRS": os.pathsep.join(str(d) for d in results_dirs)})
    assert outputs(nb.cells.pop(), "stream") == [sys.executable]
    return nb
