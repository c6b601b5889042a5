# Fresh machine: `make demo` or `make test` create the virtual environment, install, and run.
PYTHON ?= python3
VENV ?= venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install install-sim demo test test-sim test-slow lint format clean

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) benchmarks/demo.py

test: install
	$(PY) -m pytest -m "not slow" -n 2 --durations=15 $(PYTEST_ARGS)

# Simulators (ManiSkill3, LIBERO, Mesa 25 Vulkan): not yet part of `make test` (see docs/environments.md).
install-sim: install
	bash scripts/install_sim.sh $(VENV)

test-sim: install-sim
	$(PY) -m pytest tests/test_maniskill.py tests/test_libero.py -n 2 --durations=15 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check sb3_stepnft tests benchmarks examples
	$(PY) -m black --check sb3_stepnft tests benchmarks examples

format: install
	$(PY) -m ruff check --fix sb3_stepnft tests benchmarks examples
	$(PY) -m black sb3_stepnft tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
