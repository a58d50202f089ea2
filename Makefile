# vae_dynamics — the commands a user types.
#   make install   create .venv and install the project (editable) with all its extras and the dev tools
#   make docs      build the documentation site -> site/ (mkdocs --strict)
#   make test      run the whole test suite (installs first if needed)
#   make lint      ruff check + ruff format --check + snakemake --lint
#   make demo      run the whole Snakemake workflow on the embedded demo dataset (CPU, < 10 min)
#   make bench     CPU benchmarks -> bench/results/cpu.json
#   make bench-gpu-learning  the real 128³ Exp2 for thousands of steps on one GPU, the shipped start and
#                        the ladder's best -> bench/results/gpu_learning.json (~8 min on an H200)
#   make bench-learning  the Exp2 learning study -> bench/results/learning.json, docs/LEARNING.md (~25 min)
#   make bench-ladder    does Exp2 use its code? 32³/64³ proxies for thousands of steps, resumable
#                        -> bench/results/ladder/, bench/results/ladder.json, docs/LEARNING.md (hours)
#   make bench-code-use  the earlier 300-step study at 128³, Exp1 beside it
#                        -> bench/results/code_use.json, docs/LEARNING.md (~80 min on 2 cores)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On a machine without an NVIDIA driver, install the CPU build of torch first, from PyTorch's CPU index,
# so that `torch>=2.4` is already satisfied and pip does not pull a multi-GB CUDA build. The index is an
# extra one: where pip is configured with local wheels, those still serve.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The index is passed only when it answers (evaluated in the install recipe only): offline, pip would
# retry it for every package.
TORCH_INDEX_ARG = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=10)" \
	>/dev/null 2>&1 && echo --extra-index-url "$(TORCH_INDEX)")
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install lock docs test test-fast lint format demo bench bench-gpu bench-gpu-learning bench-learning bench-code-use bench-ladder clean

# LOCK=1 (default): the exact versions of requirements/dev.txt (which includes requirements/runtime.txt),
# then the package without dependencies; LOCK=0: the open ranges of pyproject.toml. .venv/.lock records
# which (tests/test_packaging.py checks it).
LOCK ?= 1

$(BIN)/vae-dynamics: pyproject.toml requirements/runtime.txt requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(HAS_GPU),1)
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARG) "torch==$(TORCH_VERSION)"
endif
ifeq ($(LOCK),1)
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	cat requirements/runtime.txt requirements/dev.txt > $(VENV)/.lock
else
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.lock
endif
	touch $(BIN)/vae-dynamics

install: $(BIN)/vae-dynamics

# Rewrite requirements/runtime.txt and dev.txt from this venv (install it with LOCK=0 first to resolve the
# open ranges): the package's runtime closure (with its workflow, demo, export, slurm and tracker
# extras), and the rest.
lock:
	$(BIN)/python scripts/lock.py

# The documentation site (mkdocs-material, the API reference from the docstrings) -> site/; --strict: a
# broken link or reference fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# In parallel: one single-threaded pytest process per core and one more (the SLURM and Snakemake
# tests spend part of their time waiting for their jobs to be scheduled), each test file in one
# process (its module fixtures built once), in the order tests/conftest.py gives (longest first;
# xdist would otherwise start the files with the most tests first, and the SLURM cluster's 4 tests,
# the longest file, last). PYTEST_ARGS adds options, e.g. PYTEST_ARGS=--durations=25.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || sysctl -n hw.ncpu) + 1 )))
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
PYTEST_ARGS ?=

test: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS) -m "not slow and not slurm"

# ruff, the type check (pyproject.toml's [tool.mypy]), the Snakemake formatter and Snakemake's own lint;
# .pre-commit-config.yaml runs the same tools before each commit (README, Development).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint --cores 1

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules/

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores 2 --configfile config/demo.yaml -- results/exp2/done

bench: install
	$(BIN)/python bench/run_cpu.py --out bench/results/cpu.json

bench-gpu: install
	$(BIN)/python bench/run_gpu.py --out bench/results/gpu.json

bench-gpu-learning: install
	$(BIN)/python bench/gpu_learning.py --out bench/results/gpu_learning.json

bench-learning: install
	$(BIN)/python bench/learning.py --out bench/results/learning.json

# The arms run in parallel, one single-threaded process per core (1.5x the throughput of one
# process with two threads on 2 cores), then their rows are joined and the docs redrawn.
# CODE_USE_ARGS adds options, e.g. CODE_USE_ARGS="--steps 60".
CODE_USE_ARGS ?=
# One single-threaded worker per core works through the study's job queue (bench/ladder.py), then the
# report is redrawn. Interrupted, it continues where it stopped; LADDER_ARGS e.g. --only 'arm-*-32-s0'.
LADDER_ARGS ?=
bench-ladder: install
	$(BIN)/python bench/ladder.py run $(LADDER_ARGS)
	$(BIN)/python bench/ladder.py report

bench-code-use: install
	mkdir -p bench/results
	OMP_NUM_THREADS=1 $(BIN)/python bench/code_use.py --arms exp2_shipped exp2_issue26_start \
	  --workers 1 --no-doc --out bench/results/code_use.a.tmp $(CODE_USE_ARGS) & \
	OMP_NUM_THREADS=1 $(BIN)/python bench/code_use.py --arms exp1 exp2_plain \
	  --workers 1 --no-doc --out bench/results/code_use.b.tmp $(CODE_USE_ARGS); b=$$?; wait $$! && test $$b = 0
	$(BIN)/python bench/code_use.py --merge bench/results/code_use.a.tmp bench/results/code_use.b.tmp \
	  --out bench/results/code_use.json
	rm -f bench/results/code_use.a.tmp bench/results/code_use.b.tmp

clean:
	rm -rf results .snakemake
