"""Exit codes, end to end through the command line: 0 done, 1 the job ran and failed (a reason in one line on stderr,
the --json document on stdout all the same), 2 bad input, 130 interrupted; and the README's table of them quotes what
the commands print."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from conftest import ROOT, run_cli, run_main

from dltune.run.checkpoints import held

# tiny problems: sklearn's digits, 300 examples, an 8-unit MLP, 2 epochs, one torch thread
TINY = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [8]}, "parallel": {"threads": 1},
        "train": {"epochs": 2}}
DIVERGES = {"optim": {"name": "sgd", "lr": 1e12}}  # the loss is nan within the first epoch


def write(folder: Path, name: str, experiment: dict) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(experiment))
    return path


def readme_examples(code: int, command: str) -> list[str]:
    """The stderr lines that README's "Exit codes" table quotes for `dltune COMMAND` exiting `code`."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return [row.group(2) for row in re.finditer(r"^\| (\d+) \|.*\| `(dltune [\w-]+: .*)` \|$", section, re.M)
            if int(row.group(1)) == code and row.group(2).startswith(f"dltune {command}: ")]


def assert_quoted(code: int, command: str, line: str, **placeholders: Path) -> None:
    """`line` (what the command printed last on stderr) is one that README quotes: its folders as the placeholders
    (RUN_DIR, DIR), and "…" in the quote for numbers that vary (the machine's float kernels, a timeout)."""
    for name, folder in placeholders.items():
        line = line.replace(str(folder), name)
    quoted = readme_examples(code, command)
    assert any(re.fullmatch(".*".join(map(re.escape, q.split("…"))), line) for q in quoted), \
        f"printed: {line}\nREADME: {quoted}"


