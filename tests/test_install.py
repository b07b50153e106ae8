"""The course as a plain package: the wheel holds every module and the corpus, the package finds its
corpus installed and in a checkout, and (the slow `install` test) lessons run from a fresh virtual
environment outside the checkout, with Colab's ipywidgets 7."""

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from transformer_lesson.data import CorpusError

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "transformer_lesson"
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "transformer_lesson", "data"]
TORCH = "torch==2.13.0"  # the CPU build, on this machine's disk; a plain `torch` could pull a multi-GB CUDA build
IPYWIDGETS = "ipywidgets==7.7.1"  # Colab's; the development environment has ipywidgets 8
LESSONS = ["00_welcome.ipynb", "04_scaled_dot_product_attention.ipynb"]  # lesson 04 has a widget


def test_pyproject_lists_every_subpackage_and_maps_the_corpus():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    subpackages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")
                   if "__pycache__" not in p.parts}
    assert set(setuptools["packages"]) == subpackages | {"transformer_lesson._data"}, \
        "pyproject.toml: [tool.setuptools] packages must list every subpackage of transformer_lesson"
    assert setuptools["package-dir"] == {"transformer_lesson._data": "data"}
    assert not (PACKAGE / "_data").exists(), "the corpus lives in data/ only; the build copies it"


