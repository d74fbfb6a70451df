"""docs/walkthrough.ipynb: generated from docs/walkthrough.py, and it runs top to bottom (real MNIST when present,
a synthetic set otherwise)."""

import json
import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _sources(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_is_generated_from_the_script():
    script = jupytext.read(DOCS / "walkthrough.py")
    notebook = nbformat.read(DOCS / "walkthrough.ipynb", as_version=4)
    assert _sources(notebook) == _sources(script), "run: jupytext --to ipynb docs/walkthrough.py"
    stored = json.loads((DOCS / "walkthrough.ipynb").read_text())
    assert all(not cell.get("outputs") for cell in stored["cells"]), "outputs are stripped in git"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch, request):
    """On real MNIST when it is here (its figures saved, as docs/index.md regenerates them), else on the synthetic
    bars, whose figures are not saved: they would replace the committed real digit's."""
    try:
        monkeypatch.setenv("BP_TORCH_DATA", str(request.getfixturevalue("mnist_root")))
        real = True
    except pytest.skip.Exception:
        real = False
    monkeypatch.setenv("WALKTHROUGH_STEPS", "100")
    monkeypatch.setenv("BP_TORCH_FIGURES", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(DOCS / "walkthrough.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(DOCS)}}).execute()
    text = "\n".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "W̃δ = Note A eq. 17: True" in text and "after 100 steps: test accuracy" in text
    errors = [line.split()[-1] for line in text.splitlines() if line.startswith(("Δk²", "ΔS¹")) and "B " in line]
    assert errors and all(float(e) < 1e-12 for e in errors)
    saved = {p.name for p in tmp_path.iterdir()}
    if real or "real MNIST:" in text:  # (data/ beside the repository counts too)
        assert saved >= {"walkthrough_digit.png", "walkthrough_error_maps.png", "walkthrough_w_tilde.png"}
        printed = {line.rsplit(maxsplit=1)[0]: float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("Δ") and " B " in line}  # fmt: skip
        for page in (DOCS.parent / "README.md", DOCS / "index.md"):  # their table is this run's (to rounding noise)
            rows = [line for line in page.read_text().splitlines() if line.startswith("Δ") and " B " in line]
            for row in rows:
                key, value = row.rsplit(maxsplit=1)
                assert abs(printed[key] - float(value)) <= 1e-16, f"{page.name}: {row}, run: {printed[key]}"
            assert rows, page.name
    else:
        assert not saved and "its figures are not saved" in text


def test_readme_shows_a_picture_of_it():
    readme = (DOCS.parent / "README.md").read_text()
    assert "docs/walkthrough.ipynb" in readme
    assert "docs/walkthrough/walkthrough_error_maps.png" in readme
    assert (DOCS / "walkthrough" / "walkthrough_error_maps.png").is_file()
    assert os.path.getsize(DOCS / "walkthrough" / "walkthrough_error_maps.png") > 1000
