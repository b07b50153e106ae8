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


def solutions_of(cells):
    """{grade_id: the solution as a student would write it} of every solution cell."""
    return {c.metadata["nbgrader"]["grade_id"]: without_markers(c.source)
            for c in cells if c.metadata.get("nbgrader", {}).get("solution")}


def open_questions(cells):
    """grade_ids of the open questions: graded markdown cells, which the instructor grades by hand."""
    return {c.metadata["nbgrader"]["grade_id"] for c in cells
            if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade")}


def nbgrader_in(course, checkpoints, assignment, timeout=300):
    """A function that runs one nbgrader command on ``assignment`` in the course folder, as an instructor
    would from the virtual environment without activating it (the shipped config finds alembic)."""
    bin_dir = Path(sys.executable).parent
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir)
    env = {**os.environ, "PATH": path, "TL_QUICK": "1", "MPLBACKEND": "Agg", "TL_CHECKPOINT_DIR": str(checkpoints)}

    def nbgrader(*args):
        result = subprocess.run([str(bin_dir / "nbgrader"), *args, assignment], cwd=course, env=env,
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr
    return nbgrader


# A cell each student adds at the end: which checkpoint folder did the grading kernel get, and what was in it?
SPY = """from transformer_lesson.runtime import checkpoint_dir
folder = checkpoint_dir()
print("checkpoints:", folder, sorted(p.name for p in folder.iterdir()))
(folder / "left-by-a-student").touch()"""


def test_nbgrader_round_trip_on_lesson_00(tmp_path):
    """generate_assignment, then autograde three students: solved, untouched and one typical mistake.

    Checks are graded automatically; open questions (markdown answer cells) are left to the
    instructor, except an untouched one, which nbgrader scores 0 by itself. The test then grades the
    solved student's answers by hand, as an instructor would, and reads the feedback. Also: each
    graded notebook gets its own empty checkpoint folder, and a failed check shows its diagnosis
    alone, not a traceback through the checks.
    """
    pytest.importorskip("nbgrader", reason="nbgrader is in the 'instructor' extra")
    from nbgrader.api import Gradebook

    lesson, assignment = NOTEBOOKS[0], "lessons"
    course = tmp_path / "course"
    exercises.make_course(course, ROOT / "notebooks", assignment, lessons=["00"])
    nbgrader = nbgrader_in(course, tmp_path / "checkpoints", assignment)

    nbgrader("generate_assignment")
    released = nbformat.read(course / "release" / assignment / lesson.name, 4)
    cells = nbformat.read(lesson, 4).cells
    solutions, written = solutions_of(cells), open_questions(cells)
    assert len(written) >= 2, "lesson 00 should have open questions"
    assert solutions and all("raise NotImplementedError()" in c.source for c in released.cells
                             if c.metadata.get("nbgrader", {}).get("grade_id") in solutions.keys() - written)
    assert all(c.source == exercises.MARKDOWN_STUB for c in released.cells
               if c.metadata.get("nbgrader", {}).get("grade_id") in written)
    wrong = {grade_id: source.replace("return ids, mask", "return ids, ~mask")
             for grade_id, source in solutions.items()}
    assert wrong != solutions, "lesson 00's solution changed: update the typical mistake here"
    # the solved student's pad_sequences also warns: a right answer that warns still scores in full
    solutions["pad-sequences"] = "import warnings\n\n" + solutions["pad-sequences"].replace(
        "def pad_sequences(sequences, pad_id):\n",
        "def pad_sequences(sequences, pad_id):\n    warnings.warn('an old spelling', DeprecationWarning)\n", 1)
    assert "warnings.warn" in solutions["pad-sequences"]
    for student, answers in [("solved", solutions), ("untouched", {}), ("inverted", wrong)]:
        submission = copy.deepcopy(released)
        for cell in submission.cells:
            cell.source = answers.get(cell.metadata.get("nbgrader", {}).get("grade_id"), cell.source)
        submission.cells.append(nbformat.v4.new_code_cell(SPY))
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(submission, folder / lesson.name)

    nbgrader("autograde")
    graded = graded_cells(lesson)
    checks = {(grade_id, points) for grade_id, points in graded if grade_id not in written}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        def grade(student, grade_id):
            return gradebook.find_grade(grade_id, lesson.stem, assignment, student)

        def scores(student, grade_ids):
            return {(grade_id, grade(student, grade_id).score) for grade_id, _ in grade_ids}

        assert scores("solved", checks) == checks
        assert scores("untouched", graded) == {(grade_id, 0) for grade_id, _ in graded}
        assert scores("inverted", checks) == {(grade_id, 0 if grade_id == "pad-sequences-check" else points)
                                              for grade_id, points in checks}
        # answered open questions wait for the instructor; untouched ones are already 0
        assert all(grade("solved", grade_id).needs_manual_grade for grade_id in written)
        assert not any(grade("untouched", grade_id).needs_manual_grade for grade_id in written)
        for grade_id, points in graded:  # the instructor grades the model answers in full
            if grade_id in written:
                grade("solved", grade_id).manual_score = points
        gradebook.db.commit()
        assert scores("solved", graded) == graded

    untouched = nbformat.read(course / "autograded" / "untouched" / assignment / lesson.name, 4)
    errors = [o.ename + ": " + o.evalue for c in untouched.cells if c.metadata.get("nbgrader", {}).get("grade")
              for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == len(checks) and all("not written yet" in error or "NotImplementedError" in error
                                              for error in errors), errors

    def error_outputs(student):
        notebook = nbformat.read(course / "autograded" / student / assignment / lesson.name, 4)
        return [o for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")
                for o in c.get("outputs", []) if o.output_type == "error"]

    # a check that fails shows its diagnosis first and alone (IPython renders CheckFailed without a traceback);
    # an unfinished exercise reads the same one line in every lesson
    for error in error_outputs("untouched"):
        assert error.ename == "CheckFailed" and len(error.traceback) == 1, error.traceback
        assert "is not written yet: replace `raise NotImplementedError()` with your code" in error.traceback[0]
    [error] = error_outputs("inverted")
    assert error.traceback[0].startswith("\x1b[0;31mCheckFailed\x1b[0m: pad_sequences(...)[1] differs"), error
    assert len(error.traceback) <= 6 and "Traceback" not in "".join(error.traceback), error.traceback

    notebook = nbformat.read(course / "autograded" / "solved" / assignment / lesson.name, 4)
    [check] = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "pad-sequences-check"]
    assert [o.name for o in check.outputs] == ["stdout"], check.outputs  # nothing on stderr, where it would score 0
    assert "DeprecationWarning: an old spelling" in check.outputs[0].text

    # every graded notebook ran with a checkpoint folder of its own, empty at the start and deleted afterwards
    folders = []
    for student in ("solved", "untouched", "inverted"):
        notebook = nbformat.read(course / "autograded" / student / assignment / lesson.name, 4)
        printed = "".join(o.text for o in notebook.cells[-1].outputs if o.output_type == "stream")
        folder, contents = re.fullmatch(r"checkpoints: (\S+) (\[.*\])\n", printed).groups()
        assert contents == "[]", f"{student}'s grading found another run's files: {contents}"
        assert Path(folder).parent == tmp_path / "checkpoints" and not Path(folder).exists()
        folders.append(folder)
    assert len(set(folders)) == 3, folders

    nbgrader("generate_feedback")
    total = sum(points for _, points in graded)
    inverted = sum(points for grade_id, points in checks if grade_id != "pad-sequences-check")
    feedback = {student: (course / "feedback" / student / assignment / f"{lesson.stem}.html").read_text()
                for student in ("solved", "untouched", "inverted")}
    assert f"{lesson.stem} (Score: {total:.1f} / {total:.1f})" in feedback["solved"]
    assert f"{lesson.stem} (Score: 0.0 / {total:.1f})" in feedback["untouched"]
    assert f"{lesson.stem} (Score: {inverted:.1f} / {total:.1f})" in feedback["inverted"]
    assert "the mask is inverted" in feedback["inverted"]  # the check's diagnosis reaches the student
    assert "is not written yet" in feedback["untouched"]
    assert "core.py" not in feedback["inverted"]  # no frames of the checks' internals


# Lessons 01-06, in two courses (lesson 00 has its own test above): 47 s and 35 s on 2026-12-02 (Intel, 2 cores;
# `make test` prints the durations). They stay on one worker with the rest of this module: letting the other
# worker take one of them made `make test` slower (310 s against 272 s, one run each).
ROUND_TRIPS = [("01", "02", "03"), ("04", "05", "06")]


@pytest.mark.parametrize("lessons", ROUND_TRIPS, ids="+".join)
def test_nbgrader_gives_every_lesson_s_solutions_full_points_and_its_release_zero(tmp_path, lessons):
    """generate_assignment and autograde on lessons 01-06: the solutions score every automatic point,
    the untouched release scores 0 on every graded cell and no grader crashes. Autograde puts each
    lesson's hidden tests back, so these run too: a solution that fails one of them loses its points."""
    pytest.importorskip("nbgrader", reason="nbgrader is in the 'instructor' extra")
    from nbgrader.api import Gradebook

    assignment, course = "lessons", tmp_path / "course"
    paths = exercises.make_course(course, ROOT / "notebooks", assignment, lessons=list(lessons))
    assert [p.name[:2] for p in paths] == list(lessons)
    nbgrader = nbgrader_in(course, tmp_path / "checkpoints", assignment, timeout=600)
    nbgrader("generate_assignment")
    for student in ("solved", "untouched"):
        (course / "submitted" / student / assignment).mkdir(parents=True)
    expected = {}
    for path in paths:
        cells = nbformat.read(path, 4).cells
        assert any("### BEGIN HIDDEN TESTS" in c.source for c in cells), f"{path.name} has no hidden tests"
        released = nbformat.read(course / "release" / assignment / path.name, 4)
        assert not any("### BEGIN HIDDEN TESTS" in c.source or "### BEGIN SOLUTION" in c.source
                       for c in released.cells), f"{path.name}'s release carries solutions or hidden tests"
        assert not any("colab.research.google.com/github" in c.source for c in released.cells), (
            f"{path.name}'s release links to the source notebook (its Colab badge)")
        solutions = solutions_of(cells)
        nbformat.write(released, course / "submitted" / "untouched" / assignment / path.name)
        solved = copy.deepcopy(released)
        for cell in solved.cells:
            cell.source = solutions.get(cell.metadata.get("nbgrader", {}).get("grade_id"), cell.source)
        nbformat.write(solved, course / "submitted" / "solved" / assignment / path.name)
        written = open_questions(cells)
        graded = graded_cells(path)
        assert len(graded - {(g, p) for g, p in graded if g in written}) >= 3 and len(written) >= 2, path.name
        expected[path.stem] = graded, written

    nbgrader("autograde")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        def scores(lesson, student, cells):
            return {(grade_id, gradebook.find_grade(grade_id, lesson, assignment, student).score)
                    for grade_id, _ in cells}

        for lesson, (graded, written) in expected.items():
            checks = {(grade_id, points) for grade_id, points in graded if grade_id not in written}
            assert scores(lesson, "solved", checks) == checks, f"{lesson}: the solutions lose points"
            assert scores(lesson, "untouched", graded) == {(grade_id, 0) for grade_id, _ in graded}, (
                f"{lesson}: the untouched release scores")
