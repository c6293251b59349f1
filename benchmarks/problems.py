"""The benchmark suite's problems: small experiments of different character on which dltune's automatic
decisions (pruning, lr-find, --auto) are judged (benchmarks/bench_suite.py).

Each problem is one experiment file with overrides, a search space, the search's trials and epochs (the same
epochs train every run of the problem), the objective the search maximizes on the validation split, the test
metric that judges, and a half-decade lr grid around its default lr. Every run is on the CPU with 1 torch thread;
a full search (every trial to its last epoch) takes at most about 90 s on a 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltune.experiment.config import ExperimentConfig, load_config, override

__all__ = ["PROBLEMS", "Problem", "half_decades"]

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
SEED_MNIST = ROOT / "examples" / "seed_mnist.toml"
OWN_MODEL = ROOT / "examples" / "own_model" / "own_model.toml"
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist"  # the real MNIST test set: 10,000 digits
IMAGES, LABELS = MNIST_TEST / "t10k-images-idx3-ubyte.gz", MNIST_TEST / "t10k-labels-idx1-ubyte.gz"
IDX = {"data.name": "idx", "data.images": str(IMAGES), "data.labels": str(LABELS)}
# every run: 1 thread on the CPU; seed_mnist.toml's ablation variants are of no use here
COMMON = {"ablation.variants": {}, "parallel.threads": 1, "train.device": "cpu"}


def half_decades(lr: float, below: int = 2, above: int = 3) -> list[float]:
    """lr · 10^(k/2) for k = -below .. above: the grid that lr-find's choice is judged against."""
    return [lr * 10 ** (k / 2) for k in range(-below, above + 1)]


@dataclass(frozen=True)
class Problem:
    """One experiment of the suite and how a search over it is set up."""

    name: str
    description: str  # one line
    base: Path  # the experiment file
    settings: dict[str, Any]  # dotted-path overrides of the file
    space: dict[str, Any]  # [search.space]
    trials: int
    epochs: int  # train.epochs of every run: the search's trials, lr-find's trainings, --auto
    grid: list[float]  # lrs at which training is compared with lr-find's choice
    objective: str = "val.accuracy"  # val.r2 for regression
    files: tuple[Path, ...] = field(default=())  # data this problem needs on this machine

    @property
    def metric(self) -> str:
        """The objective's name in an epoch's "val" record and in the test results: accuracy or r2."""
        return self.objective.split(".", 1)[1]

    @property
    def test_metric(self) -> str:
        """The test split's counterpart of the objective, which judges: test.accuracy or test.r2."""
        return "test." + self.metric

    def missing(self) -> list[Path]:
        """The files this problem needs that are not here (then it is skipped)."""
        return [path for path in self.files if not path.exists()]

    def config(self) -> ExperimentConfig:
        """The problem's default experiment, with its [search] section; search.pruner is dltune's default (asha)
        until the caller sets it."""
        search = {"objectives": [self.objective], "sampler": "tpe", "trials": self.trials, "space": self.space}
        return override(load_config(self.base), {**COMMON, **self.settings, "train.epochs": self.epochs,
                                                 "search": search})


ADAM_SPACE = {  # the common knobs of an Adam-trained model
    "optim.lr": {"low": 1e-4, "high": 3e-2, "log": True},
    "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "batch.size": [32, 64, 128, 256],
}
TABLE_MLP = {"model.hidden": [128, 128], "optim.lr": 1e-3, "batch.size": 64}

