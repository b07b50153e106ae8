"""The exercise machinery: nbgrader metadata, student versions, and nbgrader itself."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from transformer_lesson import colab, exercises

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
WITH_EXERCISES = [
    p for p in NOTEBOOKS
    if any(c.metadata.get("nbgrader", {}).get("solution") for c in nbformat.read(p, 4).cells)
]


def solution_lines(nb):
    """The non-trivial lines inside every solution region of ``nb``."""
    lines = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.split("\n"):
            if line.strip() == exercises.BEGIN_SOLUTION:
                inside = True
            elif line.strip() == exercises.END_SOLUTION:
                inside = False
            elif inside and len(line.strip()) > 3:
                lines.append(line.strip())
    return lines


def leaked_lines(nb, student_text):
    inside = set(solution_lines(nb))
    outside = {line.strip() for c in nb.cells if not c.metadata.get("nbgrader", {}).get("solution")
               for line in c.source.split("\n")}
    return [line for line in inside - outside if line in student_text]


def test_lesson_00_has_an_exercise():
    assert any(p.name.startswith("00_") for p in WITH_EXERCISES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_nbgrader_metadata_is_valid(path):
    nb = nbformat.read(path, 4)
    assert exercises.validate(nb, path.name) == []
    kinds = [(c.metadata["nbgrader"]["solution"], c.metadata["nbgrader"]["grade"])
             for c in nb.cells if "nbgrader" in c.metadata]
    # every solution is followed (later in the notebook) by a graded check; an open question's answer
    # cell (solution and graded, graded by hand) is its own
    for i, (solution, graded) in enumerate(kinds):
        if solution and not graded:
            assert any(grade for _, grade in kinds[i + 1:]), f"{path.name}: a solution without a check after it"


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_student_version_has_no_solution_line(path):
    nb = nbformat.read(path, 4)
    student = exercises.student_version(nb, path.name)
    text = "\n".join(c.source for c in student.cells)
    assert solution_lines(nb), "the notebook should have solution lines"
    assert leaked_lines(nb, text) == []
    assert exercises.BEGIN_SOLUTION not in text and exercises.BEGIN_HIDDEN not in text
    assert "raise NotImplementedError()" in text
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    assert exercises.validate(nb, path.name) == []
    # the Colab badge opens the source notebook, solutions included: a note replaces it
    assert "colab.research.google.com/github" in nb.cells[1].source
    assert "colab.research.google.com/github" not in text and student.cells[1].source == colab.STUDENT_NOTE


def test_stub_keeps_indentation_and_hidden_tests_go():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    ### END SOLUTION\n    return y",
            metadata={"nbgrader": {"solution": True, "grade": False, "locked": False, "task": False,
                                   "grade_id": "f", "schema_version": 3}}),
        nbformat.v4.new_code_cell(
            "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 3\n### END HIDDEN TESTS",
            metadata={"nbgrader": {"solution": False, "grade": True, "locked": True, "task": False,
                                   "grade_id": "f-check", "points": 1, "schema_version": 3}}),
    ])
    student = exercises.student_version(nb)
    assert student.cells[0].source == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n    return y")
    assert student.cells[1].source == "assert f(1) == 2"


def test_broken_markup_is_reported():
    meta = {"nbgrader": {"solution": True, "grade": False, "locked": False, "task": False,
                         "grade_id": "a", "schema_version": 3}}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1", metadata=meta)])
    with pytest.raises(exercises.ExerciseError, match="never closed"):
        exercises.student_version(nb, "nb")
    nb.cells.append(nbformat.v4.new_code_cell("### BEGIN SOLUTION\n### END SOLUTION", metadata=meta))
    nb.cells.append(nbformat.v4.new_code_cell("y = 2", metadata={"nbgrader": {
        "solution": False, "grade": True, "locked": False, "task": False, "grade_id": "b", "schema_version": 2}}))
    problems = "\n".join(exercises.validate(nb, "nb"))
    assert "'a' already used" in problems
    assert "schema_version must be 3" in problems
    assert "needs non-negative 'points'" in problems
    assert "must be locked" in problems


def test_make_student_command_writes_all_notebooks(tmp_path):
    out = tmp_path / "student"
    result = subprocess.run([sys.executable, "-m", "transformer_lesson.exercises", "student",
                             "--source", str(NOTEBOOKS[0].parent), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=lambda p: p.name)
def test_first_student_exercise_raises_not_implemented(path, tmp_path):
    """Run the student version top to bottom: it must stop at the first exercise's check."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    student = exercises.student_version(nbformat.read(path, 4), path.name)
    checks = [i for i, c in enumerate(student.cells)  # graded code cells: open questions are graded by hand
              if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    first_check = checks[0]
    student.cells = student.cells[: first_check + 1]
    client = NotebookClient(student, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="NotImplementedError"):
        client.execute()
    failed = [i for i, c in enumerate(student.cells)
              if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == [first_check]


def test_nbgrader_generate_assignment_accepts_the_notebooks(tmp_path):
    pytest.importorskip("nbgrader", reason="nbgrader is in the 'instructor' extra")
    source = tmp_path / "source" / "lessons"
    source.mkdir(parents=True)
    for path in NOTEBOOKS:
        shutil.copy(path, source)
    (tmp_path / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.root = r'{tmp_path}'\n"
        "c.CourseDirectory.course_id = 'transformer-lesson'\n")
    nbgrader = Path(sys.executable).parent / "nbgrader"
    env = {**os.environ, "PATH": f"{nbgrader.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # it runs alembic
    result = subprocess.run([str(nbgrader), "generate_assignment", "lessons", "--force"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    released = sorted(p.name for p in (tmp_path / "release" / "lessons").glob("*.ipynb"))
    assert released == [p.name for p in NOTEBOOKS]
    for path in WITH_EXERCISES:
        ours = nbformat.read(path, 4)
        theirs = "\n".join(c.source for c in nbformat.read(tmp_path / "release" / "lessons" / path.name, 4).cells)
        assert leaked_lines(ours, theirs) == []
