"""Training on several processes (parallel.strategy ddp and pipeline, through torchrun with gloo on the CPU): the same
weights and history as one process, every technique either working or refused before launch, bad input, and a rank
killed in the middle."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, run_cli
from dltune import load_config, train
from dltune.experiment.config import override
from dltune.errors import ConfigError
from dltune.parallel import Ranks, split_stages

BASE = {"train.epochs": 2, "model.hidden": [32], "data.test_fraction": 0.1, "batch.size": 64}
TOLERANCE = 1e-4  # float32 sums in another order (gradients all-reduced, losses summed over ranks)


def _config(**changes):
    return override(load_config(ROOT / "examples" / "seed_mnist.toml"), {**BASE, **changes})


def _same_run(one, two) -> None:
    """Two runs ended with the same weights and the same history, up to float rounding."""
    assert one.status == two.status and len(one.epochs) == len(two.epochs)
    for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=TOLERANCE)
    for ea, eb in zip(one.epochs, two.epochs, strict=True):
        for split in ("train", "val"):
            for name, value in ea[split].items():
                assert eb[split][name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (ea["epoch"], split, name)
        assert ea["lr"] == pytest.approx(eb["lr"]) and ea["batch_size"] == eb["batch_size"]
    for name, value in one.test.items():
        assert two.test[name] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), name


@pytest.mark.slow
def test_ddp_on_two_processes_trains_the_one_process_run_with_every_technique(caplog, monkeypatch):
    """Batch growth with linear lr coupling, accumulation, L1 and L2, decoupled decay, clipping, augmentation, a
    per-batch schedule and early stopping, all at once: 2 processes end where 1 process does. 847 training examples
    in batches of 47, then 94: every batch splits unevenly (23 and 24), and each epoch's last holds 1 example, which
    leaves rank 1 nothing (it takes part with weight 0). More processes than cores only warns."""
    config = _config(**{"train.epochs": 3, "data.limit": 1045, "batch.size": 47, "batch.policy": "grow",
                        "batch.grow_at": [3],
                        "batch.factor": 2, "batch.lr_coupling": "linear", "batch.accumulate": 2,
                        "regularization.l1": 1e-5, "regularization.l2": 1e-4,
                        "regularization.decoupled_weight_decay": 1e-3, "regularization.clip_norm": 1.0,
                        "regularization.augment": ["shift", "noise"], "regularization.early_stopping": 5,
                        "schedule.name": "onecycle"})
    one = train(config)
    import importlib

    # the cores this process may run on, as the loop reads them
    monkeypatch.setattr(importlib.import_module("dltune.run.loop"), "cores", lambda: 1)
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="dltune"):
        two = train(override(config, {"parallel.strategy": "ddp", "parallel.nproc": 2}),
                    on_epoch=lambda epoch, record: seen.append(epoch))
    assert "2 processes on 1 CPU cores" in caplog.text
    assert seen == [1, 2, 3]  # rank 0's records reach on_epoch as they come
    assert two.environment["processes"] == 2 and two.environment["strategy"] == "ddp"
    assert two.data["sizes"]["train"] == 847 and [e["batch_size"] for e in two.epochs] == [47, 47, 94]
    assert two.epochs[-1]["train"]["grad_norm"] > 0 and two.epochs[-1]["train"]["penalty"] > 0
    _same_run(one, two)


@pytest.mark.slow
def test_a_search_stops_a_distributed_run_on_every_rank_and_unfrozen_layers_train_on_all(tmp_path):
    """on_epoch answers "stop" (a pruner): all ranks stop after that epoch, and the result says so. The body, frozen
    for epoch 1 and unfrozen at epoch 2 (DDP wraps the model again), trains as on one process."""
    config = _config(**{"train.epochs": 4, "model.hidden": [32, 16], "transfer.freeze": "body",
                        "transfer.unfreeze_at": [2], "transfer.lr_mult": 3.0})
    stop_at_2 = lambda epoch, record: "stop" if epoch == 2 else None  # noqa: E731
    one = train(config, on_epoch=stop_at_2)
    two = train(override(config, {"parallel.strategy": "ddp"}), on_epoch=stop_at_2, out_dir=tmp_path / "run")
    assert two.status == "stopped" and [e["epoch"] for e in two.epochs] == [1, 2]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "stopped"
    _same_run(one, two)


@pytest.mark.slow
def test_a_distributed_run_that_diverges_says_where_as_one_process_does():
    """The result crosses back from the ranks as JSON and safetensors (nothing unpickled), NaN losses included."""
    config = _config(**{"optim.name": "sgd", "optim.lr": 1e6, "model.hidden": [16]})
    one, two = train(config), train(override(config, {"parallel.strategy": "ddp"}))
    assert one.status == two.status == "diverged" and math.isnan(two.epochs[-1]["train"]["loss"])
    where = lambda d: (d.epoch, d.batch, d.batches, d.step, d.lr, math.isnan(d.loss))  # noqa: E731
    assert where(two.divergence) == where(one.divergence) and two.test == {}


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_stages_train_the_unsplit_model(schedule, tmp_path):
    """The model cut into 2 stages (2 processes, 4 micro-batches; the epoch's last batch, of 18 examples, in 3 of 6)
    ends with the weights and history of the unsplit model: from Python (GPipe), and from the CLI's run folder
    (1F1B)."""
    from types import SimpleNamespace

    from dltune.run.assembly import saved_model

    changes = {"model.hidden": [32, 16], "schedule.name": "cosine"}
    one = train(_config(**changes))
    pipeline = {"parallel.strategy": "pipeline", "parallel.stages": 2, "parallel.schedule": schedule}
    if schedule == "gpipe":
        two = train(_config(**changes, **pipeline))
        environment = two.environment
    else:
        sets = [a for k, v in {**BASE, **changes, **pipeline}.items() for a in ("--set", f"{k}={json.dumps(v)}")]
        done = run_cli("train", str(ROOT / "examples" / "seed_mnist.toml"), *sets, "--out", str(tmp_path / "run"),
                       "--json")
        assert done.returncode == 0, done.stderr
        assert ("starting 2 pipeline processes (one per stage) through torchrun; each process imports torch and "
                "loads the data, and they meet, before the first epoch") in done.stderr.splitlines()[:2]
        result = json.loads(done.stdout)
        two = SimpleNamespace(**result, model=saved_model(tmp_path / "run"))
        environment = result["environment"]
    assert environment["processes"] == 2 and environment["strategy"] == "pipeline"
    _same_run(one, two)


@pytest.mark.parametrize("n, world", [(47, 2), (1, 2), (2, 3), (100, 4)])
def test_the_ranks_shares_cover_a_batch_once_and_weigh_its_mean_loss(n, world):
    """Consecutive slices that partition the batch (differing by at most one example); weights that make the mean
    over ranks of weight · (mean loss of the slice) the batch's mean loss; an empty slice trains on one example with
    weight 0."""
    x, y = torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n)
    shares = [Ranks(r, world, r, Path(".")).share(x, y) for r in range(world)]
    used = [s for s in shares if s.weight > 0]
    assert torch.equal(torch.cat([s.y for s in used]), y)
    assert max(len(s.y) for s in used) - min(len(s.y) for s in used) <= 1
    losses = torch.rand(n)
    assert sum(s.weight * losses[s.y].mean() for s in used) / world == pytest.approx(losses.mean().item(), rel=1e-6)
    assert all(len(s.y) == 1 and s.size == n for s in shares if s.weight == 0)
    assert sum(s.weight == 0 for s in shares) == max(0, world - n)


def test_stages_hold_the_models_own_layers_balanced_by_parameters():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()), nn.Linear(10, 500),
                          nn.ReLU(), nn.Linear(500, 10), nn.ReLU(), nn.Linear(10, 2))
    parts = split_stages(model, 2)
    assert [len(p) for p in parts] == [5, 3]  # the big Linear(10, 500) alone outweighs what follows
    assert parts[1][0] is model[3]  # the model's modules, not copies
    assert sum(len(p) for p in split_stages(model, 4)) == 8
    with pytest.raises(ConfigError, match="parallel.stages: 5 stages, but the model has 4 layers with parameters"):
        split_stages(model, 5)
    with pytest.raises(ConfigError, match="an nn.Sequential into stages; this model is a LSTM"):
        split_stages(nn.LSTM(3, 3), 2)


@pytest.mark.parametrize("changes, message", [
    ({"parallel.strategy": "ddp", "train.compile": True}, "train.compile: not with parallel.strategy = 'ddp'"),
    ({"parallel.strategy": "pipeline", "batch.accumulate": 2}, "batch.accumulate: not supported with parallel.st"),
    ({"parallel.strategy": "pipeline", "regularization.clip_norm": 1.0}, "regularization.clip_norm: not supported"),
    ({"parallel.strategy": "ddp", "parallel.nproc": 8, "batch.size": 4}, "global batch \\(4\\) is smaller than the 8"),
    ({"parallel.strategy": "pipeline", "parallel.stages": 3}, "parallel.stages: 3 stages, but the model has 2 layers"),
    ({"parallel.strategy": "pipeline", "parallel.microbatches": 3}, "parallel.microbatches: 3 does not divide the b"),
])
def test_what_a_distributed_run_cannot_do_is_refused_before_any_process_starts(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(**changes), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_python_objects_cannot_cross_to_the_processes():
    with pytest.raises(ConfigError, match="cannot receive data= or model= objects from Python; name them by import"):
        train(_config(**{"parallel.strategy": "ddp"}), model=nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))


def test_bad_process_counts_exit_2_from_the_cli(tmp_path):
    config = ROOT / "examples" / "seed_mnist.toml"
    for args, message in ((["--nproc", "0"], "--nproc: must be at least 1, got 0"),
                          (["--nproc", "2", "--nnodes", "2"], "--rdzv-endpoint: a run on several machines"),
                          (["--set", 'parallel.strategy="pipeline"', "--set", "parallel.stages=9"],
                           "parallel.stages: 9 stages, but the model has 2 layers")):
        done = run_cli("train", str(config), *args, "--out", str(tmp_path / "run"))
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_cli_trains_on_two_machines_that_meet(tmp_path):
    """Two launchers with --nnodes 2 (two machines, here on one) meeting at one endpoint train one model together,
    and each writes the same run. (`--nproc 2` on one machine: the SIGKILL test and the search's below.)"""
    config = ROOT / "examples" / "seed_mnist.toml"
    small = ["--set", "train.epochs=1", "--set", "model.hidden=[32]"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    machines = [subprocess.Popen([sys.executable, "-m", "dltune", "train", str(config), "--nproc", "1", *small,
                                  "--set", 'parallel.strategy="ddp"', "--nnodes", "2",
                                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--out", str(tmp_path / f"node{i}"),
                                  "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                for i in range(2)]
    outputs = [m.communicate(timeout=300) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs
    assert all(f"starting 1 ddp process through torchrun on this machine, one of 2 machines that meet at 127.0.0.1:"
               f"{port}; each process imports torch and loads the data, and they meet, before the first epoch"
               in err.splitlines()[:2] for _, err in outputs), outputs  # after a warning of a loaded machine
    runs = [json.loads(out) for out, _ in outputs]
    assert [r["environment"]["processes"] for r in runs] == [2, 2]
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["epochs"][0]["train"] == runs[1]["epochs"][0]["train"]
    assert (tmp_path / "node0" / "model.safetensors").read_bytes() == (tmp_path / "node1" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_rank_killed_with_sigkill_stops_the_others_and_leaves_no_run_folder(tmp_path):
    config = ROOT / "examples" / "seed_mnist.toml"
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "dltune", "train", str(config), "--nproc", "2", "--set",
                                "train.epochs=200", "--out", str(run)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    ranks: list[int] = []
    deadline = time.monotonic() + 120
    while len(ranks) < 2 and time.monotonic() < deadline:  # the ranks' processes, once both train
        found = subprocess.run(["pgrep", "-f", "python -u -m dltune[.]run[.]rank "], capture_output=True, text=True)
        ranks = [int(p) for p in found.stdout.split() if _child_of(int(p), process.pid)]
        time.sleep(0.2)
    assert len(ranks) == 2
    while not any(line.startswith("epoch") for line in _peek(process)) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(max(ranks), signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    assert "was killed by SIGKILL" in err and "no run folder was written" in err and "Traceback" not in err
    assert not run.exists()
    time.sleep(1)
    assert not any(_running(pid) for pid in ranks)  # torchrun stopped the rank that was not killed


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _child_of(pid: int, ancestor: int) -> bool:
    """`pid` descends from `ancestor` (the ranks are torchrun's children, torchrun the launcher's)."""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return False
        if pid == ancestor:
            return True
    return False


_seen: list[str] = []


def _peek(process: subprocess.Popen) -> list[str]:
    """The launcher's stdout so far (its epoch lines), read without blocking."""
    import select

    while select.select([process.stdout], [], [], 0)[0]:
        line = process.stdout.readline()
        if not line:
            break
        _seen.append(line)
    return _seen


@pytest.mark.slow
def test_a_search_whose_trials_train_on_two_processes_fails_the_trial_of_a_killed_rank(tmp_path):
    """A rank of a search's trial killed with SIGKILL: that trial is failed with the reason (none left RUNNING), its
    run folder is not left half-written, and the search goes on to its finished trial, whose run is complete."""
    from conftest import trials_in

    out = tmp_path / "search"
    process = subprocess.Popen([sys.executable, "-m", "dltune", "tune", str(ROOT / "examples" / "tune_mnist.toml"),
                                "--set", 'parallel.strategy="ddp"', "--set", "train.epochs=1", "--set",
                                'search.pruner="none"', "--trials", "1", "--json", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline, ranks = time.monotonic() + 120, []
    while len(ranks) < 2 and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "python -u -m dltune[.]run[.]rank "], capture_output=True, text=True)
        ranks = [int(p) for p in found.stdout.split() if _child_of(int(p), process.pid)]
        time.sleep(0.1)
    assert len(ranks) == 2
    os.kill(min(ranks), signal.SIGKILL)
    out_text, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    db = out / "study.db"
    assert trials_in(db, "RUNNING") == [] and trials_in(db, "FAIL") == [0]
    assert trials_in(db, "COMPLETE") == [1]
    assert json.loads(out_text)["trials"] == {"complete": 1, "pruned": 0, "fail": 1, "interrupted": 0, "running": 0,
                                              "waiting": 0}
    import optuna

    failed = optuna.load_study(study_name=None, storage=f"sqlite:///{db}").trials[0]
    assert failed.user_attrs["error"].endswith("was killed by SIGKILL; the other ranks were stopped, and no run "
                                               "folder was written")
    assert not (out / "trials" / "trial-0" / "metrics.json").exists()
    assert not (out / "trials" / "trial-0" / "config.toml").exists()
    assert all((out / "trials" / f"trial-{n}" / "metrics.json").exists() for n in trials_in(db, "COMPLETE"))
