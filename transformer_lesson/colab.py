"""Google Colab: the "Open in Colab" badge and the setup cell at the top of every lesson.

The repository and the release tag that Colab installs are defined here and nowhere else. The
``stamp`` command writes the badge and the setup cell into every notebook (and the badges of the
README's lesson table) from them; ``check`` says whether something is out of date::

    python -m transformer_lesson.colab stamp [--notebooks notebooks] [--readme README.md]
    python -m transformer_lesson.colab check [--notebooks notebooks] [--readme README.md]

(``make colab`` runs ``stamp``.) Each notebook gets two cells right after its first (title) cell:
a markdown cell with the badge (id ``colab-badge``) and a code cell (id ``colab-setup``), the same
in every lesson. Stamping again rewrites them in place and leaves every other cell alone.

The setup cell runs before the course is installed, so it uses the standard library only (and
torch, which Colab ships). On Colab it installs the course at :data:`RELEASE`, says how to switch
on a GPU if the runtime has none, and points ``TL_CHECKPOINT_DIR`` at Google Drive when Drive is
mounted. Anywhere else it does nothing: Colab is recognised by its kernel having imported
``google.colab`` (``"google.colab" in sys.modules``); an installed ``google-colab`` package on a
laptop, which ``importlib.util.find_spec`` would report, does not count.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from transformer_lesson import __version__

# TODO before the first release: set REPOSITORY to the published GitHub repository. There is no
# public repository yet; this placeholder makes every badge and the Colab install point at it.
REPOSITORY = "https://github.com/transformer-lesson/transformer-lesson"
# The tag that Colab installs and the badges open: the package's version (pyproject.toml).
RELEASE = f"v{__version__}"

BADGE_ID, SETUP_ID = "colab-badge", "colab-setup"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
DRIVE = "/content/drive/MyDrive"
DRIVE_CHECKPOINTS = f"{DRIVE}/transformer-lesson-checkpoints"
LOCAL_CHECKPOINTS = "/content/checkpoints"

_SETUP = '''\
# Google Colab set-up; anywhere else this cell does nothing. The same in every lesson
# (written by `python -m transformer_lesson.colab stamp`).
import sys

if "google.colab" in sys.modules:
    import importlib.metadata
    import os
    import subprocess

    try:
        installed = importlib.metadata.version("transformer-lesson")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != "{version}":
        print("Installing the course ({release})...")
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                              "transformer-lesson @ git+{repository}@{release}"],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError("Installing the course failed:\\n" + pip.stdout + pip.stderr)
        importlib.invalidate_caches()
    import torch

    if not torch.cuda.is_available():
        print("This runtime has no GPU: the lessons run on the CPU, and full-mode training is slow. "
              "To get one: Runtime > Change runtime type > Hardware accelerator: a GPU > Save, "
              "then run this cell again.")
    if os.path.isdir("{drive}"):
        os.environ["TL_CHECKPOINT_DIR"] = "{drive_checkpoints}"
    else:
        os.environ["TL_CHECKPOINT_DIR"] = "{local_checkpoints}"
        print("Checkpoints go to {local_checkpoints}, which is lost when Colab recycles the runtime. "
              "To keep them on Google Drive, run `from google.colab import drive; "
              "drive.mount('/content/drive')`, then this cell again.")
    print("Checkpoints: " + os.environ["TL_CHECKPOINT_DIR"])'''


class ColabError(ValueError):
    """The repository address cannot make a Colab link, or a notebook is not where it should be."""


def github_path() -> str:
    """``owner/name`` of :data:`REPOSITORY` (Colab opens notebooks from GitHub only)."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?", REPOSITORY)
    if match is None:
        raise ColabError(f"REPOSITORY={REPOSITORY!r} is not a GitHub address (https://github.com/OWNER/NAME): "
                         f"Colab opens notebooks from GitHub only.")
    return match.group(1)


