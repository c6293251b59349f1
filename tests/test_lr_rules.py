"""The lr finder's rules and confidence on synthetic range-test curves (no training), and what the CLI says."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import ROOT, run_main
from dltune.tuner.finders import _suggest  # noqa: PLC2701 - the finder's decision, a pure function of the curve
from dltune.tuner.lr_rules import AGREEMENT, CONSTANT_RULE, NO_EDGE_RULE, PEAK_RULE, RULES, SHOWN, curve_rules, rule_for
from dltune.techniques.schedules import SCHEDULES

STEPS = 100


def curve(blow_up: bool = True, noise: float = 0.0) -> tuple[list[float], list[float]]:
    """A range test's loss: flat at 2.3, falling to 0.3 around lr 1e-3 (log-logistic), then rising from 1e-1;
    with blow_up, it rises tenfold by lr 10, else by a third."""
    lrs = np.logspace(-7, 1, STEPS)
    x = np.log10(lrs)
    loss = 0.3 + 2.0 / (1 + np.exp(3 * (x + 3)))
    loss += np.clip(x + 2, 0, None) ** 2 * (1.0 if blow_up else 0.05)
    loss *= 1 + noise * np.random.default_rng(0).standard_normal(STEPS)
    return list(lrs), list(loss)


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    avg, out = 0.0, []
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], losses: list[float], schedule: str = "constant"):
    smoothed = smooth(losses)
    best, n = math.inf, len(lrs)
    for i, v in enumerate(smoothed):  # where lr_find would stop: past 4x the best smoothed loss
        best = min(best, v)
        if v > 4 * best:
            n = i + 1
            break
    return _suggest(lrs[:n], losses[:n], smoothed[:n], n < len(lrs), STEPS, schedule)


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_every_schedule_has_a_rule_constant_its_own(schedule: str) -> None:
    assert rule_for(schedule) in SHOWN and set(SHOWN) <= set(RULES)
    assert rule_for(schedule) == (CONSTANT_RULE if schedule == "constant" else PEAK_RULE)
    assert rule_for(schedule, blew_up=False) == NO_EDGE_RULE in SHOWN


def test_rules_on_a_curve_against_their_definitions() -> None:
    lrs, losses = curve()
    lr, s = np.array(lrs), np.array(smooth(losses))
    low = float(lr[int(np.argmin(s))])
    rules = curve_rules(lr, s)
    assert rules["min/10"] == pytest.approx(low / 10) and rules["min/3"] == pytest.approx(low / 3)
    assert rules["geo(steep,min/3)"] == pytest.approx(math.sqrt(rules["steepest"] * low / 3))
    assert rules["geo(steep,min/10)"] == pytest.approx(math.sqrt(rules["steepest"] * low / 10))
    assert rules["min/2"] == pytest.approx(low / 2) and rules["min"] == pytest.approx(low)
    falling = np.gradient(s, np.log10(lr))
    assert rules["steepest"] == lr[int(np.argmin(falling[1:-1])) + 1]
    assert 1e-4 < rules["valley"] < rules["min/3"] < low  # the valley lies on the descent, below the minimum


@pytest.mark.parametrize(("schedule", "rule"), [("constant", "geo(steep,min/10)"), ("onecycle", "min/2"),
                                               ("cosine", "min/2")])
def test_a_clean_curve_that_blows_up_is_confident_with_the_schedules_rule(schedule: str, rule: str) -> None:
    result = suggest(*curve(), schedule=schedule)
    assert result.confident and result.reasons == [] and result.stopped_early
    assert result.rule == rule and result.suggested == result.suggestions[rule]
    assert set(result.suggestions) == set(SHOWN)
    agreeing = [result.suggestions[name] for name in AGREEMENT]
    assert result.spread_decades == pytest.approx(math.log10(max(agreeing) / min(agreeing)))


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_a_curve_that_never_blows_up_is_not_confident_and_suggests_min_over_10(schedule: str) -> None:
    result = suggest(*curve(blow_up=False), schedule=schedule)
    assert not result.stopped_early and not result.confident
    assert result.rule == "min/10" and result.suggested == result.suggestions["min/10"]
    assert any("never blew up" in r for r in result.reasons)


def test_no_descent_and_noise_withhold_the_suggestion() -> None:
    lrs, _ = curve()
    flat = suggest(lrs, [2.3] * STEPS)
    assert flat.suggested is None and not flat.confident and flat.reasons[0].startswith("no descent")
    noisy = suggest(*curve(noise=3.0))
    assert noisy.suggested is None and any(r.startswith("too noisy") for r in noisy.reasons)


def test_a_sweep_that_diverges_at_once_suggests_nothing() -> None:
    lrs, losses = curve()
    result = _suggest(lrs[:3], losses[:3], smooth(losses)[:3], True, STEPS, "constant")
    assert result.suggested is None and not result.confident and result.reasons[0].startswith("diverged at once")
    assert result.rule == CONSTANT_RULE


@pytest.mark.parametrize(("schedule", "says"), [("constant", "rule, as a constant lr)"),
                                                ("onecycle", "rule, as the peak of the onecycle schedule)")])
def test_cli_names_the_rule_of_the_suggestion(tmp_path, schedule: str, says: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # the CLI's main in this process: lr-find in a process of its own is test_finder_cli's
    config = str(ROOT / "examples" / "seed_mnist.toml")
    common = ("--set", "data.limit=500", "--set", f"schedule.name={schedule}", "--plot", str(tmp_path / "lr.png"))
    doc = json.loads(run_main(capsys, "lr-find", config, *common, "--json", cwd=tmp_path).stdout)
    assert doc["rule"] == rule_for(schedule, doc["stopped_early"])
    assert doc["suggested"] == doc["suggestions"][doc["rule"]]
    text = run_main(capsys, "lr-find", config, *common, cwd=tmp_path).stdout
    line = next(line for line in text.splitlines() if line.startswith("suggested lr: "))
    assert line == f"suggested lr: {doc['suggested']:.2e} ({doc['rule']} {says}"
