"""Instructor tools: validate exercise metadata, write student versions, set up an nbgrader course.

The source notebooks carry full solutions between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
in cells marked with nbgrader metadata (schema 3), so they run end to end in CI. A student
version replaces each solution region by ``# YOUR CODE HERE`` / ``raise NotImplementedError()``,
drops hidden tests and clears outputs, as ``nbgrader generate_assignment`` does, without
needing nbgrader; both also replace the Colab badge, which opens the source notebook with its
solutions, by a note.

``course`` sets up an nbgrader course folder: the shipped configuration
(``transformer_lesson/nbgrader_config.py``) and the notebooks as the source of one assignment, ready
for ``nbgrader generate_assignment`` (see ``docs/instructors.md``).

Command line::

    python -m transformer_lesson.exercises student  [--source notebooks] [--out build/student]
    python -m transformer_lesson.exercises validate [--source notebooks]
    python -m transformer_lesson.exercises course DIR [--source notebooks] [--assignment lessons]
                                                      [--lessons 00 03 ...]
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from pathlib import Path

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = "YOUR ANSWER HERE"
_GRADE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
NBGRADER_CONFIG = Path(__file__).with_name("nbgrader_config.py")
_NBGRADER_KEYS = {"grade", "solution", "locked", "task", "grade_id", "schema_version", "points"}


class ExerciseError(ValueError):
    """A notebook's exercise markup is broken. The message names notebook and cell."""


