"""Ready for an accelerator: --jobs workers share a machine's GPUs round-robin and say so, Ray asks a GPU per trial
where a run will use CUDA (auto included), and train.deterministic sets what a GPU needs for the same bits. The
decisions are tested here on any machine; what needs a CUDA GPU is tested where torch sees one and skipped, saying
so, where it does not."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from conftest import run_main

from dltune.experiment.config import load_config
from dltune.run.runtime import CUBLAS_WORKSPACE, torch_settings, worker_device, worker_devices
from dltune.study.pool import Pool, Worker
from dltune.study.ray_backend import gpus_per_trial

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: torch sees none on this machine (the CPU "
                                                 "decisions beside this test run everywhere)")

TINY = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]}, "train": {"epochs": 2},
        "parallel": {"threads": 1}}


@pytest.mark.parametrize(("setting", "worker", "gpus", "device"), [
    ("auto", 0, 4, "cuda:0"), ("auto", 1, 4, "cuda:1"), ("cuda", 3, 4, "cuda:3"),
    ("auto", 4, 4, "cuda:0"), ("cuda", 5, 2, "cuda:1"),  # more workers than cards: round-robin
    ("auto", 1, 1, None), ("cuda", 1, 1, None),  # one card: every worker trains on it, as without --jobs
    ("auto", 1, 0, None),  # no card: auto is the CPU
    ("cuda:1", 0, 4, None), ("cpu", 1, 4, None), ("mps", 1, 4, None),  # set by the user: left as set
])
def test_each_worker_takes_the_next_gpu_unless_the_device_is_set(setting: str, worker: int, gpus: int,
                                                                  device: str | None) -> None:
    assert worker_device(setting, worker, gpus) == device


def _two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch, in this process, as on a machine of two CUDA devices (their names unknown)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_on_two_gpus_the_assignment_is_round_robin_and_said(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    _two_gpus(monkeypatch)
    with caplog.at_level(logging.INFO, logger="dltune.devices"):
        assert worker_devices(["auto"], 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert [r.getMessage() for r in caplog.records] == ["worker 1 of 3: cuda:0", "worker 2 of 3: cuda:1",
                                                        "worker 3 of 3: cuda:0"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dltune.devices"):
        assert worker_devices(["cuda:1"], 2) == [None, None]  # the user's card: nothing to say
        assert worker_devices(["cpu", "cuda"], 2) == ["cuda:0", "cuda:1"]  # an ablation's variant on the GPU
    assert len(caplog.records) == 2


@pytest.mark.skipif(GPUS > 1, reason="this machine has several GPUs: the workers are given theirs")
def test_without_several_gpus_the_workers_keep_the_device_as_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dltune.devices"):
        assert worker_devices(["auto"], 2) == [None, None]
        assert worker_devices(["cuda"], 3) == [None, None, None]
    assert caplog.records == []


def _number_and_device(worker: Worker) -> tuple[int, str | None]:
    time.sleep(0.3)  # long enough that the other worker takes the next task
    return worker.number, worker.device


def test_pool_workers_take_numbers_in_turn_and_the_device_of_theirs() -> None:
    with Pool(2, devices=[None, None]) as pool:
        while not pool.ready():
            time.sleep(0.05)
        seen = {f.result() for f in [pool.submit(_number_and_device) for _ in range(4)]}
    assert seen == {(0, None), (1, None)}


@pytest.mark.slow
@pytest.mark.skipif(GPUS > 1, reason="this machine has several GPUs: the workers are given theirs")
def test_tune_jobs_2_from_the_cli_trains_as_before_and_prints_the_assignment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On this machine (one GPU or none) the workers keep train.device as set; what the library says of a machine
    of two GPUs reaches the CLI's stderr (the assignment said, as computed there, while the workers here train on
    this machine's devices)."""
    import dltune.study.tune as tune_module

    said: list[list[str | None]] = []

    def here_and_as_on_two_gpus(settings: list[str], jobs: int) -> list[str | None]:
        said.append(worker_devices(settings, jobs))  # this machine: no card of its own for any worker
        with monkeypatch.context() as m:
            _two_gpus(m)
            worker_devices(settings, jobs)  # what a machine of two GPUs says
        return said[0]

    monkeypatch.setattr(tune_module, "worker_devices", here_and_as_on_two_gpus)
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps({**TINY, "search": {"trials": 2, "pruner": "none",
                                                        "space": {"optim.lr": {"low": 1e-3, "high": 1e-1}}}}))
    r = run_main(capsys, "tune", str(config), "--out", str(tmp_path / "out"), "--jobs", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert said == [[None, None]]
    assert "worker 1 of 2: cuda:0" in r.stderr and "worker 2 of 2: cuda:1" in r.stderr
    assert json.loads(r.stdout)["trials"]["complete"] == 2
    for trial in sorted((tmp_path / "out" / "trials").iterdir()):
        assert load_config(trial / "config.toml").train.device == "auto"  # the experiment's, not a worker's card


def _current_card(worker: Worker) -> tuple[int, str | None, int]:
    time.sleep(0.3)
    return worker.number, worker.device, torch.zeros(1, device="cuda").device.index


@needs_cuda
def test_pool_workers_train_on_their_own_cards() -> None:
    devices = [f"cuda:{k % GPUS}" for k in range(2)]
    with Pool(2, devices=list(devices)) as pool:
        while not pool.ready():
            time.sleep(0.05)
        seen = {f.result() for f in [pool.submit(_current_card) for _ in range(4)]}
    assert seen == {(k, devices[k], int(devices[k].split(":")[1])) for k in range(2)}


# --- Ray: a GPU per trial where the run will use CUDA ---

@pytest.mark.parametrize(("device", "cluster_gpus", "gpus"), [
    ("auto", 0, 0),  # a cluster without GPUs: the CPU
    ("auto", 2, 1),  # else Ray would hide the cluster's GPUs from the trial
    ("cuda", 0, 1), ("cuda", 4, 1), ("cuda:1", 4, 1),  # asked for: Ray waits for a GPU
    ("cpu", 4, 0), ("mps", 0, 0),
])
def test_a_ray_trial_asks_a_gpu_where_it_will_train_on_cuda(device: str, cluster_gpus: int, gpus: int) -> None:
    assert gpus_per_trial(device, cluster_gpus) == gpus

@needs_cuda
def test_ray_gives_an_auto_trial_the_gpu_it_asks_for() -> None:
    ray = pytest.importorskip("ray", reason="Ray Tune is not installed (pip install 'dltune[ray]')")

    def sees_cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        gpus = gpus_per_trial("auto", ray.cluster_resources().get("GPU", 0))
        assert gpus == 1
        task = ray.remote(sees_cuda)
        assert ray.get(task.options(num_gpus=gpus).remote()) is True
        assert ray.get(task.options(num_gpus=0).remote()) is False  # why auto must ask: Ray hides the GPU
    finally:
        ray.shutdown()


# --- train.deterministic on a GPU ---

@pytest.mark.parametrize("deterministic", [True, False])
def test_determinism_sets_cublas_workspace_and_cudnn_benchmark_and_restores_them(
        monkeypatch: pytest.MonkeyPatch, deterministic: bool) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    config = load_config({**TINY, "train": {"deterministic": deterministic}})
    with torch_settings(config):
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (CUBLAS_WORKSPACE if deterministic else None)
        assert torch.backends.cudnn.benchmark is not deterministic  # off for the same bits; on, the fast path
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.backends.cudnn.benchmark is False


def test_a_users_own_cublas_workspace_and_benchmark_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with torch_settings(load_config(TINY)):  # deterministic by default
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8" and torch.backends.cudnn.benchmark is True

@needs_cuda
def test_a_deterministic_run_on_cuda_gives_the_same_bits_twice(tmp_path: Path) -> None:
    from dltune import train

    config = load_config({**TINY, "train": {"epochs": 2, "device": "cuda"}})
    first, second = (train(config, out_dir=tmp_path / name) for name in ("one", "two"))
    assert first.test == second.test
    assert [e["train"]["loss"] for e in first.epochs] == [e["train"]["loss"] for e in second.epochs]
    assert first.environment["device"].startswith("cuda")
