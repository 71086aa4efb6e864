"""The walkthrough notebook runs top to bottom on a fresh kernel, as a learner runs it first."""

from __future__ import annotations

import pytest
from conftest import SHARED_MINI

from helpers import ROOT

nbformat = pytest.importorskip(
    "nbformat", reason="the notebook test needs nbclient, nbformat, ipykernel: pip install -e '.[dev]'"
)
nbclient = pytest.importorskip(
    "nbclient", reason="the notebook test needs nbclient, nbformat, ipykernel: pip install -e '.[dev]'"
)

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
MAX_BYTES = 2 << 20  # committed with its outputs, so it reads well where the repository is hosted


def test_the_committed_notebook_shows_its_outputs_and_stays_small():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs for cell in code if "import" not in cell.source.splitlines()[0]), (
        "run all cells and save before committing"
    )
    assert NOTEBOOK.stat().st_size < MAX_BYTES


@pytest.mark.timeout(900)
def test_the_walkthrough_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("WALKTHROUGH_DIR", str(tmp_path / "walkthrough"))  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "largest difference between our logits and timm's: 0.00e+00" in text
    assert "ResNet-101: 44,549,160 parameters" in text
    assert "done: best val_auc" in text and "precision    recall  f1-score   support" in text
    pictures = [output for output in outputs if {"image/png", "image/jpeg"} & set(output.get("data", {}))]
    # samples, curves, ROC, PR, confusion, Grad-CAM, feature maps, two filter banks, the 37-breed confusion matrix
    assert len(pictures) == 10
    # what the notebook packs: the real sample beside the repository (as its first cell looks for it), or else
    # its synthetic stand-in (400 images of seed 0: 7 breeds); the test expects the one this checkout has
    if (SHARED_MINI / "annotations" / "trainval.txt").is_file():
        assert "(synthetic: False)" in text and "37 classes, e.g." in text
    else:
        assert "(synthetic: True)" in text
        assert "7 classes, e.g. ['Amber', 'Blue_Point', 'Cinder', 'alpine_hound']" in text
    assert " top5=" in text and "largest confusions:" in text
    assert (tmp_path / "walkthrough" / "runs" / "small-resnet" / "model.safetensors").is_file()