def load_data_module(package: Path):
    """transformer_lesson/data.py as if it were imported from `package` (its data_dir() looks around it)."""
    package.mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE / "data.py", package / "data.py")
    spec = importlib.util.spec_from_file_location("copied_data", package / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_corpus_is_found_installed_and_in_a_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_DATA_DIR", raising=False)
    installed = load_data_module(tmp_path / "site-packages" / "transformer_lesson")
    (tmp_path / "site-packages" / "transformer_lesson" / "_data").mkdir()
    (tmp_path / "site-packages" / "data").mkdir()  # another distribution's top-level "data": not ours
    assert installed.data_dir() == tmp_path / "site-packages" / "transformer_lesson" / "_data"

    checkout = load_data_module(tmp_path / "checkout" / "transformer_lesson")
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    (tmp_path / "checkout" / "data").mkdir()
    assert checkout.data_dir() == tmp_path / "checkout" / "data"


def test_a_missing_corpus_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("TL_DATA_DIR", raising=False)
    installed = load_data_module(tmp_path / "site-packages" / "transformer_lesson")
    (tmp_path / "site-packages" / "data").mkdir()
    with pytest.raises(installed.CorpusError, match=r"installed without it .*_data is missing\)\. To fix it, "
                       r"reinstall the course with `pip install --force-reinstall \"transformer-lesson @ git\+https://"):
        installed.data_dir()
    checkout = load_data_module(tmp_path / "checkout" / "transformer_lesson")
    (tmp_path / "checkout" / "pyproject.toml").write_text("")
    with pytest.raises(checkout.CorpusError, match=r"checkout/data is missing\. To fix it, restore it with "
                                          r"`git checkout -- data` in .*checkout, or set TL_DATA_DIR"):
        checkout.data_dir()


def test_tl_data_dir_naming_no_folder_says_so(tmp_path, monkeypatch):
    from transformer_lesson.data import data_dir, load_multi30k

    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(CorpusError, match=r"^TL_DATA_DIR=.*nowhere names no folder\. Point it at a folder that "
                                          r"holds multi30k/ .* or unset it"):
        load_multi30k("val")
    monkeypatch.setenv("TL_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path


def copy_sources(to: Path) -> Path:
    """The files a build reads, copied from the working tree (uncommitted changes included)."""
    to.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, to / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, to / name)
    return to


def run(command, **kwargs):
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


RUNNER = """\
import json, sys
import nbformat
from nbclient import NotebookClient

PROBE = '''import json, sys
import ipywidgets, torch, transformer_lesson
from transformer_lesson.data import data_dir
from transformer_lesson.runtime import checkpoint_dir
# a lesson's explorer (plotting.explore): choosing another query in its menu must redraw its image
shown = list((getattr(ipywidgets.widgets.widget, "_instances", None) or ipywidgets.Widget.widgets).values())
menus, images = ([w for w in shown if isinstance(w, kind)] for kind in (ipywidgets.Dropdown, ipywidgets.Image))
redrawn = None
if menus and images:
    before, menu = images[-1].value, menus[-1]
    menu.value = next(value for _, value in menu.options if value != menu.value)
    redrawn = images[-1].value != before
print(json.dumps({"python": sys.executable, "package": transformer_lesson.__file__, "data": str(data_dir()),
                  "checkpoints": str(checkpoint_dir()), "ipywidgets": ipywidgets.__version__,
                  "torch": torch.__version__, "redrawn": redrawn}))'''
for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), path + ": a cell did not run"
    print("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream" and o.name == "stdout"), end="")
"""


@pytest.mark.install
def test_the_wheel_runs_lessons_in_a_fresh_environment_outside_the_checkout(tmp_path):
    """Build the wheel, install it with the CPU torch and ipywidgets 7.7.1 into a new virtual environment
    in a temporary folder, and run lessons 00 and 04 in quick mode there with nbclient."""
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    source = copy_sources(tmp_path / "source")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", tmp_path / "dist", source])
    (wheel,) = (tmp_path / "dist").glob("transformer_lesson-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"transformer_lesson/" + str(p.relative_to(source / "transformer_lesson"))
                for p in (source / "transformer_lesson").rglob("*.py")}
    expected |= {"transformer_lesson/_data/" + str(p.relative_to(source / "data"))
                 for p in (source / "data").rglob("*") if p.is_file()}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert {"transformer_lesson/_data/multi30k/SOURCE.md", "transformer_lesson/_data/tatoeba-deu-eng/SOURCE.md",
            "transformer_lesson/_data/README.md"} <= names  # the corpora's terms and attribution travel with them
    built = time.perf_counter()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    # pip from this environment installs into the new one; its cache is reused, nothing is compiled ahead
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile"]
    run([*pip, TORCH, wheel, "ipykernel", "nbclient"])
    # Then Colab's ipywidgets in place of the ipywidgets 8 that came with the wheel. Its own requirement,
    # widgetsnbextension 3.6, is the classic notebook's front end (it would pull in the notebook server);
    # the kernel side, which is what the course runs, needs ipython_genutils besides what is there.
    run([*pip, "--no-deps", IPYWIDGETS, "ipython_genutils"])
    installed = time.perf_counter()

    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TL_", "PYTHON", "JUPYTER", "VIRTUAL_ENV"))}
    env.update(TL_QUICK="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}",
               TL_CACHE_DIR=str(tmp_path / "cache"),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter"))  # no kernel of another environment is found
    (work / "run.py").write_text(RUNNER)
    out = run([python, "run.py", *[ROOT / "notebooks" / lesson for lesson in LESSONS]], cwd=work, env=env,
              timeout=600)
    probes = [json.loads(line) for line in out.splitlines()]
    assert len(probes) == len(LESSONS), out
    for probe in probes:
        assert Path(probe["python"]).parent == venv / "bin"
        assert Path(probe["package"]).is_relative_to(venv), "the kernel imported the checkout, not the wheel"
        assert Path(probe["data"]) == Path(probe["package"]).parent / "_data"
        assert Path(probe["checkpoints"]) == work / "checkpoints", "installed: checkpoints/ in the current folder"
        assert probe["ipywidgets"] == IPYWIDGETS.split("==")[1] and probe["torch"].startswith("2.13.0")
    assert [probe["redrawn"] for probe in probes] == [None, True], "lesson 04's explorer did not redraw"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(f"wheel built in {built - started:.1f} s, installed in {installed - built:.1f} s, {len(LESSONS)} lessons "
          f"run in {time.perf_counter() - installed:.1f} s; {cpu:.0f} CPU s in subprocesses")
