"""Each loss against torch.nn.functional or a hand computation; class weights and thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from dltune import train
from dltune.errors import ConfigError
from dltune.experiment.config import load_config
from dltune.experiment.sections import LossConfig
from dltune.run.metrics import choose_threshold, evaluate
from dltune.techniques.losses import LossContext, build_loss, class_weights, focal_loss

torch.manual_seed(0)
LOGITS = torch.randn(12, 3)
LABELS = torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1, 2, 0, 0])
COUNTS = np.array([6, 3, 3])


def test_articles_binary_cross_entropy_example_is_0_223_not_minus_0_229() -> None:
    """§4.2: p = 0.8, y = 1: −[1·log 0.8 + 0·log 0.2] = 0.223 (the article prints −0.229)."""
    loss = F.binary_cross_entropy(torch.tensor([0.8]), torch.tensor([1.0]))
    assert round(loss.item(), 3) == round(-math.log(0.8), 3) == 0.223
    fn, _ = build_loss(LossConfig(name="bce"), LossContext("binary"))
    logit = torch.log(torch.tensor([[0.8 / 0.2]]))  # sigmoid(logit) = 0.8
    assert fn(logit, torch.tensor([1])).item() == pytest.approx(-math.log(0.8), rel=1e-6)


def test_cross_entropy_with_weights_and_smoothing_is_torchs() -> None:
    cfg = LossConfig(name="cross_entropy", class_weights=(1.0, 2.0, 0.5), label_smoothing=0.1)
    fn, _ = build_loss(cfg, LossContext("classification", COUNTS))
    expected = F.cross_entropy(LOGITS, LABELS, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    assert fn(LOGITS, LABELS).item() == pytest.approx(expected.item(), rel=1e-6)


def test_balanced_weights_are_scikit_learns() -> None:
    w = class_weights(LossConfig(class_weights="balanced"), LossContext("classification", COUNTS))
    labels = np.repeat([0, 1, 2], COUNTS)
    assert w.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=labels).tolist())
    assert w.tolist() == pytest.approx([12 / 18, 12 / 9, 12 / 9])


def test_bce_with_pos_weight_is_torchs() -> None:
    fn, loss = build_loss(LossConfig(name="bce", pos_weight=3.0), LossContext("binary", np.array([5, 5])))
    assert loss.single_logit
    logits, y = torch.randn(8, 1), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    expected = F.binary_cross_entropy_with_logits(logits.squeeze(1), y.float(), pos_weight=torch.tensor(3.0))
    assert fn(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_focal_by_hand() -> None:
    # one example with p_t = 0.8, gamma 2: −(1 − 0.8)² · log 0.8 = 0.04 · 0.2231 = 0.008926
    logits = torch.log(torch.tensor([[0.2, 0.8]]))
    assert focal_loss(logits, torch.tensor([1]), gamma=2.0).item() == pytest.approx(0.04 * -math.log(0.8), rel=1e-5)
    assert focal_loss(logits, torch.tensor([1]), gamma=2.0, alpha=0.25).item() == pytest.approx(
        0.25 * 0.04 * -math.log(0.8), rel=1e-5)
    # gamma 0 is cross-entropy, weights included
    weight = torch.tensor([1.0, 2.0, 0.5])
    assert focal_loss(LOGITS, LABELS, 0.0, weight=weight).item() == pytest.approx(
        F.cross_entropy(LOGITS, LABELS, weight=weight).item(), rel=1e-6)


@pytest.mark.parametrize(("name", "reference"), [
    ("mse", F.mse_loss), ("mae", F.l1_loss), ("huber", lambda a, b: F.huber_loss(a, b, delta=0.5))])
def test_regression_losses_are_torchs(name: str, reference) -> None:
    cfg = LossConfig(name=name, huber_delta=0.5) if name == "huber" else LossConfig(name=name)
    fn, _ = build_loss(cfg, LossContext("regression"))
    out, y = torch.randn(10, 1) * 2, torch.randn(10)
    assert fn(out, y).item() == pytest.approx(reference(out.squeeze(1), y).item(), rel=1e-6)


def test_threshold_on_a_known_example() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])  # 0.35 separates the classes; 0.5 misses one
    for rule in ("f1", "youden", "balanced_accuracy"):
        assert choose_threshold(rule, y, p) == pytest.approx(0.35)
    logits = torch.log(torch.tensor(p / (1 - p), dtype=torch.float32))[:, None]
    assert evaluate("binary", logits, torch.tensor(y))["accuracy"] == pytest.approx(5 / 6)
    assert evaluate("binary", logits, torch.tensor(y), threshold=0.35)["accuracy"] == 1.0


def test_threshold_is_chosen_on_val_and_applied_to_test() -> None:
    cfg = load_config({"data": {"name": "breast-cancer"}, "model": {"hidden": [16]}, "train": {"epochs": 5},
                       "loss": {"name": "bce", "threshold": "f1"}})
    run = train(cfg)
    assert run.threshold is not None and 0 < run.threshold < 1
    from dltune.data import load_data

    x, y = load_data(cfg.data).test
    run.model.eval()
    with torch.no_grad():
        p = torch.sigmoid(run.model(x)[:, 0]).numpy()
    assert run.test["accuracy"] == pytest.approx(float(np.mean((p >= run.threshold) == y.numpy())))
    assert run.to_dict()["threshold"] == run.threshold


def test_class_weights_change_what_is_learned() -> None:
    base = {"data": {"name": "breast-cancer"}, "model": {"hidden": [16]}, "train": {"epochs": 3}}
    plain = train(load_config(base))
    weighted = train(load_config({**base, "loss": {"name": "cross_entropy", "class_weights": [10.0, 1.0]}}))
    assert plain.epochs[0]["train"]["loss"] != weighted.epochs[0]["train"]["loss"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"loss": {"name": "bce"}}, "loss.name: bce does not fit a classification task; use one of: auto, cross_entropy, focal"),
    ({"data": {"name": "diabetes"}, "loss": {"name": "cross_entropy"}}, "loss.name: cross_entropy does not fit a regression task"),
    ({"data": {"name": "diabetes"}, "loss": {"name": "focal"}}, "loss.name: focal does not fit a regression task"),
    ({"loss": {"name": "mse"}}, "loss.name: mse does not fit a classification task"),
    ({"loss": {"name": "cross_entropy", "pos_weight": 2.0}}, "loss.pos_weight: applies to bce, not to cross_entropy"),
    ({"loss": {"name": "focal", "alpha": 0.25}}, "loss.alpha: weighs the positive class of a binary task"),
    ({"loss": {"class_weights": [1.0, 2.0]}}, "loss.class_weights: 2 weights for 10 classes"),
    ({"loss": {"threshold": "f1"}}, "loss.threshold: a decision threshold needs a binary task"),
    ({"loss": {"name": "hinge"}}, "loss.name: unknown loss 'hinge'; known: bce, cross_entropy, focal"),
])
def test_incompatible_losses_are_rejected_before_training(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(load_config({"data": {"limit": 300}, **settings}))
