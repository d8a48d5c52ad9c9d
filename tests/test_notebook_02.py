"""Notebook 02 runs end to end on small settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_momentum_attention.ipynb"


def test_notebook_02_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("SF_NOTEBOOK_STEPS", "20")
    monkeypatch.setenv("SF_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The notebook selects the inline backend itself; a non-interactive backend from the
    # environment (scripts/test.sh sets Agg) must not leak into the kernel.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "gamma=0: eval accuracy" in outputs
    assert "gamma=4: eval accuracy" in outputs
    images = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs if "image/png" in output.get("data", {})
    ]
    assert len(images) == 2
    for gamma in ("0", "4"):
        assert (tmp_path / "runs" / f"induction-gamma{gamma}" / "evaluation.json").is_file()
