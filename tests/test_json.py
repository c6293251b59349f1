"""Every command's --json is strict JSON: one document on stdout that a parser refusing NaN and Infinity (Python's
parse_constant, jq, JavaScript's JSON.parse) reads; a number that is not finite is null. Each command runs here on
tiny data made to hold such numbers: a diverged variant and trial, a variant identical to the baseline, one seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from conftest import run_main
from dltune.cli import build_parser

TINY = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]}, "train": {"epochs": 2},
        "ablation": {"seeds": 1, "variants": {"same": {"batch.eval_size": 512},
                                              "diverges": {"optim.name": "sgd", "optim.lr": 1e30}}},
        "search": {"trials": 3, "pruner": "none", "sampler": "grid",
                   "space": {"optim.lr": [1e-3, 1e30], "optim.name": ["sgd"]}}}


def strict(text: str):
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _commands_with_json() -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name for name, p in sub.choices.items() if any(a.dest == "json" for a in p._actions)}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("json")
    (folder / "tiny.toml").write_text(tomli_w.dumps(TINY))
    x = np.full((3, 8, 8), 4.0)
    np.savez(folder / "x.npz", x=x)
    return folder


def _runs(folder: Path) -> list[tuple[str, list[str]]]:
    exp = str(folder / "tiny.toml")
    return [
        ("config", ["config", exp]),
        ("datasets", ["datasets"]),
        ("example", ["example"]),
        ("models", ["models"]),
        ("train", ["train", exp, "--set", "optim.name=sgd", "--set", "optim.lr=1e30", "--out", str(folder / "div")]),
        ("train", ["train", exp, "--out", str(folder / "run")]),
        ("ablate", ["ablate", exp, "--out", str(folder / "abl")]),
        ("report", ["report", str(folder / "abl")]),
        ("tune", ["tune", exp, "--out", str(folder / "search")]),
        ("lr-find", ["lr-find", exp, "--steps", "20", "--plot", str(folder / "lr.png")]),
        ("batch-find", ["batch-find", exp, "--sizes", "16,32", "--plot", str(folder / "b.png")]),
        ("loader-find", ["loader-find", exp, "--workers", "0", "--threads", "1", "--repeats", "1"]),
        ("profile", ["profile", exp, "--steps", "5", "--set", "optim.name=sgd", "--set", "optim.lr=1e30"]),
        ("compress", ["compress", str(folder / "run"), "--methods", "onnx", "--out", str(folder / "c")]),
        ("ensemble", ["ensemble", "--variant", "baseline", str(folder / "abl"), "--out", str(folder / "e")]),
        ("predict", ["predict", str(folder / "run"), "--input", str(folder / "x.npz"), "--output",
                     str(folder / "p.csv")]),
    ]


def test_every_commands_json_parses_strictly(made: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _runs(made)
    assert {name for name, _ in runs} == _commands_with_json()  # a new command with --json is added here
    for name, args in runs:
        done = run_main(capsys, *args, "--json", cwd=made)
        # exit 1, the run having failed, its JSON on stdout all the same (profile times the steps, finite or not)
        diverges = "optim.lr=1e30" in args and name != "profile"
        assert done.returncode == (1 if diverges else 0), (name, done.stderr)
        doc = strict(done.stdout)
        assert doc is not None, name
    diverged = strict(run_main(capsys, "train", str(made / "tiny.toml"), "--set", "optim.name=sgd", "--set",
                               "optim.lr=1e30", "--out", str(made / "div2"), "--json", cwd=made).stdout)
    assert diverged["status"] == "diverged"


def test_a_number_that_is_not_finite_is_printed_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    from dltune.cli.common import print_json

    print_json({"nan": float("nan"), "inf": [float("inf"), -float("inf"), np.float64("nan")], "one": (1.5, np.float32(2))})
    assert strict(capsys.readouterr().out) == {"nan": None, "inf": [None, None, None], "one": [1.5, 2.0]}
