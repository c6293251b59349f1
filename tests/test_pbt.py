"""PBT's decision (study.pbt.decide) as a pure function, table-driven: who copies whom, how settings are explored,
and that the same values and seed give the same decision; and train.changes, the per-epoch settings a member's
schedule is written in, which a plain `train` follows exactly as a run that was changed between epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from dltune import load_config, train
from dltune.errors import ConfigError
from dltune.experiment.config import override
from dltune.study.pbt import Member, boundaries, check_population, decide, explore, in_quantile
from dltune.study.space import Entry, parse_space

LR = Entry("optim.lr", "float", low=1e-3, high=1.0, log=True)
MOMENTUM = Entry("optim.momentum", "categorical", choices=(0.5, 0.9, 0.99))
GRID = Entry("optim.weight_decay", "float", low=0.0, high=0.1, step=0.01)


def members(*values: float | None) -> list[Member]:
    return [Member(i, v, {"optim.lr": 0.01 * (i + 1)}) for i, v in enumerate(values)]


@pytest.mark.parametrize(("population", "quantile", "expected"), [
    (8, 0.25, 2), (4, 0.25, 1), (5, 0.25, 2), (2, 0.25, 1), (3, 0.5, 1), (10, 0.5, 5), (8, 0.01, 1),
])
def test_members_in_a_quantile_are_at_most_half(population: int, quantile: float, expected: int) -> None:
    assert in_quantile(population, quantile) == expected


@pytest.mark.parametrize(("values", "maximize", "copiers", "donors"), [
    # 4 members, quantile 0.25: the one worst copies the one best
    ((0.9, 0.5, 0.7, 0.8), True, {1}, {0}),
    ((0.9, 0.5, 0.7, 0.8), False, {0}, {1}),  # minimizing: the highest is worst
    ((0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), True, {0, 1}, {6, 7}),  # 8 members: the 2 worst copy the 2 best
    ((0.5, 0.5, 0.5, 0.5), True, {3}, {0}),  # ties: ranked by number, so the last is "worst"
    ((0.9, None, 0.7, 0.8), True, {1}, {0}),  # no value (diverged): copies, as the worst
    ((0.9, None, None, 0.8, 0.1, 0.2, 0.3, 0.4), True, {1, 2}, {0, 3}),  # those without a value rank last
    ((None, None, None, 0.8), True, {0, 1, 2}, {3}),  # and copy, beyond the quantile: they have no state
])
def test_the_bottom_quantile_copies_the_top(values: tuple, maximize: bool, copiers: set[int],
                                            donors: set[int]) -> None:
    steps = decide(members(*values), [LR], quantile=0.25, resample_probability=0.0, perturb=(0.8, 1.2),
                   maximize=maximize, seed=[0, 1])
    assert [s.member for s in steps] == list(range(len(values)))
    assert {s.member for s in steps if s.exploited} == copiers
    assert {s.source for s in steps if s.exploited} <= donors
    for s in steps:
        if not s.exploited:  # the others go on as they are: their own state, their own settings, nothing changed
            assert s.source == s.member and s.settings == {"optim.lr": 0.01 * (s.member + 1)} and not s.changed


def test_a_copier_explores_its_donors_settings_by_a_perturb_factor() -> None:
    steps = decide(members(0.9, 0.5, 0.7, 0.8), [LR], quantile=0.25, resample_probability=0.0, perturb=(0.8, 1.2),
                   maximize=True, seed=[3, 2])
    (copier,) = [s for s in steps if s.exploited]
    assert copier.source == 0
    assert copier.changed["optim.lr"] in ("×0.8", "×1.2")
    factor = float(copier.changed["optim.lr"][1:])
    assert copier.settings["optim.lr"] == pytest.approx(0.01 * factor)  # the donor's lr (0.01), not its own (0.02)


@pytest.mark.parametrize(("entry", "before", "factor", "after"), [
    (LR, 0.9, 1.2, 1.0),  # clipped to the space's high
    (LR, 0.0011, 0.8, 1e-3),  # and low
    (GRID, 0.05, 1.2, 0.06),  # on the step's grid
    (GRID, 0.02, 0.8, 0.02),  # 0.016 rounds back to the grid point 0.02
])
def test_a_perturbed_value_stays_a_point_of_the_space(entry: Entry, before: float, factor: float,
                                                      after: float) -> None:
    settings, how = explore({entry.path: before}, [entry], 0.0, (factor,), np.random.default_rng(0))
    assert settings[entry.path] == pytest.approx(after) and how == {entry.path: f"×{factor:g}"}


def test_a_categorical_moves_to_a_neighbouring_choice_and_resampling_draws_from_the_space() -> None:
    seen = set()
    for seed in range(20):
        settings, how = explore({"optim.momentum": 0.9}, [MOMENTUM], 0.0, (0.8, 1.2), np.random.default_rng(seed))
        seen.add((settings["optim.momentum"], how["optim.momentum"]))
    assert seen == {(0.5, "down"), (0.99, "up")}
    drawn = [explore({"optim.lr": 0.01}, [LR], 1.0, (0.8, 1.2), np.random.default_rng(s))[0]["optim.lr"]
             for s in range(50)]
    assert all(1e-3 <= v <= 1.0 for v in drawn) and len(set(drawn)) == 50
    assert sum(v < 0.0316 for v in drawn) > 10  # log-uniform: about half below the geometric middle


def test_the_same_values_and_seed_give_the_same_decision_and_another_seed_may_not() -> None:
    population = members(*[0.1 * i for i in range(8)])
    kwargs = {"quantile": 0.25, "resample_probability": 0.25, "perturb": (0.8, 1.2), "maximize": True}
    first = decide(population, [LR], seed=[7, 3], **kwargs)
    assert decide(list(reversed(population)), [LR], seed=[7, 3], **kwargs) == first  # order of arrival: no matter
    others = [decide(population, [LR], seed=[7, g], **kwargs) for g in range(4, 12)]
    assert any(o != first for o in others)


def test_a_population_with_no_value_left_is_an_error() -> None:
    with pytest.raises(ConfigError, match="every member of the population diverged"):
        decide(members(None, None), [LR], quantile=0.25, resample_probability=0.0, perturb=(0.8, 1.2),
               maximize=True, seed=[0, 1])


@pytest.mark.parametrize(("epochs", "interval", "ends"), [(10, 2, [2, 4, 6, 8, 10]), (7, 3, [3, 6, 7]),
                                                           (3, 1, [1, 2, 3])])
def test_generations_end_every_interval_and_at_the_last_epoch(epochs: int, interval: int, ends: list[int]) -> None:
    assert boundaries(epochs, interval) == ends


@pytest.mark.parametrize(("search", "space", "message"), [
    ({}, {"model.hidden": [[16], [32]]}, "search.space.model.hidden: PBT .* cannot change mid-run"),
    ({}, {"batch.size": [32, 64]}, "search.space.batch.size: PBT"),
    ({"interval": 3}, {"optim.lr": {"low": 0.01, "high": 0.1}}, "search.interval: 3 epochs between decisions"),
    ({"objectives": ["val.accuracy", "parameters"]}, {"optim.lr": {"low": 0.01, "high": 0.1}},
     "search.objectives: PBT ranks"),
])
def test_what_pbt_cannot_do_is_refused_naming_the_key(search: dict, space: dict, message: str) -> None:
    config = load_config({"train": {"epochs": 3}, "search": {"pruner": "pbt", "space": space, **search}})
    with pytest.raises(ConfigError, match=message):
        check_population(config.search, parse_space(space, config), config, len(config.search.objectives))


SMALL = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]},
         "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.5}, "train": {"epochs": 4}}


def test_changes_set_the_optimizer_from_their_epoch_on() -> None:
    config = load_config({**SMALL, "schedule": {"name": "step", "step_size": 1, "gamma": 0.5},
                          "train": {"epochs": 4, "changes": [{"epoch": 3, "optim.lr": 0.1, "optim.momentum": 0.9,
                                                              "optim.weight_decay": 1e-3}]}})
    result = train(config)
    # the step schedule halves the lr every epoch; from epoch 3 the base lr is 0.1 instead of 0.05
    assert [e["lr"] for e in result.epochs] == pytest.approx([0.05, 0.025, 0.1 * 0.25, 0.1 * 0.125])


def test_a_run_resumed_between_changes_ends_as_the_run_that_never_stopped(tmp_path: Path) -> None:
    changes = [{"epoch": 2, "optim.lr": 0.1}, {"epoch": 4, "optim.lr": 0.02, "optim.momentum": 0.9}]
    config = load_config({**SMALL, "train": {"epochs": 4, "changes": changes}})
    whole = train(config, out_dir=tmp_path / "whole")

    def pause_at_3(epoch: int, record: dict) -> str | None:
        return "pause" if epoch == 3 else None

    from dltune.run.checkpoints import Paused

    with pytest.raises(Paused):
        train(config, pause_at_3, out_dir=tmp_path / "paused")
    resumed = train(config, out_dir=tmp_path / "paused", resume=True)
    assert resumed.epochs == [{**e, "seconds": r["seconds"], "eval_seconds": r["eval_seconds"],
                               "samples_per_second": r["samples_per_second"]}
                              for e, r in zip(whole.epochs, resumed.epochs, strict=True)]
    assert resumed.test == whole.test


@pytest.mark.parametrize(("changes", "message"), [
    ([{"epoch": 1, "optim.lr": 0.1}], r"train.changes: \[0\]: each change needs an epoch, an integer after 1"),
    ([{"epoch": 3, "optim.lr": 0.1}, {"epoch": 3, "optim.lr": 0.2}], r"\[1\]: each change needs an epoch"),
    ([{"epoch": 3, "model.hidden": [8]}], r"\[0\].model.hidden: not a setting that can change during training"),
    ([{"epoch": 3, "optim.momentum": 1.5}], r"\[0\].optim.momentum: must be a number in \[0.0, 1.0\)"),
    ([{"epoch": 3}], r"\[0\]: changes nothing"),
    ([{"epoch": 9, "optim.lr": 0.1}], r"train.changes\[0\].epoch: 9 is after the last epoch \(4\)"),
])
def test_bad_changes_are_refused_naming_the_entry(changes: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(override(load_config(SMALL), {"train.changes": changes}))


def test_momentum_changes_with_sgd_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exp.toml").write_text('[optim]\nname = "adam"\n[train]\nepochs = 3\nchanges = '
                                       '[{ epoch = 2, "optim.momentum" = 0.9 }]\n')
    done = run_main(capsys, "train", "exp.toml", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert 'train.changes[0].optim.momentum: changes with optim.name = "sgd" only, not \'adam\'' in done.stderr
    assert not (tmp_path / "run").exists()


def test_changes_are_left_out_of_config_toml_when_there_are_none(tmp_path: Path) -> None:
    result = train(load_config({**SMALL, "train": {"epochs": 1}}), out_dir=tmp_path / "run")
    assert "changes" not in (tmp_path / "run" / "config.toml").read_text()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == result.status
