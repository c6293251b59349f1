"""A run is never overwritten: folders are claimed atomically when a run starts, files are written by rename,
and every folder a command creates (train, tune trials, ablate) holds one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from dltune.study.ablate import ablate
from dltune.experiment.config import load_config
from dltune.errors import ConfigError
from dltune.files import atomic_write, claim_dir, claim_file, folder_lock
from dltune.run.results import RUN_FILES
from dltune import train
from conftest import ROOT, run_cli, run_main

SEED_FILE = str(ROOT / "examples" / "seed_mnist.toml")
QUICK = ["--set", "data.limit=400", "--set", "train.epochs=1", "--set", "model.hidden=[32]"]


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dltune", *args], cwd=cwd, env=os.environ.copy(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _seed_of(run_dir: Path) -> int:
    return tomllib.loads((run_dir / "config.toml").read_text())["train"]["seed"]


@pytest.mark.slow
def test_runs_started_at_once_each_get_a_folder_of_their_own(tmp_path: Path) -> None:
    # the same experiment file, started 4 times in the same second: the default folder name
    # runs/seed_mnist-<date>-<time> is the same for all of them, so all but one must take a suffix
    seeds = [11, 12, 13, 14]
    procs = [_start("train", SEED_FILE, *QUICK, "--set", f"train.seed={s}", "--json", cwd=tmp_path) for s in seeds]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == len(seeds), [f.name for f in folders]
    assert {_seed_of(f) for f in folders} == set(seeds)  # each folder holds its own run's config
    for doc, seed in zip(docs, seeds):
        run_dir = tmp_path / doc["run_dir"]
        assert _seed_of(run_dir) == seed
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(RUN_FILES)  # complete, no temporary file
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["test"] == doc["test"] and metrics["epochs"][0]["train"] == doc["epochs"][0]["train"]


@pytest.mark.slow
def test_two_runs_given_the_same_out_one_wins_the_other_is_refused(tmp_path: Path) -> None:
    procs = [_start("train", SEED_FILE, *QUICK, "--set", f"train.seed={s}", "--out", "runs/shared", cwd=tmp_path)
             for s in (21, 22)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "runs/shared" in loser and "Traceback" not in loser
    winner_seed = (21, 22)[[code for code, _ in results].index(0)]
    run_dir = tmp_path / "runs" / "shared"
    assert _seed_of(run_dir) == winner_seed
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_an_existing_run_is_refused_before_training_and_left_unchanged(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI's main in this process: a second process refused a folder is the tests above
    first = run_main(capsys, "train", SEED_FILE, *QUICK, "--out", str(tmp_path / "run"))
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    again = run_main(capsys, "train", SEED_FILE, *QUICK, "--set", "train.seed=5", "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_a_run_that_fails_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config({"data": {"name": "csv", "path": str(tmp_path / "missing.csv")}})
    with pytest.raises(ConfigError):
        train(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    result = run_main(capsys, "train", SEED_FILE, "--set", "data.name=csv", "--set", "data.path=missing.csv",
                      cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_folder_claimed_by_a_running_train_is_refused(tmp_path: Path) -> None:
    # a second train() on the folder while the first one trains: refused, and the first one's run intact
    cfg = load_config({"data": {"limit": 400}, "model": {"hidden": [16]}, "train": {"epochs": 2}})
    refused: list[str] = []

    def on_epoch(epoch: int, record: dict) -> None:
        if epoch == 1:
            try:
                train(cfg, out_dir=tmp_path / "run")
            except ConfigError as e:
                refused.append(str(e))

    result = train(cfg, out_dir=tmp_path / "run", on_epoch=on_epoch)
    assert refused and "holds a run that is training in another process; choose another folder" in refused[0]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == result.to_dict()["epochs"]


def test_claim_dir_gives_each_of_many_threads_its_own_folder(tmp_path: Path) -> None:
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(claim_dir(tmp_path / "runs" / "x"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 16
    assert {p.name for p in got} == {"x", *(f"x-{n}" for n in range(2, 17))}


def test_claim_file_never_returns_a_taken_name(tmp_path: Path) -> None:
    (tmp_path / "plot.png").write_bytes(b"old")
    (tmp_path / "plot-2.png").mkdir()
    assert claim_file(tmp_path / "plot.png") == tmp_path / "plot-3.png"
    assert (tmp_path / "plot.png").read_bytes() == b"old"


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_second_ablation_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    out.mkdir()
    config = {"data": {"limit": 300}, "model": {"hidden": [8]}, "train": {"epochs": 1},
              "ablation": {"seeds": 1, "variants": {"wide": {"model.hidden": [16]}}}}
    with folder_lock(out, "dltune ablate"):  # as a running `dltune ablate` holds it
        result = run_cli("ablate", SEED_FILE, "--seeds", "1", "--out", str(out), *QUICK)
        assert result.returncode == 2, result.stderr
        assert "another dltune ablate is running" in result.stderr and str(os.getpid()) in result.stderr
        with pytest.raises(ConfigError, match="another dltune ablate"):
            ablate(config, out_dir=out)
    assert not (out / "runs").exists()
    data = ablate(config, out_dir=out)  # the lock went with its holder
    assert len(data.results) == 2
