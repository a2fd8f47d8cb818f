"""Tests for notebooks/: each one executes end to end in its smoke configuration, and all are committed clean.

What this checks
----------------
* every notebook runs top to bottom in a fresh kernel with the smoke settings (synthetic data,
  1 epoch, BaselineCNN only, 10 train / 5 val images per class, CPU, no control run) and no cell
  raises; each shows at least one figure and the text it exists to show;
* every notebook is committed without outputs, has exactly one code cell tagged `parameters`,
  starts with a markdown cell that documents every `NB_*` variable it reads, and defines no model or
  training loop (the notebooks only call the package).

Run:  PYTHONPATH=. pytest -q -k notebook tests/test_notebooks.py   (about 2-4 min on 2 busy cores)

The kernel inherits this process's environment: the smoke `NB_*` variables, PYTHONPATH (the
repository root, so `tinyimagenet` and `quick_diagnosis` import without installing) and
TINYIMAGENET_CACHE (a per-run temp folder, set by conftest.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_data", "02_quick_diagnosis", "03_full_training", "04_dropout_before_after"}

SMOKE_ENV = {
    "NB_SYNTHETIC": "1",
    "NB_EPOCHS": "1",
    "NB_MODELS": "BaselineCNN",
    "NB_TRAIN_PER_CLASS": "10",
    "NB_VAL_PER_CLASS": "5",
    "NB_DEVICE": "cpu",
    "NB_FIT_BATCH": "2",
    "NB_FIT_STEPS": "5",
    "NB_CONTROL": "0",
    "NB_PROGRESS": "0",
}

# Text each notebook must print in smoke mode: the thing it exists to show.
MUST_SHOW = {
    "01_data": ["val labels match val_annotations.txt", "a perfect classifier scores", "grayscale"],
    "02_quick_diagnosis": ["val top-1 % per epoch", "top cause", " because ", "outputs_are_probabilities",
                           "gradients_not_zeroed"],
    # 03 and 04 end with tinyimagenet.results' table (its header), 03 with the command that prints it.
    "03_full_training": ["images/s", "best top-1 % (epoch)", "python -m tinyimagenet.results"],
    "04_dropout_before_after": ["legacy dropout reached", "keep probability", "=>", "best top-1 % (epoch)"],
}


def _text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            for mime in ("text/plain", "text/html"):
                parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def _has_image(nb) -> bool:
    return any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_notebook_set_is_complete():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}, f"missing notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells and nb.cells[0].cell_type == "markdown", "a notebook starts with a markdown cell saying what it shows"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells.index(tagged[0]) == nb.cells.index(code[0]), "the parameters cell is the first code cell"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"outputs committed in {path.name}"
        src = cell.source
        assert "nn.Module" not in src, f"{path.name} defines a model; notebooks only call the package"
        assert not any(line.startswith("class ") for line in src.splitlines()), f"{path.name} defines a class"
        assert ".backward(" not in src and "optimizer.step(" not in src, f"{path.name} has a training loop"
    used = set(re.findall(r"\bNB_[A-Z_]+\b", "\n".join(c.source for c in code)))
    undocumented = sorted(v for v in used if v not in nb.cells[0].source)
    assert not undocumented, f"{path.name}: {undocumented} not documented in the first markdown cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    for key, value in SMOKE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NB_OUT_DIR", str(tmp_path / "runs"))
    for key in ("TINYIMAGENET_ROOT", "NB_ARCHIVE", "NB_RECIPE", "NB_DROPOUT", "NB_COMPILE", "NB_GRAY_MAX_FILES"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute()  # CellExecutionError on the first cell that raises
    finally:
        nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a look after a failure
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, errors
    assert _has_image(nb), f"{path.name} showed no figure"
    text = _text_of(nb)
    missing = [s for s in MUST_SHOW.get(path.stem, []) if s not in text]
    assert not missing, f"{path.name} output lacks {missing}"
