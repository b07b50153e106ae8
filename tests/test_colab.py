"""Colab: every lesson opens with its badge and the one setup cell that `transformer_lesson.colab` writes;
the cell does nothing outside Colab, and on Colab installs the course at the release, asks for a GPU
and keeps checkpoints on Google Drive."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import nbformat
import pytest

from transformer_lesson import __version__, colab

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = ROOT / "README.md"


def test_the_release_is_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == version, "transformer_lesson/__init__.py: __version__ must match pyproject.toml"
    assert colab.RELEASE == f"v{version}"
    assert colab.REPOSITORY.startswith("https://github.com/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_lesson_opens_with_its_badge_and_the_setup_cell(path):
    cells = nbformat.read(path, 4).cells
    title, badge, setup = cells[:3]
    assert title.cell_type == "markdown" and title.source.startswith(f"# Lesson {path.name[:2]}")
    assert (badge.id, badge.cell_type, setup.id, setup.cell_type) == ("colab-badge", "markdown", "colab-setup", "code")
    url = f"https://colab.research.google.com/github/{colab.github_path()}/blob/{colab.RELEASE}/notebooks/{path.name}"
    assert badge.source == f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"
    assert setup.source == colab.setup_source(), f"{path.name}: the setup cell is out of date: run `make colab`"
    assert f"git+{colab.REPOSITORY}@{colab.RELEASE}" in setup.source
    assert sum(c.get("id") in ("colab-badge", "colab-setup") for c in cells) == 2
    assert "nbgrader" not in badge.metadata and "nbgrader" not in setup.metadata


def test_the_notebooks_and_the_readme_are_stamped(capsys):
    code = colab.main(["check", "--notebooks", str(ROOT / "notebooks"), "--readme", str(README)])
    assert code == 0, capsys.readouterr().out


def test_a_new_address_or_tag_needs_stamping_again(tmp_path, monkeypatch):
    shutil.copy(NOTEBOOKS[0], tmp_path / NOTEBOOKS[0].name)
    shutil.copy(README, tmp_path / "README.md")
    published = colab.REPOSITORY
    monkeypatch.setattr(colab, "REPOSITORY", "https://github.com/someone/fork")
    monkeypatch.setattr(colab, "RELEASE", "v9.9")
    check = ["check", "--notebooks", str(tmp_path), "--readme", str(tmp_path / "README.md")]
    assert colab.main(check) == 1
    assert colab.main(["stamp", *check[1:]]) == 0
    assert colab.main(check) == 0
    stamped = nbformat.read(tmp_path / NOTEBOOKS[0].name, 4)
    assert "git+https://github.com/someone/fork@v9.9" in stamped.cells[2].source
    readme = (tmp_path / "README.md").read_text()
    assert "github/someone/fork/blob/v9.9/notebooks/00_welcome.ipynb" in readme
    assert "git+https://github.com/someone/fork@v9.9" in readme and published not in readme
    monkeypatch.setattr(colab, "REPOSITORY", "https://gitlab.com/someone/fork")
    with pytest.raises(colab.ColabError, match="not a GitHub address"):
        colab.badge("00_welcome.ipynb")


def test_stamping_inserts_after_the_title_keeps_other_cells_and_is_idempotent(tmp_path):
    original = nbformat.read(NOTEBOOKS[0], 4)
    original.cells = [c for c in original.cells if c.id not in ("colab-badge", "colab-setup")]
    path = tmp_path / "00_welcome.ipynb"
    nbformat.write(original, path)
    assert colab.stamp_notebook(path)
    stamped = nbformat.read(path, 4)
    assert [c.id for c in stamped.cells] == [original.cells[0].id, "colab-badge", "colab-setup",
                                             *(c.id for c in original.cells[1:])]
    assert [c for c in stamped.cells if c.id not in ("colab-badge", "colab-setup")] == original.cells
    written = path.read_bytes()
    assert not colab.stamp_notebook(path) and path.read_bytes() == written
    # a setup cell that someone edited is put back in place, not duplicated
    stamped.cells[2].source += "\nprint('edited')"
    nbformat.write(stamped, path)
    assert colab.stamp_notebook(path) and path.read_bytes() == written


def test_the_setup_cell_does_nothing_outside_colab():
    """Run in a fresh interpreter, with every way of starting a process (pip) made to fail."""
    script = textwrap.dedent("""
        import os, subprocess, sys
        def refuse(*args, **kwargs):
            raise AssertionError(f"the setup cell started a process: {args}")
        subprocess.run = subprocess.Popen = subprocess.call = subprocess.check_call = os.system = refuse
        environment, modules, path = dict(os.environ), set(sys.modules), list(sys.path)
        exec(sys.stdin.read(), {})
        assert dict(os.environ) == environment, "the environment changed"
        assert set(sys.modules) == modules, f"imported {set(sys.modules) - modules}"
        assert sys.path == path
    """)
    result = subprocess.run([sys.executable, "-c", script], input=colab.setup_source(), capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if k != "TL_CHECKPOINT_DIR"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


class FakeColab:
    """What the setup cell sees on Colab: the google.colab module, pip, the GPU and a Drive folder."""

    def __init__(self, monkeypatch, installed=None, gpu=False, drive=False, pip_fails=False):
        import torch

        self.calls = []
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        monkeypatch.setenv("TL_CHECKPOINT_DIR", "unchanged")

        def run(command, **kwargs):
            self.calls.append(command)
            return subprocess.CompletedProcess(command, 1 if pip_fails else 0, "", "ERROR: no such tag")

        def version(name):
            if installed is None or name != "transformer-lesson":
                raise importlib.metadata.PackageNotFoundError(name)
            return installed

        isdir = os.path.isdir
        monkeypatch.setattr(subprocess, "run", run)
        monkeypatch.setattr(importlib.metadata, "version", version)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        monkeypatch.setattr(os.path, "isdir", lambda p: drive if p == colab.DRIVE else isdir(p))

    def run_cell(self, capsys):
        exec(colab.setup_source(), {})
        return capsys.readouterr().out


def test_on_colab_it_installs_the_release_and_asks_for_a_gpu(monkeypatch, capsys):
    fake = FakeColab(monkeypatch)
    out = fake.run_cell(capsys)
    assert fake.calls == [[sys.executable, "-m", "pip", "install", "--quiet",
                           f"transformer-lesson @ git+{colab.REPOSITORY}@{colab.RELEASE}"]]
    assert "Runtime > Change runtime type > Hardware accelerator: a GPU > Save, then run this cell again" in out
    assert os.environ["TL_CHECKPOINT_DIR"] == "/content/checkpoints"
    assert "drive.mount('/content/drive')" in out


def test_on_colab_with_a_gpu_drive_and_the_course_installed(monkeypatch, capsys):
    fake = FakeColab(monkeypatch, installed=colab.RELEASE.removeprefix("v"), gpu=True, drive=True)
    out = fake.run_cell(capsys)
    assert fake.calls == []  # installed already: no pip
    assert os.environ["TL_CHECKPOINT_DIR"] == "/content/drive/MyDrive/transformer-lesson-checkpoints"
    assert out == "Checkpoints: /content/drive/MyDrive/transformer-lesson-checkpoints\n"


def test_on_colab_another_installed_version_is_replaced_and_a_failed_install_says_why(monkeypatch, capsys):
    fake = FakeColab(monkeypatch, installed="0.0.1", pip_fails=True)
    with pytest.raises(RuntimeError, match="Installing the course failed:\nERROR: no such tag"):
        fake.run_cell(capsys)
    assert len(fake.calls) == 1


def test_the_readme_links_each_lesson_to_colab():
    text = README.read_text()
    for path in NOTEBOOKS:
        row = [line for line in text.splitlines() if line.startswith(f"| {path.name[:2]} |")]
        assert len(row) == 1 and f"({colab.colab_url(path)})" in row[0], f"README: {path.stem}'s row needs its badge"
    assert set(re.findall(r"colab\.research\.google\.com/github/\S+?/notebooks/([\w.-]+)\)", text)) == {
        p.name for p in NOTEBOOKS}
    assert "python -m transformer_lesson.colab stamp" in text or "make colab" in text
