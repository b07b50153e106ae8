"""Notebooks are source code: stored without outputs, valid, and each tells its mode."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_lessons():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_valid(path):
    nb = nbformat.read(path, 4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has stored outputs: run `make strip`"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state: run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_sizes_come_from_the_quick_switch(path):
    """A lesson prints its mode and never reads TL_QUICK behind the package's back."""
    source = "\n".join(c.source for c in nb_cells(path) if c.cell_type == "code")
    assert "TL_QUICK" not in source
    assert "mode()" in source or "print_environment()" in source


def nb_cells(path):
    return nbformat.read(path, 4).cells
