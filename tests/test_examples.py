"""Every shipped experiment file loads whole (its ablation plan and search space too); the reference experiment trains
end to end from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dltune.run.checks import check
from dltune.compression import parse_methods
from dltune.experiment.config import load_config
from dltune.study.ablate import plan
from dltune.study.studies import prepare

from conftest import ROOT, run_cli

EXAMPLES = sorted((ROOT / "examples").rglob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_whole(path: Path) -> None:
    config = load_config(path)
    check(config)
    parse_methods(config.compress.methods)  # each [compress] method and chain, as dltune compress reads them
    # every variant and every entry of the space is checked as an ablation or a search checks it before any work
    planned = plan(config)
    assert len(planned) == 1 + len(config.ablation.variants)
    if config.search.space:
        prepared = prepare(config)
        assert sorted(e.path for e in prepared.space.entries) == sorted(config.search.space)
        assert len(prepared.objectives) == len(prepared.directions)


def test_the_examples_hold_an_ablation_and_a_search() -> None:
    # so that the test above validates both, not only the plain sections
    configs = [load_config(p) for p in EXAMPLES]
    assert any(c.ablation.variants for c in configs) and any(c.search.space for c in configs)


def test_seed_mnist_is_the_articles_reference_experiment() -> None:
    c = load_config(ROOT / "examples" / "seed_mnist.toml")
    assert (c.data.name, c.model.name, c.model.hidden, c.model.activation, c.optim.name, c.optim.lr,
            c.batch.size, c.train.epochs, c.loss.name, c.train.seed) == (
        "mnist-5k", "mlp", (500,), "relu", "adam", 1e-3, 100, 10, "cross_entropy", 1)


@pytest.mark.slow
def test_reference_experiment_end_to_end(tmp_path: Path) -> None:
    """The full 10 epochs on mnist-5k, as `make demo` runs it: the article's loop gets 90-93% here."""
    r = run_cli("train", "examples/seed_mnist.toml", "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "completed" and len(doc["epochs"]) == 10
    assert doc["test"]["accuracy"] > 0.9
    assert doc["epochs"][-1]["train"]["loss"] < doc["epochs"][0]["train"]["loss"] / 5
