"""Start-up as invariants, not times: `dltune --help` and every subcommand's --help import no heavy library, and
`dltune train` imports only what training needs (benchmarks/bench_startup.py measures the seconds)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dltune.cli import build_parser

from conftest import ROOT

# What a help text never needs; each costs from a tenth of a second (rich) to over a second (torch, sklearn).
HEAVY = ("torch", "optuna", "sklearn", "scipy", "pandas", "matplotlib", "rich")
# What training the reference experiment does not use: the study, the report's statistics and drawing.
NOT_FOR_TRAIN = ("optuna", "sklearn", "scipy", "pandas", "matplotlib")

# Runs dltune's command line in this fresh process, its output discarded, then prints the modules it holds.
PROBE = """
import contextlib, io, json, sys
from dltune.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
"""


def commands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def modules_after(*args: str) -> set[str]:
    """The top-level packages that a fresh process holds after running `dltune ARGS`."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.parametrize("command", [None, *commands()])
def test_help_imports_no_heavy_library(command: str | None) -> None:
    loaded = modules_after(*([command] if command else []), "--help")
    assert "dltune" in loaded  # the probe ran the command line
    assert sorted(loaded & set(HEAVY)) == []


def test_train_imports_no_study_report_or_scikit_learn(tmp_path: Path) -> None:
    from dltune.experiment.config import load_config
    from dltune.data import load_data

    config = ROOT / "examples" / "seed_mnist.toml"
    load_data(load_config(config).data)  # mnist-5k's first use parses its CSV with pandas, then keeps an .npz
    loaded = modules_after("train", str(config), "--set", "train.epochs=1", "--json", "--out", str(tmp_path / "run"))
    assert {"torch", "dltune"} <= loaded  # it trained
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert sorted(loaded & set(NOT_FOR_TRAIN)) == []


def test_the_package_loads_its_public_names_on_first_use() -> None:
    code = """
import importlib.util
import sys
import dltune
assert "torch" not in sys.modules and "optuna" not in sys.modules, "import dltune loaded a heavy library"
import dltune.compression.run, dltune.ensembles.run, dltune.prediction, dltune.run.loop
from dltune import compress, ensemble, predict, train, tune, load_config, RunResult
# no public name is a module's: importing every module leaves dltune.X the function
assert all(callable(f) and not isinstance(f, type(sys)) for f in (compress, ensemble, predict, train, tune)), \
    (compress, ensemble, predict)
assert train.__module__ == "dltune.tuner.auto", train  # check, find the settings of train.auto, then the loop
assert dltune.train is train and tune.__module__ == "dltune.study.tune"
assert [n for n in dltune.__all__ if importlib.util.find_spec(f"dltune.{n}") is not None] == []
assert set(dltune.__all__) <= set(dir(dltune))
try:
    dltune.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("dltune.no_such_name did not raise")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