def _replace_regions(source: str, begin: str, end: str, stub: tuple[str, ...] | None, where: str) -> str:
    """Replace every ``begin ... end`` region of ``source`` by ``stub`` (None: delete it).

    The stub takes the indentation of the ``begin`` line, so solutions inside a function body
    become a stub inside the same body.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        if stripped == begin:
            if inside:
                raise ExerciseError(f"{where}, line {number}: {begin!r} inside an open region.")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if stub is not None:
                out.extend(indent + s for s in stub)
        elif stripped == end:
            if not inside:
                raise ExerciseError(f"{where}, line {number}: {end!r} without {begin!r}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ExerciseError(f"{where}: {begin!r} is never closed by {end!r}.")
    return "\n".join(out)


def _cell_source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def read_notebook(path: Path):
    """The notebook at ``path``; a file that is not one (truncated, not JSON, not a notebook) raises
    :class:`ExerciseError` naming it, instead of a JSON or schema error from deep inside nbformat."""
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # NotJSONError, a JSON error, a missing key, invalid UTF-8, ...
        raise ExerciseError(
            f"{path} is not a readable notebook ({type(error).__name__}): it may be truncated or damaged. "
            f"Restore it (`git checkout -- {path}` in a checkout) or open and re-save it in JupyterLab.") from None


def validate(nb, name: str = "notebook") -> list[str]:
    """Problems with the nbgrader metadata of ``nb`` (an empty list means valid).

    Checks what ``nbgrader`` itself requires (schema 3, boolean flags, unique grade ids, points
    on graded cells, graded cells locked unless they are solutions) and this course's rules
    (solution cells hold a solution region; no solution region outside a solution cell).
    """
    problems = []
    seen: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        source = _cell_source(cell)
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            if BEGIN_SOLUTION in source:
                problems.append(f"{where}: has {BEGIN_SOLUTION!r} but no nbgrader metadata.")
            continue
        unknown = set(meta) - _NBGRADER_KEYS - {"cell_type", "checksum"}
        if unknown:
            problems.append(f"{where}: unknown nbgrader keys {sorted(unknown)}.")
        if meta.get("schema_version") != 3:
            problems.append(f"{where}: schema_version must be 3, is {meta.get('schema_version')!r}.")
        for flag in ("grade", "solution", "locked", "task"):
            if not isinstance(meta.get(flag), bool):
                problems.append(f"{where}: {flag!r} must be true or false.")
        grade_id = meta.get("grade_id")
        if not isinstance(grade_id, str) or not _GRADE_ID.match(grade_id):
            problems.append(f"{where}: grade_id {grade_id!r} must be letters, digits, '-' or '_'.")
        elif grade_id in seen:
            problems.append(f"{where}: grade_id {grade_id!r} already used by cell {seen[grade_id]}.")
        else:
            seen[grade_id] = index
        if meta.get("grade"):
            points = meta.get("points")
            if not isinstance(points, int | float) or isinstance(points, bool) or points < 0:
                problems.append(f"{where}: a graded cell needs non-negative 'points', has {points!r}.")
        if meta.get("solution") and meta.get("locked"):
            problems.append(f"{where}: a solution cell cannot be locked.")
        if meta.get("grade") and not meta.get("solution") and not meta.get("locked"):
            problems.append(f"{where}: an autograded test cell must be locked.")
        if meta.get("solution") and cell.cell_type == "code" and BEGIN_SOLUTION not in source:
            problems.append(f"{where}: solution cell without a {BEGIN_SOLUTION!r} region.")
        if not meta.get("solution") and BEGIN_SOLUTION in source:
            problems.append(f"{where}: {BEGIN_SOLUTION!r} in a cell not marked as a solution.")
        if cell.get("id") is not None and isinstance(grade_id, str) and cell.get("id") != grade_id:
            problems.append(f"{where}: cell id {cell.get('id')!r} should equal grade_id {grade_id!r}.")
    return problems


def student_version(nb, name: str = "notebook"):
    """A copy of ``nb`` with solutions stubbed, hidden tests removed, outputs cleared and the Colab
    badge (which opens the source notebook) replaced by a note."""
    from transformer_lesson.colab import unlink_badge

    nb = unlink_badge(copy.deepcopy(nb))
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        meta = cell.get("metadata", {}).get("nbgrader", {})
        source = _cell_source(cell)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if meta.get("solution"):
                source = _replace_regions(source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, where)
            if BEGIN_HIDDEN in source:
                source = _replace_regions(source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        elif cell.cell_type == "markdown" and meta.get("solution"):
            source = MARKDOWN_STUB
        cell.source = source
    return nb


def build_student_notebooks(source: Path, out: Path) -> list[Path]:
    """Write the student version of every notebook in ``source`` to ``out``; return the paths.

    Refuses (with :class:`ExerciseError`) any notebook whose metadata does not validate.
    """
    import nbformat

    source, out = Path(source), Path(out)
    paths = sorted(source.glob("*.ipynb"))
    if not paths:
        raise ExerciseError(f"No notebooks in {source}.")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = read_notebook(path)
        problems = validate(nb, path.name)
        if problems:
            raise ExerciseError("\n".join(problems))
        target = out / path.name
        nbformat.write(student_version(nb, path.name), target)
        written.append(target)
    return written


def make_course(course: Path, source: Path = Path("notebooks"), assignment: str = "lessons",
                lessons: list[str] | None = None) -> list[Path]:
    """Set up an nbgrader course folder in ``course``; return the notebooks copied.

    Writes ``course/nbgrader_config.py`` (the shipped configuration; an existing one is kept) and
    copies the notebooks of ``source`` to ``course/source/<assignment>/``, replacing older copies.
    ``lessons``: only the notebooks whose names start with one of these (e.g. ``["00", "03"]``).
    Refuses (with :class:`ExerciseError`) a notebook whose metadata does not validate.
    """
    course, source = Path(course), Path(source)
    if not _GRADE_ID.match(assignment):
        raise ExerciseError(f"Assignment name {assignment!r}: use letters, digits, '-' or '_'.")
    paths = sorted(p for p in source.glob("*.ipynb") if not lessons or p.name.startswith(tuple(lessons)))
    if not paths:
        raise ExerciseError(f"No notebooks in {source}" + (f" starting with {', '.join(lessons)}." if lessons else "."))
    problems = [problem for path in paths for problem in validate(read_notebook(path), path.name)]
    if problems:
        raise ExerciseError("\n".join(problems))
    target = course / "source" / assignment
    target.mkdir(parents=True, exist_ok=True)
    config = course / "nbgrader_config.py"
    if not config.exists():
        shutil.copyfile(NBGRADER_CONFIG, config)
    return [Path(shutil.copyfile(path, target / path.name)) for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer_lesson.exercises", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student versions of the notebooks")
    student.add_argument("--source", type=Path, default=Path("notebooks"))
    student.add_argument("--out", type=Path, default=Path("build/student"))
    check = sub.add_parser("validate", help="check the nbgrader metadata of the notebooks")
    check.add_argument("--source", type=Path, default=Path("notebooks"))
    course = sub.add_parser("course", help="set up an nbgrader course folder from the notebooks")
    course.add_argument("dir", type=Path, help="the course folder (created if missing)")
    course.add_argument("--source", type=Path, default=Path("notebooks"))
    course.add_argument("--assignment", default="lessons", help="the nbgrader assignment name (default: lessons)")
    course.add_argument("--lessons", nargs="+", metavar="NN", help="only these lessons (e.g. --lessons 00 03)")
    args = parser.parse_args(argv)
    try:
        if args.command == "student":
            for path in build_student_notebooks(args.source, args.out):
                print(f"wrote {path}")
        elif args.command == "course":
            config = args.dir / "nbgrader_config.py"
            kept = config.exists()
            copied = make_course(args.dir, args.source, args.assignment, args.lessons)
            print(f"copied {len(copied)} notebook{'s' * (len(copied) != 1)} to {copied[0].parent}")
            print(f"{'kept' if kept else 'wrote'} {config}")
            nbgrader = Path(sys.executable).parent / "nbgrader"
            nbgrader = nbgrader.resolve() if nbgrader.exists() else "nbgrader"
            print(f"next: cd {args.dir} && {nbgrader} generate_assignment {args.assignment} --force")
        else:
            problems = []
            for path in sorted(args.source.glob("*.ipynb")):
                problems += validate(read_notebook(path), path.name)
            if problems:
                print("\n".join(problems), file=sys.stderr)
                return 1
            print("exercise metadata: OK")
    except ExerciseError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
