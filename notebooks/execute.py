"""Refresh a notebook's stored outputs exactly as nbval will run it (offline, no history).

    python notebooks/execute.py notebooks/quickstart.ipynb

nbval executes cells with store_history=False, so the outputs committed here must come from
the same mode; the environment matches notebooks/conftest.py (no key, no streaming, a fresh
MIRAI_HOME).
"""

from __future__ import annotations

import os
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401  (sets the same environment as the nbval run)


def execute(path: str) -> None:
    os.environ["MIRAI_NOTEBOOK"] = os.path.basename(path)  # as conftest.py does under nbval
    nb = nbformat.read(path, as_version=4)
    folder = os.path.dirname(os.path.abspath(path))
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the committed notebook
        resources={"metadata": {"path": folder}},
    )
    with client.setup_kernel():
        count = 0
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index, store_history=False)
            count += 1
            cell.execution_count = count
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = count
    nbformat.write(nb, path)


if __name__ == "__main__":
    os.environ["MIRAI_HOME"] = tempfile.mkdtemp(prefix="mirai-execute-")
    for notebook in sys.argv[1:]:
        execute(notebook)
