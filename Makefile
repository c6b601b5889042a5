# Fresh machine: `make demo` or `make test` create the virtual environment, install, and run.
# `make test` and `make demo` include the simulators (ManiSkill3, LIBERO) and their system packages (Mesa 25 Vulkan,
# EGL/OSMesa, zstd: apt, as root), installed by scripts/install_sim.sh (docs/environments.md).
PYTHON ?= python3
VENV ?= venv
PY := $(VENV)/bin/python
# Every pip install runs with the constraints file: torch stays at the CPU build installed first (torch==2.13.0).
PIP := $(PY) -m pip install -c constraints.txt
PYTEST_ARGS ?=

.PHONY: install install-sim demo demo-pointreach test test-sim test-slow lint format clean

$(VENV)/.installed: setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev,vla]"
	touch $@

install: $(VENV)/.installed

# The simulators. install_sim.sh keeps its own stamp ($(VENV)/.sim_installed) and is idempotent; this stamp only
# saves make from re-running it when nothing it depends on changed. All installation and asset set-up lives in
# scripts/ (install_sim.sh: apt, pip, the planner overlay venv; setup_libero_assets.py: LIBERO config + assets), none
# in the importable package.
$(VENV)/.sim-ready: $(VENV)/.installed scripts/install_sim.sh scripts/setup_libero_assets.py constraints.txt setup.py
	bash scripts/install_sim.sh $(VENV)
	touch $@

install-sim: $(VENV)/.sim-ready

# Few-shot pretraining from motion-planned demonstrations on ManiSkill PushCube (state), then StepNFT (~7 min).
# The demos write to runs/<name>/ (git-ignored); `$(PY) benchmarks/demo_maniskill.py --out benchmarks/results`
# regenerates the tracked result files. One torch thread per process (SB3_STEPNFT_TORCH_THREADS overrides).
demo: install-sim
	$(PY) benchmarks/demo_maniskill.py

# The original demo: PointReach, pretraining + StepNFT next to SB3 PPO from scratch (~1 min; no simulator needed).
demo-pointreach: install
	$(PY) benchmarks/demo.py

test: install-sim
	$(PY) -m pytest -m "not slow" -n 2 --durations=15 $(PYTEST_ARGS)

# Only the simulator tests.
test-sim: install-sim
	$(PY) -m pytest -m sim -n 2 --durations=15 $(PYTEST_ARGS)

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
