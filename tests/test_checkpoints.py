"""Checkpoints of one run (train.checkpoint_every, `dltune train --resume`): a run killed with SIGKILL in the middle
of an epoch and resumed ends with the weights and history of a run that was never stopped; and a paused run (the
answer "pause") goes on exactly, for every optimizer and schedule."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from safetensors.torch import load_file

from conftest import ROOT, run_main
from dltune.run.checkpoints import CHECKPOINT, Paused, checkpoint_lock
from dltune.experiment.config import load_config
from dltune.errors import ConfigError
from dltune.run.results import RUN_FILES
from dltune.techniques.optim import OPTIMIZERS
from dltune.techniques.schedules import SCHEDULES
from dltune import train

TIMING = ("seconds", "eval_seconds", "samples_per_second")  # measured, so never the same twice
# one thread in every process, so that the test's run and the killed one add their floats in the same order
KILLED = {"data": {"name": "mnist-5k", "limit": 3000}, "model": {"hidden": [128], "dropout": 0.2},
          "train": {"epochs": 5, "checkpoint_every": 1}, "parallel": {"threads": 1},
          "regularization": {"early_stopping": 4, "augment": ["noise"]}, "schedule": {"name": "onecycle"}}
SMALL = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16], "dropout": 0.2}, "train": {"epochs": 4},
         "parallel": {"threads": 1}}


def history(run_dir: Path | str) -> list[dict[str, Any]]:
    epochs = json.loads((Path(run_dir) / "metrics.json").read_text())["epochs"]
    return [{k: v for k, v in e.items() if k not in TIMING} for e in epochs]


def same_run(a: Path | str, b: Path | str) -> bool:
    """Bit for bit the same weights, the same history (timings apart) and test metrics."""
    wa, wb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    test = [json.loads((Path(d) / "metrics.json").read_text())["test"] for d in (a, b)]
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa) and history(a) == history(b) and \
        test[0] == test[1]


def kill_mid_epoch(command: list[str], run_dir: Path, after: int, rng: random.Random) -> int:
    """Start `command`, wait until its checkpoint holds epoch `after`, then SIGKILL it part-way into the next epoch
    (a seeded fraction of the epoch's measured time); the epoch of the checkpoint it left."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = run_dir / CHECKPOINT / "state.json"
    deadline = time.time() + 120
    epoch, seconds = 0, 0.0
    while time.time() < deadline and proc.poll() is None:
        try:
            saved = json.loads(state.read_text())
            epoch, seconds = saved["epoch"], saved["loop"]["history"][-1]["seconds"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if epoch >= after:
            break
        time.sleep(0.005)
    assert epoch >= after, proc.stderr.read() if proc.poll() is not None else "no checkpoint in 120 s"
    time.sleep(rng.uniform(0.2, 0.8) * seconds)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return json.loads(state.read_text())["epoch"]


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_history(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps(KILLED))
    whole = train(config, out_dir=tmp_path / "whole")
    assert whole.status == "completed"
    part = tmp_path / "part"
    saved = kill_mid_epoch([sys.executable, "-m", "dltune", "train", str(config), "--out", str(part)], part, 2,
                           random.Random(0))
    assert saved < 5 and not (part / "metrics.json").exists()
    resumed = run_main(capsys, "train", "--resume", str(part))
    assert resumed.returncode == 0, resumed.stderr
    assert same_run(part, tmp_path / "whole")
    assert sorted(p.name for p in part.iterdir()) == sorted(RUN_FILES)  # the checkpoint went with the run's end


def pause_at(epoch: int):
    def on_epoch(e: int, record: dict) -> str | None:
        return "pause" if e == epoch else None

    return on_epoch


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_goes_on_exactly_after_a_pause(tmp_path: Path, name: str) -> None:
    config = load_config({**SMALL, "optim": {"name": name}, "regularization": {"early_stopping": 3}})
    assert_pause_is_invisible(config, tmp_path)


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_every_schedule_goes_on_exactly_after_a_pause(tmp_path: Path, name: str) -> None:
    config = load_config({**SMALL, "schedule": {"name": name, "warmup_epochs": 1, "milestones": [2, 3]}})
    assert_pause_is_invisible(config, tmp_path)


def test_unfreezing_augmentation_and_accumulation_go_on_exactly(tmp_path: Path) -> None:
    config = load_config({**SMALL, "regularization": {"augment": ["shift", "noise"], "l2": 1e-4, "clip_norm": 1.0},
                          "batch": {"size": 32, "accumulate": 2, "policy": "grow", "grow_at": [3],
                                    "lr_coupling": "sqrt"},
                          "transfer": {"freeze": "body", "unfreeze_at": [3]}})
    assert_pause_is_invisible(config, tmp_path)


def assert_pause_is_invisible(config, tmp_path: Path) -> None:
    whole = train(config, out_dir=tmp_path / "whole")
    with pytest.raises(Paused):
        train(config, on_epoch=pause_at(2), out_dir=tmp_path / "part")
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == [CHECKPOINT, "config.toml"]
    asked: list[int] = []
    resumed = train(config, on_epoch=lambda e, r: asked.append(e), out_dir=tmp_path / "part", resume=True)
    assert asked == list(range(2, len(whole.epochs) + 1))  # epoch 2 asked again: its answer was still due
    assert resumed.status == whole.status and same_run(tmp_path / "part", tmp_path / "whole")


def test_a_stop_answered_after_a_pause_ends_the_run_as_a_stop_then_would(tmp_path: Path) -> None:
    config = load_config({**SMALL, "regularization": {"early_stopping": 3}})
    stopped = train(config, on_epoch=lambda e, r: "stop" if e == 2 else None, out_dir=tmp_path / "stopped")
    with pytest.raises(Paused):
        train(config, on_epoch=pause_at(2), out_dir=tmp_path / "part")
    resumed = train(config, on_epoch=lambda e, r: "stop", out_dir=tmp_path / "part", resume=True)
    assert resumed.status == stopped.status == "stopped" and same_run(tmp_path / "part", tmp_path / "stopped")


def test_a_run_killed_before_its_first_checkpoint_trains_again_from_the_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config({**SMALL, "train": {"epochs": 2}})
    whole = train(config, out_dir=tmp_path / "whole")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.toml").write_text((tmp_path / "whole" / "config.toml").read_text())  # what a kill leaves
    resumed = run_main(capsys, "train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert whole.status == "completed" and same_run(killed, tmp_path / "whole")


def test_resume_refuses_what_it_cannot_go_on_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(SMALL)
    train(config, out_dir=tmp_path / "done")
    (tmp_path / "done" / CHECKPOINT).mkdir()  # as a process killed after metrics.json, before its last step, leaves
    again = run_main(capsys, "train", "--resume", str(tmp_path / "done"))  # a rerun of the command: nothing to do
    assert again.returncode == 0 and "the run is complete (metrics.json); nothing to resume" in again.stderr
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == sorted(RUN_FILES)
    cases = {
        ("--resume", str(tmp_path)): "not a run folder (no config.toml)",
        ("--resume", str(tmp_path / "done"), "--set", "optim.lr=0.1"): "leave out --set",
        ("exp.toml", "--resume", str(tmp_path / "done")): "leave out CONFIG",
        (): "give an experiment file, or --resume RUN_DIR",
    }
    for args, message in cases.items():
        result = run_main(capsys, "train", *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, args
    with pytest.raises(ConfigError, match="differs from the run's config.toml"):
        with pytest.raises(Paused):
            train(config, on_epoch=pause_at(1), out_dir=tmp_path / "part")
        train(load_config({**SMALL, "optim": {"lr": 0.5}}), out_dir=tmp_path / "part", resume=True)


def test_a_damaged_checkpoint_is_an_error_that_names_its_file(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(SMALL)
    for damage in ("state", "tensors"):
        part = tmp_path / damage
        with pytest.raises(Paused):
            train(config, on_epoch=pause_at(2), out_dir=part)
        if damage == "state":
            target = part / CHECKPOINT / "state.json"
            target.write_text(target.read_text()[:40])
        else:
            target = next((part / CHECKPOINT).glob("epoch-*.safetensors"))
            target.write_bytes(target.read_bytes()[:100])
        result = run_main(capsys, "train", "--resume", str(part))
        assert result.returncode == 2 and str(target) in result.stderr and "Traceback" not in result.stderr
        assert (part / CHECKPOINT).is_dir() and (part / "config.toml").is_file()  # nothing stored was removed


def test_a_run_that_trains_cannot_be_resumed_by_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(SMALL)
    with pytest.raises(Paused):
        train(config, on_epoch=pause_at(1), out_dir=tmp_path / "run")
    with checkpoint_lock(tmp_path / "run"):  # as a process that trains it holds it (flock: another open file)
        result = run_main(capsys, "train", "--resume", str(tmp_path / "run"))
    assert result.returncode == 2 and f"pid {os.getpid()}" in result.stderr, result.stderr
    assert run_main(capsys, "train", "--resume", str(tmp_path / "run")).returncode == 0


def test_checkpoints_need_a_run_folder() -> None:
    with pytest.raises(ConfigError, match="checkpoints need a run folder"):
        train(load_config({**SMALL, "train": {"epochs": 2, "checkpoint_every": 1}}))


def test_a_killed_run_says_how_to_go_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rerunning the command on a killed run's folder names --resume (from which epoch), --resume says where it
    starts, --resume --json of a finished run prints its result, and a missing folder is named so."""
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps({**SMALL, "train": {"epochs": 4, "checkpoint_every": 1}}))
    with pytest.raises(Paused):  # what a kill after epoch 2 leaves: config.toml and the checkpoint of epoch 2
        train(load_config(config), on_epoch=pause_at(2), out_dir=tmp_path / "part")
    again = run_main(capsys, "train", str(config), "--out", str(tmp_path / "part"))
    assert again.returncode == 2
    assert (f"holds a run that was killed or interrupted after epoch 2 of 4: `dltune train --resume "
            f"{tmp_path / 'part'}` goes on from there, or choose another folder") in again.stderr
    resumed = run_main(capsys, "train", "--resume", str(tmp_path / "part"))
    assert resumed.returncode == 0 and resumed.stdout.startswith(
        f"resuming {tmp_path / 'part'} from its checkpoint after epoch 2 of 4\n")
    (tmp_path / "killed").mkdir()  # killed before its first checkpoint: config.toml alone
    (tmp_path / "killed" / "config.toml").write_text((tmp_path / "part" / "config.toml").read_text())
    again = run_main(capsys, "train", str(config), "--out", str(tmp_path / "killed"))
    assert again.returncode == 2 and ("holds a run that was killed before its first checkpoint: `dltune train "
                                      f"--resume {tmp_path / 'killed'}` trains it again from epoch 1") in again.stderr
    resumed = run_main(capsys, "train", "--resume", str(tmp_path / "killed"), "--json")
    assert resumed.returncode == 0 and (f"{tmp_path / 'killed'} has no checkpoint (killed before its first): it "
                                        "trains again from epoch 1") in resumed.stderr
    first = json.loads(resumed.stdout)
    done = run_main(capsys, "train", "--resume", str(tmp_path / "killed"), "--json")  # finished: its result again
    assert done.returncode == 0 and "the run is complete (metrics.json); nothing to resume" in done.stderr
    assert json.loads(done.stdout) == first
    missing = run_main(capsys, "train", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and f"--resume {tmp_path / 'nowhere'}: no such folder" in missing.stderr


@pytest.mark.slow
def test_ctrl_c_on_a_run_that_checkpoints_says_how_to_resume(tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(tomli_w.dumps({**KILLED, "train": {"epochs": 30, "checkpoint_every": 1}}))
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "dltune", "train", str(config), "--out", str(part)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (part / CHECKPOINT / "state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    epoch = json.loads((part / CHECKPOINT / "state.json").read_text())["epoch"]
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "dltune train: interrupted", err
    assert (f"the run stopped; its checkpoint is kept, after epoch {epoch} of 30: `dltune train --resume {part}` goes "
            "on from there") in err
