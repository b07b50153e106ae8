"""The instructors' side: the guide's syllabus, the course folder, and a real nbgrader round trip."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from transformer_lesson import exercises

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GUIDE = ROOT / "docs" / "instructors.md"


def graded_cells(path):
    """(grade_id, points) of every graded cell of a notebook."""
    return {(c.metadata["nbgrader"]["grade_id"], float(c.metadata["nbgrader"]["points"]))
            for c in nbformat.read(path, 4).cells if c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_syllabus_lists_each_lesson_with_its_graded_exercises(path):
    rows = [line for line in GUIDE.read_text().splitlines() if line.startswith(f"| {path.name[:2]} `{path.stem}` |")]
    assert len(rows) == 1, f"docs/instructors.md: the syllabus needs one row for {path.stem}"
    listed = {(grade_id, float(points)) for grade_id, points in re.findall(r"`([\w-]+)`, (\d+(?:\.\d+)?)\)", rows[0])}
    assert listed == graded_cells(path), f"docs/instructors.md: update {path.stem}'s exercises and points"


def test_syllabus_total():
    total = sum(points for path in NOTEBOOKS for _, points in graded_cells(path))
    assert f"{total:g} points in all" in GUIDE.read_text()


def test_course_command_sets_up_a_course_folder(tmp_path):
    course = tmp_path / "course"
    command = [sys.executable, "-m", "transformer_lesson.exercises", "course", str(course),
               "--source", str(ROOT / "notebooks"), "--lessons", "00", "03"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (course / "source" / "lessons").iterdir()) == [
        p.name for p in NOTEBOOKS if p.name[:2] in ("00", "03")]
    assert (course / "nbgrader_config.py").read_text() == exercises.NBGRADER_CONFIG.read_text()
    assert "generate_assignment lessons" in result.stdout
    # an instructor's own configuration is kept
    (course / "nbgrader_config.py").write_text("c = get_config()\n")
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert (course / "nbgrader_config.py").read_text() == "c = get_config()\n"
    with pytest.raises(exercises.ExerciseError, match="Assignment name"):
        exercises.make_course(tmp_path / "other", ROOT / "notebooks", assignment="lesson 1")
    with pytest.raises(exercises.ExerciseError, match="starting with 99"):
        exercises.make_course(tmp_path / "other", ROOT / "notebooks", lessons=["99"])


def without_markers(source):
    return "\n".join(line for line in source.split("\n")
                     if line.strip() not in (exercises.BEGIN_SOLUTION, exercises.END_SOLUTION))


def test_nbgrader_round_trip_on_lesson_00(tmp_path):
    """generate_assignment, then autograde three students: solved, untouched and one typical mistake."""
    pytest.importorskip("nbgrader", reason="nbgrader is in the 'instructor' extra")
    from nbgrader.api import Gradebook

    lesson, assignment = NOTEBOOKS[0], "lessons"
    course = tmp_path / "course"
    exercises.make_course(course, ROOT / "notebooks", assignment, lessons=["00"])
    bin_dir = Path(sys.executable).parent
    # nbgrader from the virtual environment without activating it: the shipped config finds alembic
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir)
    env = {**os.environ, "PATH": path, "TL_QUICK": "1", "MPLBACKEND": "Agg",
           "TL_CHECKPOINT_DIR": str(tmp_path / "checkpoints")}

    def nbgrader(*args):
        result = subprocess.run([str(bin_dir / "nbgrader"), *args, assignment], cwd=course, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    nbgrader("generate_assignment")
    released = nbformat.read(course / "release" / assignment / lesson.name, 4)
    solutions = {c.metadata["nbgrader"]["grade_id"]: without_markers(c.source)
                 for c in nbformat.read(lesson, 4).cells if c.metadata.get("nbgrader", {}).get("solution")}
    assert solutions and all("raise NotImplementedError()" in c.source for c in released.cells
                             if c.metadata.get("nbgrader", {}).get("grade_id") in solutions)
    wrong = {grade_id: source.replace("return ids, mask", "return ids, ~mask")
             for grade_id, source in solutions.items()}
    assert wrong != solutions, "lesson 00's solution changed: update the typical mistake here"
    for student, answers in [("solved", solutions), ("untouched", {}), ("inverted", wrong)]:
        submission = copy.deepcopy(released)
        for cell in submission.cells:
            cell.source = answers.get(cell.metadata.get("nbgrader", {}).get("grade_id"), cell.source)
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(submission, folder / lesson.name)

    nbgrader("autograde")
    graded = graded_cells(lesson)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        def scores(student):
            return {(grade_id, gradebook.find_grade(grade_id, lesson.stem, assignment, student).score)
                    for grade_id, _ in graded}

        assert scores("solved") == graded
        assert scores("untouched") == {(grade_id, 0) for grade_id, _ in graded}
        assert scores("inverted") == {(grade_id, 0) for grade_id, _ in graded}

    untouched = nbformat.read(course / "autograded" / "untouched" / assignment / lesson.name, 4)
    errors = [o.ename + ": " + o.evalue for c in untouched.cells if c.metadata.get("nbgrader", {}).get("grade")
              for o in c.outputs if o.output_type == "error"]
    assert len(errors) == len(graded) and all("NotImplementedError" in error for error in errors), errors

    nbgrader("generate_feedback")
    total = sum(points for _, points in graded)
    feedback = {student: (course / "feedback" / student / assignment / f"{lesson.stem}.html").read_text()
                for student in ("solved", "untouched", "inverted")}
    assert f"{lesson.stem} (Score: {total:.1f} / {total:.1f})" in feedback["solved"]
    assert f"{lesson.stem} (Score: 0.0 / {total:.1f})" in feedback["untouched"]
    assert f"{lesson.stem} (Score: 0.0 / {total:.1f})" in feedback["inverted"]
    assert "the mask is inverted" in feedback["inverted"]  # the check's diagnosis reaches the student
