"""Kill at any point: `dltune train`, `ablate --jobs 2`, `tune --jobs 2` and `worker` are killed with SIGKILL at
seeded random moments, then run again. After each kill and rerun, what the user was promised holds: the run, the
ablation or the study is complete; no completed trial is lost or changed, none is left RUNNING, none ran twice; and
every run folder is whole (all of RUN_FILES) or absent. `make stress` runs the campaign: 22 moments in all
(DLTUNE_STRESS set; one moment per command without it, for a quick look: pytest -m stress tests/test_kills.py).

A kill takes the command's whole process group (its --jobs processes, torchrun's ranks), as a crash or the kernel's
out-of-memory killer would; a kill of the first process alone leaves its children to finish their trial and end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

from conftest import POSTGRES, ROOT, drop_study
from dltune.run.results import RUN_FILES
from dltune.study.tune import create_study
from dltune.experiment.config import load_config
from test_checkpoints import same_run

STRESS = bool(os.environ.get("DLTUNE_STRESS"))
# moments per command: 6 + 6 + 6 + 4 = 22 kills under make stress
MOMENTS = {"train": 6, "ablate": 6, "tune": 6, "worker": 4} if STRESS else dict.fromkeys(("train", "ablate", "tune",
                                                                                          "worker"), 1)
SEED = 18

# about a second an epoch on one thread, so that most kills land in training, not in the process's start
TRAIN = {"data": {"name": "mnist-5k"}, "model": {"hidden": [1024, 512], "dropout": 0.2},
         "train": {"epochs": 6, "checkpoint_every": 1}, "parallel": {"threads": 1}}
SPACE = {"optim.lr": {"low": 1e-4, "high": 3e-1, "log": True}, "model.dropout": {"low": 0.0, "high": 0.5}}
SEARCH = {"data": {"name": "mnist-5k", "limit": 3000}, "model": {"hidden": [256]},
          "train": {"epochs": 3, "checkpoint_every": 1},
          "search": {"trials": 6, "sampler": "random", "pruner": "asha", "reduction_factor": 2, "max_paused": 1,
                     "space": SPACE}}
ABLATION = {"data": {"name": "digits", "limit": 600}, "model": {"hidden": [32]}, "train": {"epochs": 3},
            "ablation": {"seeds": 2, "variants": {"lr": {"optim.lr": 3e-3}, "b32": {"batch.size": 32}}}}


def write(path: Path, experiment: dict) -> Path:
    path.write_text(tomli_w.dumps(experiment))
    return path


def dltune(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltune", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(*args: str, timeout: float = 600) -> None:
    proc = dltune(*args)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err


@pytest.fixture
def kills(capsys: pytest.CaptureFixture[str]):
    """Where each kill landed, printed when the test ends (in `make stress`'s output): (second, what it found)."""
    landed: list[tuple[float, str]] = []
    yield landed
    with capsys.disabled():
        print(f"\n  {len(landed)} kills: " + "; ".join(f"{t:.1f}s {what}" for t, what in landed))


def killed_at(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process group of `proc` after `seconds`; whether it was still running then."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def timed(*args: str) -> float:
    start = time.monotonic()
    finish(*args)
    return time.monotonic() - start


def run_folders(root: Path) -> list[Path]:
    """Every folder under `root` that a run wrote into (it holds one of the run's files, or a checkpoint)."""
    return sorted({p.parent for name in (*RUN_FILES, "checkpoint") for p in root.rglob(name)} - {root})


def assert_whole(root: Path) -> None:
    for folder in run_folders(root):
        assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_FILES), folder


def finished(trials: list[optuna.trial.FrozenTrial]) -> dict[int, tuple]:
    return {t.number: (t.state, t.params, t.values, t.user_attrs, t.intermediate_values, t.datetime_complete)
            for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def assert_study_whole(trials: list[optuna.trial.FrozenTrial], before: dict[int, tuple], target: int,
                       search: bool = True) -> None:
    """No finished trial lost or changed, none RUNNING, and the study at its target; in a search, no point trained
    twice (an ablation's pairs are checked by their variant and seed)."""
    now = finished(trials)
    assert {n: now.get(n) for n in before} == before  # what had finished is there, unchanged
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(now) >= target
    points = [tuple(sorted(v[1].items())) for v in now.values()]
    assert not search or len(set(points)) == len(points), "a point was trained to the end twice"


@pytest.mark.stress
def test_train_killed_at_random_moments_resumes_to_the_same_run(tmp_path: Path, kills: list) -> None:
    config = write(tmp_path / "exp.toml", TRAIN)
    whole = tmp_path / "whole"
    seconds = timed("train", str(config), "--out", str(whole))
    rng = random.Random(SEED)
    for i in range(MOMENTS["train"]):
        run = tmp_path / f"run-{i}"
        moment = rng.uniform(0.1, 0.85) * seconds
        if not killed_at(dltune("train", str(config), "--out", str(run)), moment):
            continue
        saved = run / "checkpoint" / "state.json"
        kills.append((moment, f"checkpoint after epoch {json.loads(saved.read_text())['epoch']}" if saved.exists()
                      else "run folder claimed" if (run / "config.toml").exists() else "no run folder yet"))
        if (run / "config.toml").exists():
            finish("train", "--resume", str(run))
        else:  # killed before it claimed its folder: nothing to resume
            assert not run.exists() or not any(run.iterdir())
            finish("train", str(config), "--out", str(run))
        assert same_run(run, whole), f"kill {i} at {moment:.2f}s"
        assert_whole(run)
    assert len(kills) >= MOMENTS["train"] - 1, "the kills must land before the command ends"


@pytest.mark.stress
def test_ablate_with_two_jobs_killed_at_random_moments_completes_on_the_rerun(tmp_path: Path, kills: list) -> None:
    config = write(tmp_path / "exp.toml", ABLATION)
    seconds = timed("ablate", str(config), "--jobs", "2", "--out", str(tmp_path / "whole"))
    rng = random.Random(SEED + 1)
    for i in range(MOMENTS["ablate"]):
        out = tmp_path / f"out-{i}"
        command = ("ablate", str(config), "--jobs", "2", "--out", str(out))
        moment = rng.uniform(0.1, 0.85) * seconds
        if not killed_at(dltune(*command), moment):
            continue
        db = out / "study.db"
        before = finished(optuna.load_study(study_name="exp", storage=f"sqlite:///{db}").get_trials()) \
            if db.exists() and _has_study(db) else {}
        kills.append((moment, f"{len(before)} of 6 pairs stored"))
        finish(*command)
        trials = optuna.load_study(study_name="exp", storage=f"sqlite:///{db}").get_trials()
        assert_study_whole(trials, before, 6, search=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert sorted((t.user_attrs["variant"], t.user_attrs["seed"]) for t in done) == sorted(
            (v, s) for v in ("baseline", "lr", "b32") for s in (1, 2))
        assert (out / "report.html").is_file()
        assert_whole(out)
    assert len(kills) >= MOMENTS["ablate"] - 1, "the kills must land before the command ends"


@pytest.mark.stress
def test_tune_with_two_jobs_killed_at_random_moments_completes_on_the_rerun(tmp_path: Path, kills: list) -> None:
    config = write(tmp_path / "exp.toml", SEARCH)
    seconds = timed("tune", str(config), "--jobs", "2", "--out", str(tmp_path / "whole"))
    rng = random.Random(SEED + 2)
    for i in range(MOMENTS["tune"]):
        out = tmp_path / f"out-{i}"
        command = ("tune", str(config), "--jobs", "2", "--out", str(out))
        moment = rng.uniform(0.1, 0.85) * seconds
        if not killed_at(dltune(*command), moment):
            continue
        storage = f"journal:{out.resolve() / 'journal.log'}"
        before = finished(_trials(storage, "exp")) if (out / "journal.log").exists() else {}
        kills.append((moment, f"{len(before)} of 6 trials finished"))
        finish(*command)
        assert_study_whole(_trials(storage, "exp"), before, 6)
        assert_whole(out / "trials")
    assert len(kills) >= MOMENTS["tune"] - 1, "the kills must land before the command ends"


@pytest.mark.stress
def test_a_worker_killed_at_random_moments_loses_nothing(tmp_path: Path, kills: list) -> None:
    experiment = {**SEARCH, "search": {**SEARCH["search"], "trials": 4}}
    rng = random.Random(SEED + 3)
    seconds = 0.0
    for i in range(MOMENTS["worker"] + 1):  # the first, not killed, times a worker's whole study
        study = f"dltune-kills-{uuid.uuid4().hex[:8]}"
        try:
            create_study(load_config(experiment), storage=POSTGRES, study=study)
            out = tmp_path / f"out-{i}"
            args = ("worker", "--storage", POSTGRES, "--study", study, "--out", str(out), "--threads", "1")
            if i == 0:
                seconds = timed(*args)
                continue
            moment = rng.uniform(0.1, 0.85) * seconds
            killed = killed_at(dltune(*args), moment)
            before = finished(_trials(POSTGRES, study))
            if killed:
                kills.append((moment, f"{len(before)} of 4 trials finished"))
            finish(*args)  # the rescue: a stale trial is failed after the heartbeat's grace and run again
            assert_study_whole(_trials(POSTGRES, study), before, 4)
            assert_whole(out / "trials")
        finally:
            drop_study(study)
    assert len(kills) >= MOMENTS["worker"] - 1, "the kills must land before the worker ends"


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    from dltune.study.engines import storage_for

    return optuna.load_study(study_name=study, storage=storage_for(storage, heartbeat=False)).get_trials()


def _has_study(db: Path) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return bool(con.execute("SELECT count(*) FROM studies").fetchone()[0])
    except sqlite3.OperationalError:
        return False
