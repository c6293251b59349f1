# The two commands of the README's Quick start: `make demo` and `make test`.
# Each creates or updates .venv when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dltune ablate examples/seed_mnist.toml --seeds 3 --out runs/seed_mnist-ablation

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_loop.py
	$(VENV)/bin/python benchmarks/bench_jobs.py

clean:
	rm -rf $(VENV) runs
