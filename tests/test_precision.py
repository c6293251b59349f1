"""train.precision: bf16 trains, resumes bit-exactly and repeats its history; fp16's GradScaler skips the steps whose
gradients overflowed, counts them, keeps its scale in checkpoints and never takes an overflow for a divergence;
evaluation computes in the run's precision and reads metrics in fp32; the finders train as the run does; a device
without the precision is refused naming the key. model.channels_last: image models in NHWC, others refused.

This CPU's fp16 (oneDNN has no fast kernels for it without AVX512-FP16 or AMX-FP16) is refused by dltune; the
GradScaler's tests run it all the same, with that check answered yes (`fp16_here`): autocast and the scaler are
torch's real ones, only slow, which a tiny model does not notice. On CUDA they would run as they are."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_main
from test_checkpoints import TIMING, Paused, assert_pause_is_invisible, history, pause_at, same_run
from dltune import batch_find, lr_find, train
from dltune.errors import ConfigError
from dltune.experiment.config import load_config, override
from dltune.run import precision
from dltune.run.assembly import setup
from dltune.run.counters import Sums
from dltune.run.evaluation import outputs
from dltune.run.runtime import torch_settings
from dltune.tuner.finders import step_memory

SMALL = {"data": {"name": "digits", "limit": 600}, "model": {"hidden": [64], "dropout": 0.1},
         "train": {"epochs": 3, "precision": "bf16"}, "parallel": {"threads": 1}}
bf16_here = pytest.mark.skipif(precision.unsupported("bf16", torch.device("cpu")) is not None,
                               reason="this CPU has no bf16 kernels in torch (oneDNN needs AVX-512 or AMX)")


@pytest.fixture
def fp16_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """dltune's check of the CPU's fp16 kernels answered yes: torch's autocast and GradScaler run as they are."""
    monkeypatch.setattr(precision, "_cpu_has", lambda kind: True)


