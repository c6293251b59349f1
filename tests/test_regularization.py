"""Penalties, decoupled decay, DropConnect, augmentation, early stopping and clipping, against references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dltune import train
from dltune.data import load_data
from dltune.errors import ConfigError
from dltune.experiment.config import load_config
from dltune.experiment.sections import RegularizationConfig
from dltune.techniques.augment import build_augment
from dltune.techniques.regularization import (
    DropConnectLinear,
    EarlyStopping,
    apply_dropconnect,
    build_penalty,
    clip_gradients,
    decay_weights,
    penalized_weights,
)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_articles_total_loss_is_data_loss_plus_l2_term() -> None:
    """§4.4: L_total = L + λ·Σw² (weights only here; biases are not penalized by default)."""
    model, lam = _mlp(), 0.01
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    data_loss = F.cross_entropy(model(x), y)
    weights = [model[0].weight, model[2].weight]
    penalty = build_penalty(RegularizationConfig(l2=lam), model)
    assert penalty().item() == pytest.approx(lam * sum((w**2).sum() for w in weights).item(), rel=1e-6)
    every = build_penalty(RegularizationConfig(l2=lam, penalize_all=True), model)
    assert every().item() == pytest.approx(lam * sum((p**2).sum() for p in model.parameters()).item(), rel=1e-6)
    assert (data_loss + penalty()).item() == pytest.approx(data_loss.item() + penalty().item())
    l1 = build_penalty(RegularizationConfig(l1=lam), model)
    assert l1().item() == pytest.approx(lam * sum(w.abs().sum() for w in weights).item(), rel=1e-6)


def test_articles_weight_decay_is_l2_not_l1() -> None:
    """§5.4.2 calls Adam(weight_decay=wd) "L1"; it adds wd·w to the gradient: the gradient of (wd/2)·Σw², L2."""
    wd = 1e-2
    a, b = _mlp(), _mlp()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, weight_decay=wd)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(3):
        opt_a.zero_grad()
        F.cross_entropy(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        (F.cross_entropy(b(x), y) + wd / 2 * sum((p**2).sum() for p in b.parameters())).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_decoupled_weight_decay_is_adamw() -> None:
    wd, lr = 0.1, 1e-2
    a, b = _mlp(), _mlp()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt_a = torch.optim.AdamW(a.parameters(), lr=lr, weight_decay=wd)
    opt_b = torch.optim.Adam(b.parameters(), lr=lr)
    for _ in range(3):
        opt_a.zero_grad()
        F.cross_entropy(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        decay_weights(list(b.parameters()), opt_b, wd)
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert len(penalized_weights(b)) == 2  # in training only the two weight matrices decay


def test_decoupled_weight_decay_takes_each_parameter_groups_rate() -> None:
    """Layer groups with rates of their own (transfer.lr_mult): each weight decays at its own group's lr, as AdamW
    does per group (the head's rate was used for every group)."""
    wd = 0.1
    a, b = _mlp(), _mlp()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    rates = [1e-4, 1e-2]
    opt_a = torch.optim.AdamW([{"params": m.parameters(), "lr": r} for m, r in zip((a[0], a[2]), rates)],
                              weight_decay=wd)
    opt_b = torch.optim.Adam([{"params": m.parameters(), "lr": r} for m, r in zip((b[0], b[2]), rates)])
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if opt is opt_b:
                decay_weights(list(b.parameters()), opt_b, wd)
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def _near_zero(reg: dict) -> float:
    run = train(load_config({"data": {"name": "breast-cancer"}, "model": {"hidden": [32]}, "optim": {"lr": 1e-2},
                             "batch": {"size": 32}, "train": {"epochs": 30}, "regularization": reg}))
    w = torch.cat([p.detach().flatten() for p in penalized_weights(run.model)])
    return (w.abs() < 1e-2).float().mean().item()


def test_l1_drives_many_weights_to_zero_and_l2_does_not() -> None:
    l1, l2 = _near_zero({"l1": 1e-3}), _near_zero({"l2": 1e-3})
    assert l1 > 0.5 and l2 < 0.2, (l1, l2)


def test_penalty_is_recorded_per_epoch() -> None:
    run = train(load_config({"data": {"limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3},
                             "regularization": {"l1": 1e-4}}))
    penalties = [r["train"]["penalty"] for r in run.epochs]
    final = 1e-4 * sum(w.abs().sum() for w in penalized_weights(run.model)).item()
    assert all(p > 0 for p in penalties) and penalties[-1] == pytest.approx(final, rel=0.05)  # epoch mean vs end


def test_dropconnect_drops_weights_only_in_training() -> None:
    model = _mlp()
    assert apply_dropconnect(model, 0.5) == 1  # the hidden layer; the output layer stays whole
    layer = model[0]
    assert isinstance(layer, DropConnectLinear) and type(model[2]) is nn.Linear
    x = torch.randn(1000, 4)
    layer.eval()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.train()
    torch.manual_seed(1)
    with torch.no_grad():
        out = torch.cat([layer(x[:1]) for _ in range(4000)])  # one mask per forward pass (per batch)
    assert out.std(dim=0).min() > 0
    plain = F.linear(x[:1], layer.weight, layer.bias)[0]
    # kept weights are scaled by 1/(1-p): the mean over masks is the plain output
    assert (out.mean(dim=0) - plain).abs().max() < 4 * (out.std(dim=0) / 4000**0.5).max()


def test_dropconnect_needs_hidden_linear_layers() -> None:
    with pytest.raises(ConfigError, match="regularization.dropconnect: this model has no hidden linear layers"):
        train(load_config({"data": {"name": "digits"}, "model": {"name": "gru", "hidden_size": 8},
                           "regularization": {"dropconnect": 0.2}, "train": {"epochs": 1}}))


def test_augmentation_on_whole_batches() -> None:
    x = torch.zeros(4, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    same = build_augment(RegularizationConfig(augment=("shift",), shift_pixels=0.0), (1, 9, 9), 0)
    torch.testing.assert_close(same(x), x)
    shift = build_augment(RegularizationConfig(augment=("shift", "rotate")), (1, 9, 9), 0)
    moved = shift(x)
    assert moved.shape == x.shape and not torch.equal(moved, x)
    assert torch.equal(build_augment(RegularizationConfig(augment=("shift", "rotate")), (1, 9, 9), 0)(x), moved)
    noise = build_augment(RegularizationConfig(augment=("noise",), noise_std=0.5), (1, 9, 9), 0)
    assert (noise(torch.zeros(64, 1, 28, 28)).std().item()) == pytest.approx(0.5, rel=0.02)


def test_augmentation_on_a_table_is_rejected() -> None:
    with pytest.raises(ConfigError, match="regularization.augment: needs image data"):
        train(load_config({"data": {"name": "breast-cancer"}, "regularization": {"augment": ["noise"]}}))


def test_early_stopping_restores_the_best_epoch() -> None:
    cfg = load_config({"data": {"name": "digits", "limit": 500}, "model": {"hidden": [256]}, "optim": {"lr": 3e-2},
                       "train": {"epochs": 30}, "regularization": {"early_stopping": 2}})
    run = train(cfg)
    val_losses = [r["val"]["loss"] for r in run.epochs]
    best = min(range(len(val_losses)), key=val_losses.__getitem__) + 1
    assert run.best_epoch == best and len(run.epochs) == best + 2 < 30
    x, y = load_data(cfg.data).val
    run.model.eval()
    with torch.no_grad():
        assert F.cross_entropy(run.model(x), y).item() == pytest.approx(val_losses[best - 1], rel=1e-5)


def test_early_stopping_min_delta() -> None:
    stopper = EarlyStopping(patience=1, min_delta=0.1)
    model = _mlp()
    assert not stopper.update(1, 1.0, model)
    assert stopper.update(2, 0.95, model)  # better, but by less than min_delta
    assert stopper.best_epoch == 1


def test_clipping_bounds_the_gradient_norm() -> None:
    model = _mlp()
    (model(torch.randn(8, 4) * 100).sum() * 100).backward()
    before = clip_gradients(model, RegularizationConfig(clip_norm=1.0))
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert before > 1.0 and after.item() == pytest.approx(1.0, rel=1e-5)
    clip_gradients(model, RegularizationConfig(clip_value=0.01))
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.01


def test_clipping_in_the_loop_records_the_norm() -> None:
    run = train(load_config({"data": {"limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 2},
                             "regularization": {"clip_norm": 0.5}}))
    assert all(r["train"]["grad_norm"] > 0 for r in run.epochs)
