"""The finders' files from the CLI: a default plot never replaces an earlier one, a named one does and says so,
and `lr-find --apply` refuses to replace an experiment file."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, run_cli, run_main

CONFIG = str(ROOT / "examples" / "seed_mnist.toml")
QUICK = ("--steps", "10", "--set", "data.limit=300")
PNG = b"\x89PNG\r\n\x1a\n"


def plot_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("plot: "))


def test_lr_find_keeps_earlier_plots_and_says_when_it_replaces_a_named_one(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    said = []
    for r in (run_cli("lr-find", CONFIG, *QUICK, cwd=tmp_path),  # in a process of its own
              run_main(capsys, "lr-find", CONFIG, *QUICK, cwd=tmp_path)):  # again, through the CLI's main here
        assert r.returncode == 0, r.stderr
        said.append(plot_line(r.stdout))
    assert said == ["plot: runs/seed_mnist-lr-find.png", "plot: runs/seed_mnist-lr-find-2.png"]
    first, second = tmp_path / "runs" / "seed_mnist-lr-find.png", tmp_path / "runs" / "seed_mnist-lr-find-2.png"
    assert first.read_bytes().startswith(PNG) and second.read_bytes().startswith(PNG)

    first.write_bytes(b"to be replaced")
    r = run_main(capsys, "lr-find", CONFIG, *QUICK, "--plot", "runs/seed_mnist-lr-find.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert plot_line(r.stdout) == "plot: runs/seed_mnist-lr-find.png (replaced the earlier file)"
    assert first.read_bytes().startswith(PNG)
    assert sorted(p.name for p in first.parent.iterdir()) == [second.name, first.name]  # no temporary file left


def test_batch_find_keeps_an_earlier_plot(tmp_path: Path) -> None:
    earlier = tmp_path / "runs" / "seed_mnist-batch-find.png"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier plot")
    r = run_cli("batch-find", CONFIG, "--sizes", "16,32", "--set", "data.limit=300", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert earlier.read_bytes() == b"an earlier plot"
    assert "plot: runs/seed_mnist-batch-find-2.png" in r.stdout and "replaced" not in r.stdout
    assert (tmp_path / "runs" / "seed_mnist-batch-find-2.png").read_bytes().startswith(PNG)


def test_lr_find_apply_refuses_an_existing_file_before_the_sweep(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tuned.toml"
    out.write_text("# mine\n")
    r = run_main(capsys, "lr-find", CONFIG, *QUICK, "--apply", str(out), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(f"dltune lr-find: error: --apply {out}: the file exists")
    assert "Traceback" not in r.stderr
    assert out.read_text() == "# mine\n"
    assert not (tmp_path / "runs").exists()  # refused before the sweep: no plot either


def test_lr_find_not_confident_says_so_and_falls_back_to_the_experiments_lr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep that never reaches the edge of stability (max lr 1e-4) is not confident: lr-find names the fallback,
    the experiment's own optim.lr, and --apply writes no file with a guess in it."""
    import json

    out = tmp_path / "tuned.toml"
    r = run_main(capsys, "lr-find", CONFIG, *QUICK, "--max-lr", "1e-4", "--set", "optim.lr=0.002", "--apply",
                 str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NOT confident" in r.stdout and "lr to use: 2.00e-03: the lr range test was not confident" in r.stdout
    assert "no file written" in r.stdout and not out.exists()
    r = run_main(capsys, "lr-find", CONFIG, *QUICK, "--max-lr", "1e-4", "--set", "optim.lr=0.002", "--json",
                 cwd=tmp_path)
    said = json.loads(r.stdout)
    assert not said["confident"] and said["use"] == 0.002 and said["applied"] is None