def overflowing(input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """An MLP whose first layer is 20x too large: at the GradScaler's first scale (2**16) its fp16 gradients overflow,
    and the scaler skips steps, halving the scale, until they fit."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 64), nn.ReLU(), nn.Linear(64, n_outputs))
    with torch.no_grad():
        net[1].weight.mul_(20)
    return net


def timeless(epochs: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in epochs]


@bf16_here
def test_bf16_trains_and_two_runs_of_one_seed_have_the_same_history() -> None:
    first, second = train(SMALL), train(SMALL)
    fp32 = train(override(load_config(SMALL), {"train.precision": "fp32"}))
    assert first.status == "completed" and abs(first.test["accuracy"] - fp32.test["accuracy"]) < 0.05
    assert first.epochs[-1]["train"]["loss"] < first.epochs[0]["train"]["loss"]
    assert timeless(first.epochs) == timeless(second.epochs) and first.test == second.test
    assert timeless(fp32.epochs) != timeless(first.epochs)  # bf16 really computed: its losses differ in the digits
    assert "skipped_steps" not in first.epochs[0]["train"]  # no GradScaler in bf16


@bf16_here
def test_bf16_goes_on_bit_exactly_after_a_pause(tmp_path: Path) -> None:
    config = load_config({**SMALL, "train": {"epochs": 4, "precision": "bf16"},
                          "regularization": {"clip_norm": 1.0, "l2": 1e-4}})
    assert_pause_is_invisible(config, tmp_path)


def test_fp16_counts_the_steps_the_scaler_skips_and_does_not_call_them_a_divergence(fp16_here: None) -> None:
    result = train({**SMALL, "train": {"epochs": 3, "precision": "fp16"}}, model=overflowing)
    skipped = [e["train"]["skipped_steps"] for e in result.epochs]
    assert result.status == "completed" and result.divergence is None
    assert skipped[0] > 0 and sum(skipped[1:]) == 0  # the scale fell until the gradients fit, then stayed
    assert all(math.isfinite(e["train"]["loss"]) for e in result.epochs)
    assert result.epochs[-1]["train"]["loss"] < result.epochs[0]["train"]["loss"]


def test_fp16_goes_on_exactly_after_a_pause_with_the_scalers_scale(fp16_here: None, tmp_path: Path) -> None:
    """Paused after epoch 1, whose overflows halved the scale: a resumed run that started again at 2**16 would skip
    steps again in epoch 2 and end with other weights."""
    config = load_config({**SMALL, "train": {"epochs": 3, "precision": "fp16"}})
    whole = train(config, model=overflowing, out_dir=tmp_path / "whole")
    with pytest.raises(Paused):
        train(config, model=overflowing, on_epoch=pause_at(1), out_dir=tmp_path / "part")
    train(config, model=overflowing, out_dir=tmp_path / "part", resume=True)
    assert whole.epochs[0]["train"]["skipped_steps"] > 0
    assert same_run(tmp_path / "part", tmp_path / "whole"), (history(tmp_path / "part"), history(tmp_path / "whole"))


def test_an_overflowed_loss_is_left_out_of_the_epochs_mean_and_none_finite_is_a_divergence() -> None:
    sums = Sums(0.1, 3, torch.device("cpu"), scaled=True)
    for loss in (1.0, math.inf, 3.0):
        sums.add(torch.tensor(loss), 10.0)
    assert sums.mean_loss(lambda t: t, 30) == pytest.approx(2.0)  # over the 20 examples of finite batches
    lost = Sums(0.1, 2, torch.device("cpu"), scaled=True)
    for loss in (math.inf, math.nan):
        lost.add(torch.tensor(loss), 10.0)
    assert math.isnan(lost.mean_loss(lambda t: t, 20))  # nothing trained: the loop calls it diverged


@bf16_here
def test_evaluation_computes_in_the_runs_precision_and_gives_fp32_outputs() -> None:
    config = load_config(SMALL)
    with torch_settings(config):
        run = setup(config)
        out, _ = outputs(run.model, run.splits.val, run.splits, config, run.device, None, run.precision)
        plain, _ = outputs(run.model, run.splits.val, run.splits, config, run.device)
    assert out.dtype == plain.dtype == torch.float32
    assert not torch.equal(out, plain) and torch.allclose(out, plain, atol=0.05)  # bf16's rounding, read in fp32


@bf16_here
def test_the_finders_train_in_the_runs_precision() -> None:
    bf16 = load_config({**SMALL, "model": {"hidden": [256]}})
    fp32 = override(bf16, {"train.precision": "fp32"})
    memory = {}
    for name, config in (("bf16", bf16), ("fp32", fp32)):
        with torch_settings(config):
            run = setup(config)
            memory[name] = step_memory(run, run.model, config, 128)
    assert memory["bf16"] < memory["fp32"]  # the activations autograd saves are half as wide
    found = lr_find(bf16, steps=30)
    assert len(found.lrs) > 5 and all(math.isfinite(v) for v in found.losses[:5])
    assert batch_find(bf16, sizes=[16, 64], steps=2).chosen in (16, 64)


def test_fp16_on_a_cpu_without_its_kernels_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "_cpu_has", lambda kind: False)
    with pytest.raises(ConfigError, match=r'train\.precision: "fp16" on this CPU'):
        train({**SMALL, "train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r'train\.precision: "bf16" on this CPU'):
        train(SMALL)
    config = tmp_path / "exp.toml"
    config.write_text('[data]\nname = "digits"\n[train]\nprecision = "fp16"\n')
    done = run_main(capsys, "train", str(config), cwd=tmp_path)
    assert done.returncode == 2 and "train.precision" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unknown_precision_and_a_pipeline_in_bf16_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        load_config({"train": {"precision": "fp8"}})
    with pytest.raises(ConfigError, match=r"train\.precision: not supported with parallel.strategy = \"pipeline\""):
        train({**SMALL, "parallel": {"strategy": "pipeline", "stages": 2}})


def test_channels_last_trains_a_cnn_in_nhwc_and_is_refused_for_a_model_without_convolutions() -> None:
    cnn = {"data": {"name": "digits", "limit": 300}, "model": {"name": "cnn", "channels": [4, 8], "head": [16]},
           "train": {"epochs": 2}, "parallel": {"threads": 1}}
    config = load_config({**cnn, "model": {**cnn["model"], "channels_last": True}})
    with torch_settings(config):
        run = setup(config)
    conv = [m for m in run.model.modules() if isinstance(m, nn.Conv2d)][-1]  # 4 input channels: NHWC differs
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    nhwc, nchw = train(config), train(cnn)
    assert nhwc.status == "completed" and abs(nhwc.test["accuracy"] - nchw.test["accuracy"]) < 0.05
    with pytest.raises(ConfigError, match="model.channels_last: the model \\(mlp\\) has no 2-d convolution"):
        train({**SMALL, "model": {"channels_last": True}})


@bf16_here
@pytest.mark.slow
def test_ddp_trains_in_bf16_on_two_processes_as_one_process_does() -> None:
    """Each rank computes its share of a batch in bf16, whose rounding depends on the matmul's shape: the run ends
    near the one-process run, not on its bits (fp32's DDP test holds 1e-4)."""
    config = load_config({"data": {"name": "digits", "limit": 600}, "model": {"hidden": [32]},
                          "train": {"epochs": 2, "precision": "bf16"}, "batch": {"size": 64}})
    one = train(config)
    two = train(override(config, {"parallel.strategy": "ddp", "parallel.nproc": 2}))
    assert two.status == one.status == "completed" and two.environment["strategy"] == "ddp"
    for a, b in zip(one.epochs, two.epochs, strict=True):
        assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], rel=0.02)
        assert b["val"]["loss"] == pytest.approx(a["val"]["loss"], rel=0.02)
    assert abs(two.test["accuracy"] - one.test["accuracy"]) <= 0.03


def test_the_epoch_line_says_the_steps_the_scaler_skipped() -> None:
    from dltune.cli.progress import describe_epoch

    record = {"epoch": 1, "train": {"loss": 0.5, "skipped_steps": 3}, "lr": 1e-3, "samples_per_second": 10.0,
              "seconds": 1.0}
    assert describe_epoch(record, 3).endswith("3 steps skipped (fp16 overflow)")
    assert "skipped" not in describe_epoch({**record, "train": {"loss": 0.5, "skipped_steps": 0}}, 3)


@bf16_here
def test_compress_fine_tunes_in_the_runs_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compress's fine-tuning after pruning trains with the run's own settings, train.precision among them."""
    import dltune.run.assembly as assembly
    from dltune.compression import compress

    experiment = {**SMALL, "train": {"epochs": 2, "precision": "bf16"},
                  "compress": {"rounds": 1, "batch_sizes": [64], "prune": {"linear": 0.5, "finetune_epochs": 1}}}
    train(experiment, out_dir=tmp_path / "run")
    asked: list[str] = []
    real = assembly.precision_for
    monkeypatch.setattr(assembly, "precision_for", lambda name, device: asked.append(name) or real(name, device))
    result = compress(tmp_path / "run", tmp_path / "c", methods=["prune"])
    assert result.rows[1].details["prune"]["steps"][0]["finetune_epochs"] == 1 and asked == ["bf16"]
