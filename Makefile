# Two commands: `make lab` to learn, `make test` to check everything (quick mode).
# Both create .venv if it is missing and install the course into it; run again, they do nothing new.

comma  := ,
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dev
LAB_ARGS ?=
JOBS   ?= 2
COURSE ?= build/course
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install lab test lint unit notebooks student validate course strip colab clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "transformer-lesson needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

# As root (a container, a cloud VM) JupyterLab refuses to start without --allow-root.
lab: install
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/

lint: install
	$(VENV)/bin/ruff check $(wildcard transformer_lesson tests notebooks benchmarks)

unit: install
	TL_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest tests

notebooks: install
	TL_CHECKPOINT_DIR=$$(mktemp -d) TL_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=600 -p no:cacheprovider notebooks

# Each test run gets a fresh checkpoint folder, so no notebook resumes from an earlier run.
# JOBS pytest-xdist workers (a whole test module or notebook each; tests/conftest.py), one torch
# thread each so that they do not fight over the cores. JOBS=0 runs everything in one process.
test: lint
	TL_CHECKPOINT_DIR=$$(mktemp -d) TL_QUICK=1 MPLBACKEND=Agg $(if $(filter 0,$(JOBS)),,OMP_NUM_THREADS=1) $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --durations=15 -n $(JOBS)

student: install
	$(PY) -m transformer_lesson.exercises student --source notebooks --out build/student

validate: install
	$(PY) -m transformer_lesson.exercises validate --source notebooks

# An nbgrader course folder in $(COURSE) with the notebooks as assignment "lessons", and its release
# versions (docs/instructors.md). `make clean` deletes build/: for a real course, set COURSE outside it.
course:
	$(MAKE) install EXTRAS=dev,instructor
	$(PY) -m transformer_lesson.exercises course $(COURSE) --source notebooks
	cd $(COURSE) && $(abspath $(VENV))/bin/nbgrader generate_assignment lessons --force

# The oldest torch that pyproject admits (torch>=2.4), in a virtual environment of its own: unit tests
# and every notebook in quick mode. Not part of CI: PyPI's Linux build of torch 2.4.0 is a CUDA build
# of about 3.5 GB. Run it by hand before a release (the README records the last run).
OLDEST_TORCH ?= 2.4.0
OLD_VENV     := build/venv-torch-$(OLDEST_TORCH)
oldest-torch:
	@test -x $(OLD_VENV)/bin/python || $(PYTHON) -m venv $(OLD_VENV)
	$(OLD_VENV)/bin/python -m pip install --quiet torch==$(OLDEST_TORCH) -e '.[dev]'
	TL_CHECKPOINT_DIR=$$(mktemp -d) TL_QUICK=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(OLD_VENV)/bin/python -m pytest tests notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600 -n $(JOBS) --ignore=tests/test_browser.py --ignore=tests/test_install.py

strip: install
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

# The Colab badge and setup cell of every notebook, and the README's badges, from transformer_lesson/colab.py.
colab: install
	$(PY) -m transformer_lesson.colab stamp --notebooks notebooks --readme README.md

clean:
	rm -rf build .pytest_cache .ruff_cache