def colab_url(notebook: str | Path) -> str:
    """The address that opens ``notebooks/<name>`` at :data:`RELEASE` in Colab."""
    return f"https://colab.research.google.com/github/{github_path()}/blob/{RELEASE}/notebooks/{Path(notebook).name}"


def badge(notebook: str | Path) -> str:
    """The markdown of the "Open in Colab" badge of one notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


# What a student version (``make student``, nbgrader's release) shows instead of the badge: the badge
# opens the source notebook, solutions included, so student versions do not link to it.
STUDENT_NOTE = ("*Student version: the exercises are yours to write. To work on it in Google Colab, upload it "
                "there (File > Upload notebook); the set-up cell below installs the course.*")


def unlink_badge(nb):
    """Replace the badge cell of ``nb`` (in place) by :data:`STUDENT_NOTE`; return ``nb``."""
    for cell in nb.cells:
        if cell.get("id") == BADGE_ID:
            cell.source = STUDENT_NOTE
    return nb


def setup_source() -> str:
    """The source of the setup cell, the same in every notebook."""
    return _SETUP.format(repository=REPOSITORY, release=RELEASE, version=RELEASE.removeprefix("v"),
                         drive=DRIVE, drive_checkpoints=DRIVE_CHECKPOINTS, local_checkpoints=LOCAL_CHECKPOINTS)


def stamp_notebook(path: Path, write: bool = True) -> bool:
    """Put the badge and the setup cell into one notebook; True if it changed (or, unwritten, would).

    Cells found by id are rewritten in place; missing ones go right after the first cell (the
    title). Read, change and write happen at once, so that edits of other cells are not lost.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    wanted = {BADGE_ID: ("markdown", badge(path)), SETUP_ID: ("code", setup_source())}
    changed = False
    position = 1
    for cell_id, (kind, source) in wanted.items():
        found = [index for index, cell in enumerate(nb.cells) if cell.get("id") == cell_id]
        if len(found) > 1:
            raise ColabError(f"{path}: {len(found)} cells have the id {cell_id!r}; delete all but one.")
        if found:
            cell = nb.cells[found[0]]
            if cell.cell_type != kind or cell.source != source:
                new = _new_cell(kind, source, cell_id)
                nb.cells[found[0]] = new
                changed = True
            position = found[0] + 1
        else:
            nb.cells.insert(position, _new_cell(kind, source, cell_id))
            position += 1
            changed = True
    if changed and write:
        nbformat.write(nb, path)
    return changed


def _new_cell(kind: str, source: str, cell_id: str):
    import nbformat

    make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    cell = make(source)
    cell.id = cell_id
    return cell


_README_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+/notebooks/([\w.-]+\.ipynb)")
_README_INSTALL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+@[\w.-]*\w")


def stamp_readme(path: Path, write: bool = True) -> bool:
    """Point the README's Colab links and its install command at :data:`REPOSITORY` and :data:`RELEASE`;
    True if one changed."""
    text = path.read_text()
    new = _README_LINK.sub(lambda match: colab_url(match.group(1)), text)
    new = _README_INSTALL.sub(f"git+{REPOSITORY}@{RELEASE}", new)
    if new != text and write:
        path.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transformer_lesson.colab", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["stamp", "check"],
                        help="stamp: write the badge and the setup cell; check: exit 1 if one is out of date")
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    paths = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        parser.error(f"no lesson notebooks (NN_*.ipynb) in {args.notebooks}")
    write = args.command == "stamp"
    changed = [str(p) for p in paths if stamp_notebook(p, write)]
    if args.readme.is_file() and stamp_readme(args.readme, write):
        changed.append(str(args.readme))
    if write:
        print(f"stamped {len(changed)} file(s) with {REPOSITORY} at {RELEASE}" + "".join(f"\n  {c}" for c in changed))
        return 0
    if changed:
        print("Out of date (run `make colab`):" + "".join(f"\n  {c}" for c in changed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