def test_a_run_that_completes_is_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "tiny", TINY)
    r = run_main(capsys, "train", str(config), "--out", str(tmp_path / "run"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "completed" and "dltune train:" not in r.stderr


def test_a_diverged_run_is_1_with_its_reason_on_stderr_and_the_json_on_stdout(tmp_path: Path) -> None:
    config = write(tmp_path, "diverges", {**TINY, **DIVERGES})
    run = tmp_path / "run"
    r = run_cli("train", str(config), "--out", str(run), "--json")  # a process of its own, as a script runs it
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["status"] == "diverged"  # stdout holds the JSON document alone
    line = r.stderr.splitlines()[-1]
    assert line == f"dltune train: the run diverged at epoch 1 (loss nan, lr 1e+12); see {run}"
    assert_quoted(1, "train", line, RUN_DIR=run)
    again = run_cli("train", "--resume", str(run))  # nothing to resume; the run it names diverged all the same
    assert again.returncode == 1 and again.stderr.splitlines()[-1].startswith("dltune train: the run diverged at "
                                                                               "epoch 1 (loss not finite, lr 1e+12)")


def test_a_search_whose_trials_all_fail_is_1_and_an_ensemble_of_it_is_1(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    space = {"optim.lr": {"low": 1e11, "high": 1e12, "log": True}}  # every trial diverges: each one fails
    config = write(tmp_path, "diverges", {**TINY, "optim": {"name": "sgd"},
                                          "search": {"trials": 3, "pruner": "none", "sampler": "random",
                                                     "space": space}})
    out = tmp_path / "search"
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--json")
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["trials"]["fail"] == 10 and summary["trials"]["complete"] == 0 and summary["best"] == []
    line = r.stderr.splitlines()[-1]
    assert line.startswith("dltune tune: the search stopped: 10 trials in a row failed here; the last: training "
                           "diverged at epoch 1") and line.endswith(f"; see {out / 'report.html'}")
    assert summary["stopped"] == line.removeprefix("dltune tune: ").removesuffix(f"; see {out / 'report.html'}")
    assert (out / "report.html").is_file()
    assert_quoted(1, "tune", line, DIR=out)
    ensembled = run_main(capsys, "ensemble", str(out), "--json")
    assert ensembled.returncode == 1 and ensembled.stdout == ""
    line = ensembled.stderr.splitlines()[-1]
    assert line == "dltune ensemble: no member: the search 'diverges' has no completed trial (10 pruned or failed)"
    assert_quoted(1, "ensemble", line)
    assert not (tmp_path / "search-ensemble").exists()  # nothing written


def test_an_ablation_whose_every_run_diverged_is_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variants = {"wider": {"model.hidden": [16]}}
    config = write(tmp_path, "diverges", {**TINY, **DIVERGES, "ablation": {"seeds": 1, "variants": variants}})
    out = tmp_path / "ablation"
    r = run_main(capsys, "ablate", str(config), "--out", str(out), "--json")
    assert r.returncode == 1, r.stderr
    assert [row["variant"] for row in json.loads(r.stdout)] == ["baseline", "wider"]
    line = r.stderr.splitlines()[-1]
    assert line == ("dltune ablate: every run diverged (2 runs): no variant has a test.accuracy to compare; see "
                    f"{out / 'report.html'}")
    assert_quoted(1, "ablate", line, DIR=out)
    # a variant that diverges beside a baseline that trains is a finding, not a failure
    variants = {"diverges": {"optim.name": "sgd", "optim.lr": 1e12}}
    config = write(tmp_path, "some", {**TINY, "ablation": {"seeds": 1, "variants": variants}})
    r = run_main(capsys, "ablate", str(config), "--out", str(tmp_path / "some"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("args", "said"), [
    (["train", "{config}", "--set", "optim.lr=-1"], "dltune train: error: invalid experiment:"),
    (["tune", "{config}", "--more", "2", "--out", "{tmp}/none"],
     "dltune tune: error: --more 2: {tmp}/none holds no search to add trials to (no study.db); start one without "
     "--more"),
    (["tune", "{config}", "--more", "2", "--trials", "4"],
     "dltune tune: error: argument --trials: not allowed with argument --more"),
])
def test_bad_input_is_2_and_writes_nothing(args: list[str], said: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, "exp", {**TINY, "search": {"space": {"optim.lr": {"low": 1e-3, "high": 1e-2}}}})
    r = run_main(capsys, *(a.format(config=config, tmp=tmp_path) for a in args))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert said.format(tmp=tmp_path) in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]
    if args[0] == "tune" and "--trials" not in args:
        assert_quoted(2, "tune", r.stderr.splitlines()[-1], DIR=tmp_path / "none")


def _interrupted(out: Path, *sets: str, after: int = 1) -> subprocess.CompletedProcess[str]:
    """`dltune train` of the reference experiment for 12 epochs in a process of its own, sent SIGINT (Ctrl-C) once
    it printed the line of epoch `after`."""
    command = [sys.executable, "-m", "dltune", "train", "examples/seed_mnist.toml", "--set", "train.epochs=12",
               "--set", "parallel.threads=1", *sets, "--out", str(out)]
    # as from a terminal: a process started in the background inherits SIGINT ignored; undo that
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(after)]  # the run trains: its epochs' lines
    assert lines[-1].startswith(f"epoch {after:>2}/12"), "".join(lines) + (proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines) + out_text, err)


@pytest.mark.slow
def test_an_interrupted_run_is_130_and_leaves_no_claimed_or_half_written_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = _interrupted(run)
    assert r.returncode == 130, r.stderr
    line = r.stderr.splitlines()[-1]
    assert line == "dltune train: interrupted"
    assert_quoted(130, "train", line)
    assert not run.exists()  # its claim taken back: the same --out trains anew
    # with checkpoints the folder is kept for --resume: not held, not a finished run, and it goes on from there
    kept = tmp_path / "kept"
    r = _interrupted(kept, "--set", "train.checkpoint_every=1", after=2)  # epoch 1's checkpoint is saved by then
    assert r.returncode == 130 and "its checkpoint is kept" in r.stderr, r.stderr
    assert (kept / "checkpoint").is_dir() and not (kept / "metrics.json").exists() and not held(kept)
    resumed = run_cli("train", "--resume", str(kept), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "completed" and (kept / "metrics.json").is_file()
