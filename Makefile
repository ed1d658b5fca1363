# The book's commands. `make book` builds the HTML, `make test` runs every check; both set up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two pytest workers on the 2-core reference machine; one torch thread each.
JOBS ?= 2
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup system-deps data book test lint lab execute student clean lock

help:
	@echo "make book     set up (.venv, data, system packages) and build the HTML book into _build/html"
	@echo "make test     set up and run the whole test suite (ruff, unit tests, nbval, book build, browser)"
	@echo "make lab      open the chapters in JupyterLab"
	@echo "make execute  re-run chapters and refresh outputs and twins (CHAPTER=NN for one)"
	@echo "make student  write student notebooks to _build/student (CHAPTER=NN for one)"
	@echo "make clean    remove build outputs and caches (keeps .venv and data/cache)"

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

system-deps:
	@bash tools/system_deps.sh $(if $(REQUIRE_SYSTEM),--require,)

data: $(STAMP)
	$(PY) -m arlib.data fetch

setup: system-deps $(STAMP) data

book: setup
	$(PY) tools/book.py build

lint: $(STAMP)
	$(PY) -m ruff check arlib tests tools benchmarks chapters

test: REQUIRE_SYSTEM = 1
test: setup lint
	MPLBACKEND=Agg ARLIB_OFFLINE=1 ARLIB_THREADS=1 ARLIB_TIMING_ASSERTS=0 $(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax tests $$($(PY) tools/book.py notebooks)

# The repository is JupyterLab's root (the chapters' diagrams are under figures/) and its file browser opens on
# chapters/; tools/lab/overrides.json holds the book's settings (no first-run news prompt). tests/test_lab.py
# starts JupyterLab with these arguments.
LAB_ARGS := --ServerApp.root_dir=. --ContentsManager.preferred_dir=chapters --LabApp.app_settings_dir=tools/lab

lab: setup
	$(VENV)/bin/jupyter lab $(LAB_ARGS) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

execute: setup
	$(PY) tools/execute.py $(if $(CHAPTER),--chapter $(CHAPTER),)

student: $(STAMP)
	$(PY) tools/classroom.py student $(if $(CHAPTER),--chapter $(CHAPTER),)

lock:
	rm -rf /tmp/arlib-lock-venv && $(PYTHON) -m venv /tmp/arlib-lock-venv
	/tmp/arlib-lock-venv/bin/pip install --quiet torch==2.13.0 -e ".[book,test]"
	@echo "review, then copy: /tmp/arlib-lock-venv/bin/pip freeze --exclude-editable > requirements.lock"

clean:
	rm -rf _build .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path "./.venv/*" -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -not -path "./.venv/*" -prune -exec rm -rf {} +
