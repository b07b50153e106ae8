"""nbgrader configuration for a transformer-lesson course folder (not imported by the package).

``python -m transformer_lesson.exercises course DIR`` (or ``make course``) copies this file to
``DIR/nbgrader_config.py``; nbgrader reads it when a command is run from ``DIR``. How to grade with
it: ``docs/instructors.md``.
"""

import os
import shutil
import sys
import tempfile

from nbgrader.converters import Autograde, GenerateAssignment
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

from transformer_lesson.colab import unlink_badge

c = get_config()  # noqa: F821 (nbgrader defines get_config when it reads this file)

c.CourseDirectory.course_id = "transformer-lesson"

# nbgrader starts the `alembic` program by name to create gradebook.db. Put the folder of the Python
# that runs nbgrader first on PATH, so a virtual environment's nbgrader (.venv/bin/nbgrader) works
# without activating the environment.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

# The kernels that autograde starts inherit these. Quick mode shrinks data, models and training
# steps (the exercises and their checks are the same in both modes), so every cell finishes well
# within the timeout; plots are drawn off-screen. Set TL_QUICK=0 before running nbgrader to grade
# in full mode, and raise the timeout to match.
os.environ.setdefault("TL_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Seconds one cell may run before nbgrader interrupts it and the cell fails (nbgrader's default: 30).
c.Execute.timeout = 120


class ExecuteWithOwnCheckpoints(Execute):
    """nbgrader's Execute, with a fresh, empty checkpoint folder for each notebook it grades.

    The lessons keep checkpoints in ``$TL_CHECKPOINT_DIR`` and resume from them. Every kernel that
    autograde starts inherits this process's environment, so with one folder for all, every student
    after the first would resume from another student's training (and see its paths). The folder is
    made inside ``$TL_CHECKPOINT_DIR`` when that is set (else in the system's temporary folder) just
    before the notebook's kernel starts, and deleted when the notebook is graded.
    """

    def preprocess(self, nb, resources=None, km=None):
        parent = os.environ.get("TL_CHECKPOINT_DIR")
        if parent:
            os.makedirs(parent, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="graded-", dir=parent or None)
        os.environ["TL_CHECKPOINT_DIR"] = folder
        try:
            return super().preprocess(nb, resources, km)
        finally:
            if parent is None:
                del os.environ["TL_CHECKPOINT_DIR"]
            else:
                os.environ["TL_CHECKPOINT_DIR"] = parent
            shutil.rmtree(folder, ignore_errors=True)


c.Autograde.autograde_preprocessors = [
    ExecuteWithOwnCheckpoints if preprocessor is Execute else preprocessor
    for preprocessor in Autograde.class_traits()["autograde_preprocessors"].default()
]


class UnlinkColabBadge(NbGraderPreprocessor):  # nbgrader's base: enabled, unlike nbconvert's
    """The release carries a note instead of the "Open in Colab" badge, which opens the source notebook
    (solutions included) at the release tag."""

    def preprocess(self, nb, resources):
        return unlink_badge(nb), resources


c.GenerateAssignment.preprocessors = [
    UnlinkColabBadge, *GenerateAssignment.class_traits()["preprocessors"].default()]
