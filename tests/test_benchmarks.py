"""The benchmarks' verdict on a target: met, not met within what this machine allows, or a real miss."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verdict = load("_verdict").verdict
SOURCE = "1-thread vs 2-thread loop speed"


@pytest.mark.parametrize(("value", "kwargs", "expected"), [
    (1.7, {}, "met"),
    (1.6, {}, "met"),  # the target itself is met
    (1.7, {"limit": 1.31, "source": SOURCE}, "met"),
    (1.12, {}, "NOT met"),
    # the limit measured here is below the target: not met, and not alarming
    (1.12, {"limit": 1.31, "source": SOURCE}, f"not met (limit here: 1.31, from {SOURCE})"),
    (1.12, {"limit": 1.31}, "not met (limit here: 1.31)"),
    # the machine would allow the target: a real miss
    (1.12, {"limit": 1.9, "source": SOURCE}, f"NOT met (limit here: 1.90, from {SOURCE})"),
])
def test_verdict_higher_is_better(value: float, kwargs: dict, expected: str) -> None:
    assert verdict(value, 1.6, **kwargs) == expected


def test_verdict_lower_is_better_and_its_own_format() -> None:
    assert verdict(0.21, 0.25, higher=False) == "met"
    assert verdict(0.36, 0.25, higher=False) == "NOT met"
    percent = "{:.0%}".format
    assert verdict(0.45, 0.5, limit=0.46, shown=percent, source="a bare loop") == \
        "not met (limit here: 46%, from a bare loop)"
    assert verdict(0.04, 0.03, higher=False, limit=0.05, shown=percent) == "not met (limit here: 5%)"


@pytest.mark.parametrize("name", ["bench_ensemble", "bench_jobs", "bench_loop", "bench_lr_find", "bench_precision",
                                  "bench_startup", "bench_suite", "bench_time_to_accuracy", "bench_tune"])
def test_every_benchmark_words_its_verdicts_with_the_helper(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script
    module = load(name)
    assert module.verdict.__module__ == "_verdict"
    assert "NOT met" not in (ROOT / "benchmarks" / f"{name}.py").read_text()


def test_the_suite_prints_its_committed_tables_and_its_problems_are_experiments(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """bench_suite --from renders the README's tables from benchmarks/results/suite.json without training, and every
    problem of the suite is a valid experiment with a search space (the suite itself runs in benchmarks, not here)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    suite = load("bench_suite")
    assert suite.main(["--from", str(ROOT / "benchmarks" / "results" / "suite.json"), "--markdown"]) == 0
    printed = capsys.readouterr().out
    problems = load("problems").PROBLEMS
    assert len(problems) >= 6 and all(f"| {name} |" in printed for name in problems)
    for problem in problems.values():
        config = problem.config()
        assert config.search.space and config.search.objectives == (problem.objective,)
        assert config.train.epochs == problem.epochs and config.parallel.threads == 1