PROBLEMS: dict[str, Problem] = {p.name: p for p in [
    Problem(
        "mlp-mnist5k", "the reference: MLP 784-500-10 on mnist-5k (its test split is 1,000: 0.1 point per digit)",
        SEED_MNIST, {}, {**ADAM_SPACE, "schedule.name": ["constant", "cosine", "onecycle"],
                         "model.hidden": {"depth": [1, 2], "width": [64, 512], "log": True}},
        trials=16, epochs=10, grid=half_decades(1e-3)),
    Problem(
        "cnn-mnist", "a small CNN (8, 16 channels) on 8,000 of the real MNIST test set's digits, 2,000 of them "
        "for test", SEED_MNIST,
        {**IDX, "data.limit": 8000, "data.test_fraction": 0.25, "model.name": "cnn", "model.channels": [8, 16],
         "model.head": [64]},
        {**ADAM_SPACE, "schedule.name": ["constant", "cosine"], "model.head": [[32], [64], [128]]},
        trials=12, epochs=8, grid=half_decades(1e-3), files=(IMAGES, LABELS)),
    Problem(
        "gru-rows", "a GRU (48 units) reading 6,000 real MNIST digits row by row, 2,100 of them for test",
        SEED_MNIST,
        {**IDX, "data.limit": 6000, "data.test_fraction": 0.35, "model.name": "gru", "model.hidden_size": 48,
         "optim.lr": 3e-3, "batch.size": 64},
        {**ADAM_SPACE, "optim.lr": {"low": 3e-4, "high": 3e-2, "log": True}, "model.hidden_size": [32, 48, 64]},
        trials=12, epochs=12, grid=half_decades(3e-3, below=3, above=2), files=(IMAGES, LABELS)),
    Problem(
        "tabular-class", "an MLP on make_classification: 10,000 rows, 30 features (10 informative), 4 classes, "
        "5% labels flipped; 2,000 for test", SEED_MNIST,
        {**TABLE_MLP, "data.name": "suite_data:classification", "code.paths": [str(HERE)]},
        {**ADAM_SPACE, "model.hidden": {"depth": [1, 3], "width": [32, 512], "log": True}},
        trials=16, epochs=12, grid=half_decades(1e-3)),
    Problem(
        "tabular-regression", "an MLP on make_friedman1: 10,000 rows, 10 features (5 used), noise 1 (r2 <= 0.96); "
        "2,000 for test", SEED_MNIST,
        {**TABLE_MLP, "data.name": "suite_data:regression", "code.paths": [str(HERE)], "loss.name": "auto"},
        {**ADAM_SPACE, "model.hidden": {"depth": [1, 3], "width": [32, 512], "log": True}},
        trials=16, epochs=12, grid=half_decades(1e-3), objective="val.r2"),
    Problem(
        "own-model", "the user's own residual CNN, data, loss and metric (examples/own_model) on all 1,797 "
        "digits, 719 for test", OWN_MODEL,
        {"data.args": {}, "data.test_fraction": 0.4},
        {"optim.lr": {"low": 3e-4, "high": 3e-2, "log": True}, "model.args.channels": [8, 16, 32],
         "model.args.blocks": [1, 2], "model.args.dropout": {"low": 0.0, "high": 0.5}, "batch.size": [32, 64, 128]},
        trials=16, epochs=12, grid=half_decades(3e-3, below=3, above=2)),
    # Early epochs rank this one's configurations backwards: the unregularized ones lead at epoch 1 and memorize the
    # wrong labels later; the slow or regularized ones win at the end. Measured on full TPE searches of 16 trials
    # (pruner none), search seeds 1, 2, 3: Spearman rho(epoch 1, final) -0.69, -0.66, -0.59; rho(epoch 4, final)
    # +0.03, -0.24, -0.02.
    Problem(
        "overfit-late", "a wide MLP on 1,000 real MNIST digits, 40% of all labels wrong: fits the noise after a "
        "few epochs (rho epoch 1 vs final about -0.6); 3,000 for test", SEED_MNIST,
        {"data.name": "suite_data:noisy_labels", "code.paths": [str(HERE)],
         "data.args": {"images": str(IMAGES), "labels": str(LABELS), "flip": 0.4},
         "data.test_fraction": 0.3, "data.val_fraction": 0.3, "data.per_class": 100,  # val, test: 2,100, 3,000
         "model.hidden": [512], "batch.size": 32},
        {"optim.lr": {"low": 3e-5, "high": 3e-3, "log": True}, "model.dropout": {"low": 0.0, "high": 0.8},
         "optim.weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}, "model.hidden": [[64], [256], [1024]]},
        trials=16, epochs=16, grid=half_decades(1e-3, below=3, above=2), files=(IMAGES, LABELS)),
]}
