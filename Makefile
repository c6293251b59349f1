# The two commands of the README's Quick start: `make demo` and `make test`.
# `make demo` installs dltune with its core dependencies into .venv (`-e .`, no extra); `make test` adds the test tools
# (pytest, pytest-xdist, hypothesis, playwright, optuna-dashboard), the lint tools (ruff, mypy and the stubs it reads)
# and every extra (`all`: torch-pruning and ONNX for compress, psycopg for PostgreSQL, mlflow and tensorboard for
# tracking, Ray Tune for --backend ray), so that the tests run them for real. Both install with -c constraints.txt, the
# tested releases. Each creates .venv if needed and installs again when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed-dltune
INSTALLED_TEST := $(VENV)/.installed-test
WITH_TESTS := dltune with its test tools (pytest, pytest-xdist, hypothesis, playwright, optuna-dashboard), lint tools (ruff, mypy) and all its extras (compress: torch-pruning, onnx; postgres: psycopg; tracking: mlflow, tensorboard; ray)
# creates .venv, or says that it updates it
VENV_READY = if test -x $(VENV)/bin/python; then echo "updating $(VENV): $(1) ..."; \
	else echo "creating $(VENV) and installing $(1); the first time takes about a minute ..." && $(PYTHON) -m venv $(VENV); fi

.PHONY: demo test lint stress docs-check bench clean

$(INSTALLED): pyproject.toml constraints.txt
	@$(call VENV_READY,dltune and its dependencies)
	@$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e .
	@touch $@
	@echo "installed dltune in $(VENV)"

$(INSTALLED_TEST): pyproject.toml constraints.txt
	@$(call VENV_READY,$(WITH_TESTS))
	@$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,lint,all]'
	@touch $@ $(INSTALLED)
	@echo "installed dltune and its test tools in $(VENV)"

demo: $(INSTALLED)
	$(VENV)/bin/dltune ablate examples/seed_mnist.toml --seeds 3 --out runs/seed_mnist-ablation

# the test files on TEST_PROCESSES processes (pytest-xdist; a file's tests stay together, in one process)
TEST_PROCESSES ?= 2
test: $(INSTALLED_TEST)
	$(VENV)/bin/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile --durations=20

# ruff (pyflakes, pycodestyle, isort, bugbear) and mypy on src/, as pyproject.toml configures them; fails on any finding
lint: $(INSTALLED_TEST)
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy

# the long reliability campaigns that make test leaves out (pytest -m stress: kills at many moments, a long
# fuzzing run, memory over a 200-trial search, load of 4 workers x 200 trials); see the README's "Reliability".
# -rP prints what each campaign measured (where the kills landed, the peak RSS, the trials per minute)
stress: $(INSTALLED_TEST)
	DLTUNE_STRESS=1 HYPOTHESIS_PROFILE=nightly $(VENV)/bin/python -m pytest -q -rP -m stress --durations=0 -p no:cacheprovider

# reruns every command the README and docs quote, and the numbers they quote, and fails where one no longer matches
docs-check: $(INSTALLED)
	$(VENV)/bin/python tools/docs_check.py

bench: $(INSTALLED)
	$(VENV)/bin/python benchmarks/bench_loop.py
	$(VENV)/bin/python benchmarks/bench_jobs.py
	$(VENV)/bin/python benchmarks/bench_startup.py

clean:
	rm -rf $(VENV) runs
