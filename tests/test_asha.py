"""ASHA with paused trials: rungs, the promotion rule and its budget, and whole searches that pause."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from dltune.study.asha import Move, Turn, next_move, promotable, rungs, weakest
from dltune.study.rank_check import RANK_P, rank_checks, replay
from dltune.experiment.config import load_config
from dltune.study.records import TuneData
from dltune.run.results import RUN_FILES
from dltune import train
from dltune.study.sharing import training_elsewhere
from dltune.study.tune import tune

SPACE = {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "model.hidden": [[8], [32]]}


def trials(*curves: dict[int, float]) -> list[optuna.trial.FrozenTrial]:
    """Trials numbered 0, 1, ... with these per-epoch values, all running."""
    out = []
    for number, curve in enumerate(curves):
        t = create_trial(state=TrialState.RUNNING, intermediate_values=curve)
        t.number = number
        out.append(t)
    return out


def turn(finished: int = 0, running: int = 0, target: int = 6, late: bool = False, heartbeats: bool = True,
         elsewhere: bool = False) -> Turn:
    return Turn(finished=finished, running=running, target=target, late=late, heartbeats=heartbeats,
                training_elsewhere=elsewhere)


@pytest.fixture
def no_witness(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASHA's promotions from the top alone, as the paper has them: the tests of that rule (a witness takes every
    fourth promotion from the second on; its own test below)."""
    import dltune.study.asha

    monkeypatch.setattr(dltune.study.asha, "WITNESS_EVERY", 0)


# six trials at rung 1 (η = 3: two slots); trial 5 went on already
SIX = trials({1: 0.1}, {1: 0.2}, {1: 0.3}, {1: 0.4}, {1: 0.6}, {1: 0.9, 3: 0.95})
NEXT_MOVES = [
    # (situation, turn, paused, max_paused, move)
    ("a fresh study starts a trial", turn(), {}, 16, Move("start")),
    ("at its target with nothing paused, the worker ends", turn(finished=6, target=6), {}, 16, Move("end")),
    ("past its timeout with nothing paused, the worker ends", turn(finished=2, late=True), {}, 16, Move("end")),
    ("a promotable paused trial goes on before a new one starts", turn(finished=1, running=5, target=12),
     {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, 16, Move("resume", 4)),
    ("a paused trial outside the top waits while a new trial starts", turn(finished=1, running=4, target=12),
     {0: 1, 1: 1, 2: 1, 3: 1}, 16, Move("start")),
    ("more paused than max_paused: the weakest at the lowest rung is saved to disk", turn(running=5, target=12),
     {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, 4, Move("spill", 0)),
    ("no room and another worker's trial on its way: wait for it", turn(finished=2, running=4, elsewhere=True),
     {0: 1, 1: 1, 2: 1, 3: 1}, 16, Move("wait")),
    ("no room, nothing on its way, none promotable: prune one", turn(finished=2, running=4),
     {0: 1, 1: 1, 2: 1, 3: 1}, 16, Move("prune", 0)),
    ("past the timeout, paused trials are pruned, not promoted", turn(finished=1, running=5, target=12, late=True),
     {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, 16, Move("prune", 0)),
    ("the last trials run elsewhere, with heartbeats: wait for them", turn(finished=4, running=2), {}, 16,
     Move("wait")),
    ("the last trials run elsewhere, on a journal file: end", turn(finished=4, running=2, heartbeats=False), {},
     16, Move("end")),
]


@pytest.mark.parametrize(("situation", "now", "paused", "max_paused", "move"), NEXT_MOVES,
                         ids=[row[0] for row in NEXT_MOVES])
def test_next_move(situation: str, now: Turn, paused: dict[int, int], max_paused: int, move: Move,
                   no_witness: None) -> None:
    assert next_move(now, SIX, paused, factor=3, maximize=True, max_paused=max_paused) == move


def test_only_trials_held_in_memory_count_against_max_paused(no_witness: None) -> None:
    paused = {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    now = turn(running=5, target=12)
    assert next_move(now, SIX, paused, factor=3, maximize=True, max_paused=2, held=[2, 3, 4]) == Move("spill", 2)
    assert next_move(now, SIX, paused, factor=3, maximize=True, max_paused=2, held=[3, 4]) == Move("resume", 4)


def test_draining_promotes_the_best_of_a_small_rung() -> None:
    # no room left: a rung of two trials (fewer than η) promotes its best instead of pruning both
    two = trials({1: 0.5}, {1: 0.7})
    assert next_move(turn(finished=0, running=2, target=2), two, {0: 1, 1: 1}, factor=3, maximize=True,
                     max_paused=16) == Move("resume", 1)


def test_rungs_are_geometric_below_the_training_length() -> None:
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(1, 4, 10) == [1, 4]
    assert rungs(2, 2, 17) == [2, 4, 8, 16]
    assert rungs(1, 3, 1) == []


def test_a_rung_of_fewer_than_eta_trials_waits_until_no_new_trial_will_come() -> None:
    study = trials({1: 0.5}, {1: 0.7})
    assert promotable(study, {0: 1, 1: 1}, 3, maximize=True, draining=False) is None
    assert promotable(study, {0: 1, 1: 1}, 3, maximize=True, draining=True) == 1  # the best
    assert promotable(study, {0: 1, 1: 1}, 3, maximize=False, draining=True) == 0  # lower is better


def test_promotion_is_from_the_top_and_capped_at_n_over_eta(no_witness: None) -> None:
    # six trials at rung 1: two slots. Trial 5 (the best) went on already; trial 4 (second) is paused
    six = trials({1: 0.1}, {1: 0.2}, {1: 0.3}, {1: 0.4}, {1: 0.6}, {1: 0.9, 3: 0.95})
    assert promotable(six, {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}, 3, maximize=True, draining=False) == 4
    assert promotable(six, {0: 1, 1: 1, 2: 1, 3: 1}, 3, maximize=True, draining=False) is None  # not in the top 2
    # both slots used (trials 4 and 5 went on): the third best waits, even when nothing new will come
    spent = trials({1: 0.1}, {1: 0.2}, {1: 0.3}, {1: 0.4}, {1: 0.6, 3: 0.7}, {1: 0.9, 3: 0.95})
    assert promotable(spent, {0: 1, 1: 1, 2: 1, 3: 1}, 3, maximize=True, draining=True) is None


def test_the_highest_rung_is_served_first() -> None:
    study = trials({1: 0.9}, {1: 0.8}, {1: 0.7}, {1: 0.6, 3: 0.9}, {1: 0.5, 3: 0.8}, {1: 0.4, 3: 0.7})
    # rung 1: six trials, two slots, one used (trial 3 went on) -> trial 0 promotable;
    # rung 3: three trials, one slot, unused -> trial 3 (paused there) comes first
    assert promotable(study, {0: 1, 3: 3}, 3, maximize=True, draining=False) == 3
    assert weakest(study, {0: 1, 1: 1, 2: 1, 3: 3}, maximize=True) == 2


def experiment(**search) -> dict:
    return {"data": {"name": "digits", "limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3},
            "search": {"trials": 9, "sampler": "random", "pruner": "asha", "reduction_factor": 3, "space": SPACE,
                       **search}}


def test_a_search_spends_the_successive_halving_budget(tmp_path: Path) -> None:
    # 9 trials of 3 epochs, one rung at epoch 1 with η = 3: 9·1 + 3·2 = 15 epochs, 3 trials complete
    data = tune(load_config(experiment()), out_dir=tmp_path)
    assert sum(len(t.epochs) for t in data.trials) == 15
    assert sorted(t.state for t in data.trials) == ["COMPLETE"] * 3 + ["PRUNED"] * 6
    assert all(t.pruned_at == 1 and len(t.epochs) == 1 for t in data.trials if t.state == "PRUNED")


def test_a_trial_that_waited_at_a_rung_trains_on_as_if_it_had_not(tmp_path: Path) -> None:
    # while a trial waits at epoch 1, others seed and draw from torch's global generator (shuffling, dropout);
    # it gets its own state back when it goes on, so its experiment file alone reproduces it
    config = experiment()
    config["model"]["dropout"] = 0.3
    data = tune(load_config(config), out_dir=tmp_path)
    complete = [t for t in data.trials if t.state == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        again = train(Path(t.run_dir) / "config.toml", out_dir=tmp_path / f"again-{t.number}")
        assert [(e["train"], e["val"]) for e in again.epochs] == [(e["train"], e["val"]) for e in t.epochs]
        assert again.test == t.test


def test_trials_beyond_max_paused_wait_on_disk_and_go_on_exactly(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # with at most one trial held in memory, the others wait at the rung on disk (their threads end) and are loaded
    # when promoted or stopped: the search is the same, trial by trial, as one that holds them all in memory
    config = experiment(max_paused=16)
    config["model"]["dropout"] = 0.3  # draws from torch's generator, which the checkpoint keeps
    config["regularization"] = {"early_stopping": 5}  # its best weights too
    held = tune(load_config(config), out_dir=tmp_path / "held")
    config["search"]["max_paused"] = 1
    saved: list[int] = []
    loop = sys.modules["dltune.run.loop"]
    save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda run_dir, c: (saved.append(c.epoch), save(run_dir, c)))
    spilled = tune(load_config(config), out_dir=tmp_path / "spilled")
    assert len(saved) >= 4  # trials did wait on disk

    def seen(data: TuneData) -> list[tuple]:
        return [(t.number, t.state, t.params, t.values, t.pruned_at, t.test,
                 [(e["train"], e.get("val")) for e in t.epochs]) for t in data.trials]

    assert seen(spilled) == seen(held)
    assert sum(len(t.epochs) for t in spilled.trials) == 15
    for t in spilled.trials:  # every trial folder whole, no checkpoint left behind
        assert sorted(p.name for p in Path(t.run_dir).iterdir()) == sorted(RUN_FILES)


@pytest.mark.parametrize("max_paused", [16, 1], ids=["in memory", "on disk"])
def test_an_interrupt_marks_the_trials_it_cut_short_and_the_next_tune_trains_them(tmp_path: Path,
                                                                                   max_paused: int) -> None:
    """The running trial and the paused ones (in memory or on disk) are recorded as interrupted, with the reason, not
    as failed; each one's configuration is queued again, and the next run of the search trains it."""
    config = load_config(experiment(max_paused=max_paused))
    asked = iter(range(10_000))
    with pytest.raises(KeyboardInterrupt):
        tune(config, out_dir=tmp_path, should_stop=lambda: next(asked) >= 12)
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state for t in study.get_trials()]
    cut = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert TrialState.RUNNING not in states and len(cut) >= 2  # the paused ones too
    queued = {t.user_attrs["requeued_from"]: t for t in study.get_trials() if t.state == TrialState.WAITING}
    for t in cut:
        assert "error" not in t.user_attrs and t.user_attrs["interrupted"].startswith("the search was stopped (Ctrl-C)")
        again = queued[t.number]
        assert again.system_attrs["fixed_params"] == t.params  # Optuna keeps a queued trial's parameters there
        assert f"queued again as trial {again.number}," in t.user_attrs["interrupted"]
    assert any("while it waited at the rung of epoch 1" in t.user_attrs["interrupted"] for t in cut)
    data = tune(config, out_dir=tmp_path)
    assert sum(t.state in ("COMPLETE", "PRUNED") for t in data.trials) == 9
    assert any(t.state == "COMPLETE" for t in data.trials)
    records = {t.number: t for t in data.trials}
    for t in cut:  # read back as interrupted, and their configurations trained by the trial queued for each
        assert records[t.number].state == "INTERRUPTED" and records[t.number].interrupted == t.user_attrs["interrupted"]
        assert records[queued[t.number].number].state in ("COMPLETE", "PRUNED")
        assert records[queued[t.number].number].params == records[t.number].params
    assert not any(t.state == "FAIL" for t in data.trials)
    from dltune.report.tune_report import write_tune_report

    html = write_tune_report(data, tmp_path / "report.html").read_text()
    assert f"<b>{len(cut)}</b> interrupted (queued again)" in html and "<b>0</b> failed" in html
    assert '<section id="interrupted"><h2>Interrupted trials</h2>' in html and 'id="failed"' not in html
    for folder in (tmp_path / "trials").iterdir():  # whole, or never written: the failed trials left nothing
        assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_FILES)


def test_two_processes_share_the_rungs(tmp_path: Path) -> None:
    # 12 trials: ⌊12/3⌋ = 4 go on, one more at most when both processes fill the last slot at the same moment
    data = tune(load_config(experiment(trials=12)), out_dir=tmp_path, jobs=2)
    run = [t for t in data.trials if t.state != "WAITING"]  # WAITING: created for a place already taken, never run
    complete = [t for t in run if t.state == "COMPLETE"]
    assert len(run) == 12 and len(complete) in (4, 5)
    assert sum(len(t.epochs) for t in run) == 12 + 2 * len(complete)


def test_a_draining_worker_waits_for_trials_training_elsewhere_but_not_for_dead_ones() -> None:
    study = optuna.create_study()  # in memory: no heartbeats, like the journal file
    training, waiting = study.ask(), study.ask()
    waiting.set_user_attr("waiting_at", 1)
    seen: dict[int, tuple[int, float]] = {}
    assert training_elsewhere(study.get_trials(), beats=False, seen=seen) and set(seen) == {training.number}
    seen[training.number] = (0, time.monotonic() - 61)  # no new epoch for 61 s: its worker is taken as dead
    assert not training_elsewhere(study.get_trials(), beats=False, seen=seen)
    training.report(0.5, 1)  # a new epoch: alive again
    assert training_elsewhere(study.get_trials(), beats=False, seen=seen)
    study.tell(training, 0.5)
    assert not training_elsewhere(study.get_trials(), beats=True, seen={})  # the other trial waits at its rung


# --- ASHA checks its own assumption: a rung whose ranks disagree with later ranks stops holding trials back ---

SYNTHETIC = Path(__file__).parent / "synthetic_curves"


def synthetic(tmp_path: Path, curve: str) -> Path:
    """16 trials of 8 epochs whose validation accuracy follows synthetic_curves.CURVES[curve] of their x, searched
    by the default ASHA (η = 2: rungs at epochs 1, 2 and 4), trained by dltune's real loop."""
    path = tmp_path / f"{curve}.toml"
    path.write_text(f"""
[data]
name = "curves:load"
normalize = "none"
[model]
name = "curves:build"
args = {{ curve = "{curve}" }}
[batch]
size = 1000
[train]
epochs = 8
[search]
sampler = "random"
reduction_factor = 2
trials = 16
space = {{ "model.args.x" = {{ low = 0.0, high = 1.0 }} }}
[code]
paths = ["{SYNTHETIC.as_posix()}"]
""")
    return path


def final_accuracy(trial) -> float:
    return trial.epochs[-1]["val"]["accuracy"]


def test_a_study_whose_first_epoch_misleads_does_not_end_with_its_early_leader(tmp_path: Path) -> None:
    """Anti-correlated: the epoch-1 leaders end worst. ASHA alone keeps them (shown by replay on the same curves);
    the check finds ρ < 0 at epoch 1 and lets the trials waiting there go on, and the search ends with the trial
    that a full search would pick."""
    from synthetic_curves.curves import CURVES

    data = tune(load_config(synthetic(tmp_path, "anti")), out_dir=tmp_path / "out")
    xs = {t.number: t.params["model.args.x"] for t in data.trials}
    leader = max(xs, key=lambda n: CURVES["anti"](xs[n], 1))  # best at epoch 1
    assert data.pruner == "asha" and data.best and data.best[0] != leader
    assert data.best[0] == min(xs, key=xs.get)  # the lowest x ends best: a full search's answer
    assert [m["epoch"] for m in data.rungs_moved] == [1] and data.rungs_moved[0]["p"] < RANK_P
    assert "first rung moved to epoch 2" in data.rungs_moved[0]["said"]
    curves = [[CURVES["anti"](xs[n], e) for e in range(1, 9)] for n in sorted(xs)]
    blind = replay(curves, factor=2, min_epochs=1, checks=False)  # ASHA without the check, on the same trials
    assert blind.best != min(xs, key=xs.get) and not blind.moved


def test_a_study_whose_ranks_agree_keeps_ashas_exact_budget(tmp_path: Path) -> None:
    """Ranks agree at every epoch: nothing moves, and the search spends successive halving's budget exactly:
    16 trials x 1 epoch + 8 x 1 + 4 x 2 + 2 x 4 = 40 epochs, the same as ASHA without the check."""
    from synthetic_curves.curves import CURVES

    data = tune(load_config(synthetic(tmp_path, "agree")), out_dir=tmp_path / "out")
    assert not data.rungs_moved
    assert sum(len(t.epochs) for t in data.trials) == 40
    assert sorted(t.state for t in data.trials) == ["COMPLETE"] * 2 + ["PRUNED"] * 14
    xs = {t.number: t.params["model.args.x"] for t in data.trials}
    curves = [[CURVES["agree"](xs[n], e) for e in range(1, 9)] for n in sorted(xs)]
    assert replay(curves, factor=2, min_epochs=1, checks=False).epochs == 40 == \
        replay(curves, factor=2, min_epochs=1).epochs


def test_a_rungs_check_needs_enough_trials_that_went_on() -> None:
    """ρ from the pairs (value at the rung, value at the next rung), tested one-sided against no association; below
    3 pairs, with ties, or with ranks that hold, a rung is trusted: no evidence against it."""
    two = trials(*({1: v, 3: 1 - v} for v in (0.1, 0.2)), {1: 0.5})  # 2 pairs: too few to act on
    assert rank_checks(two, [1, 3], 9, maximize=True)[1].pairs == 2 and rank_checks(two, [1, 3], 9, True)[1].trusted
    four = trials(*({1: v, 3: 1 - v} for v in (0.1, 0.2, 0.3, 0.4)))
    check = rank_checks(four, [1, 3], 9, maximize=True)[1]
    assert check.rho == pytest.approx(-1.0) and check.p < RANK_P and not check.trusted and check.later == 3
    assert rank_checks(four, [1, 3], 9, maximize=False)[1].rho == pytest.approx(-1.0)  # the sign does not matter
    held = trials(*({1: v, 3: v} for v in (0.1, 0.2, 0.3, 0.4)))
    assert rank_checks(held, [1, 3], 9, maximize=True)[1].trusted
    shuffled = trials(*({1: a, 3: b} for a, b in ((0.1, 0.2), (0.2, 0.4), (0.3, 0.1), (0.4, 0.3))))  # ρ = 0
    assert rank_checks(shuffled, [1, 3], 9, maximize=True)[1].trusted  # noise is no evidence of reversal
    before = trials(*({1: v, 2: 1 - v} for v in (0.1, 0.2, 0.3, 0.4)))  # not yet at the next rung (3): no pairs
    assert rank_checks(before, [1, 3], 9, maximize=True)[1].pairs == 0
    tied = trials(*({1: 0.5, 3: v} for v in (0.1, 0.2, 0.3, 0.4)))
    assert rank_checks(tied, [1, 3], 9, maximize=True)[1].trusted
    last = trials(*({1: 0.5, 3: v, 9: 1 - v} for v in (0.1, 0.2, 0.3, 0.4)))  # the last rung pairs with the end
    assert not rank_checks(last, [1, 3], 9, maximize=True)[3].trusted


def test_every_fourth_promotion_from_the_second_goes_to_a_witness_near_the_median() -> None:
    """The trials that went on from a rung are its best; a witness, the waiting trial nearest the rung's median,
    shows whether a typical trial keeps its place. Same count of promotions: the same budget."""
    eight = trials(*({1: v} for v in (0.1, 0.2, 0.3, 0.45, 0.5, 0.6, 0.7)), {1: 0.9, 3: 0.95})  # 8 trials, η 4: 2 slots
    waiting = {n: 1 for n in range(7)}
    assert promotable(eight, waiting, 4, maximize=True, draining=False) == 3  # median 0.475: 0.45 is nearest
    assert promotable(eight, waiting, 4, maximize=True, draining=True) == 6  # draining: the best, as ASHA
    first = trials(*({1: v} for v in (0.1, 0.2, 0.3, 0.4)))
    assert promotable(first, {n: 1 for n in range(4)}, 4, maximize=True, draining=False) == 3  # the first: the best


def test_a_distrusted_rung_promotes_every_trial_waiting_there_best_first(no_witness: None) -> None:
    assert promotable(SIX, {0: 1, 1: 1, 2: 1, 3: 1}, 3, True, draining=False) is None  # 2 slots: 4 and 5 had them
    assert promotable(SIX, {0: 1, 1: 1, 2: 1, 3: 1}, 3, True, draining=False, distrusted={1}) == 3
    assert next_move(turn(finished=2, running=4), SIX, {0: 1, 1: 1, 2: 1, 3: 1}, factor=3, maximize=True,
                     max_paused=16, distrusted={1}) == Move("resume", 3)  # instead of pruning


def test_a_rung_once_moved_stays_moved_and_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """ρ over a few pairs moves with every trial that goes on; the search keeps what it said (study attribute
    rungs_moved, which every worker reads), and says it once."""
    import logging

    from dltune.study.rank_check import distrusted

    study = optuna.create_study(direction="maximize")
    flipped = trials(*({1: v, 3: 1 - v} for v in (0.1, 0.2, 0.3, 0.4)))
    agreeing = trials(*({1: v, 3: v} for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)))
    with caplog.at_level(logging.WARNING, logger="dltune"):
        assert distrusted(study, flipped, [1, 3], 9, maximize=True) == {1}
        assert distrusted(study, agreeing, [1, 3], 9, maximize=True) == {1}  # ρ = 1 now: moved all the same
    assert [m["epoch"] for m in study.user_attrs["rungs_moved"]] == [1]
    assert study.user_attrs["rungs_moved"][0]["first_rung"] == 3
    said = [r.getMessage() for r in caplog.records if r.name == "dltune"]
    assert said == [study.user_attrs["rungs_moved"][0]["said"]]
    assert distrusted(optuna.create_study(), agreeing, [1, 3], 9, maximize=True) == set()
