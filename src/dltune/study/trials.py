"""What one trial of a search does whichever engine runs it (Optuna's loop here, or Ray Tune): the data it trains on,
the value it reports per epoch, the values it ends with, how trackers name it, and how its end is told to the study."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from dltune.data import TensorSplits, load_data
from dltune.errors import ConfigError, WriteError
from dltune.experiment.config import ExperimentConfig
from dltune.run.assembly import Splits
from dltune.run.checkpoints import Paused
from dltune.run.results import RunResult
from dltune.study.studies import SPECIAL, Prepared, queued_with
from dltune.tracking import Run

MAX_FAILURES_IN_A_ROW = 10  # a worker whose every trial fails stops instead of spinning forever
Objective = Callable[[optuna.Trial, bool], Any]  # (trial, resume) -> its value, or its values for several objectives

__all__ = ["MAX_FAILURES_IN_A_ROW", "Objective", "handed_to_train", "interrupt", "lookup", "objective_values",
           "per_epoch_objective", "run_and_tell", "tell", "trial_data", "trial_track"]


def per_epoch_objective(objectives: list[str]) -> str | None:
    """The per-epoch value that pruners and schedulers watch: the first objective, its val.* counterpart for a
    test.* objective; None when it has none per epoch (latency, parameters, compressed.*)."""
    first = objectives[0]
    return first.replace("test.", "val.", 1) if first not in SPECIAL else None


def lookup(record: Mapping[str, Any], path: str) -> float | None:
    """A dotted metric ("val.accuracy") in one epoch's record; None when the epoch has none."""
    split, _, name = path.partition(".")
    return (record.get(split) or {}).get(name)


def trial_data(prepared: Prepared, config: ExperimentConfig) -> Splits:
    """The data a trial trains on: the base's, loaded once by prepare(), unless the trial searches [data] itself."""
    splits = prepared.splits
    given = prepared.model is not None or not isinstance(splits, TensorSplits)
    return splits if given or config.data == prepared.base.data else load_data(config.data, config.code.paths)


def handed_to_train(config: ExperimentConfig, data: Splits) -> Splits | None:
    """What a trial passes to `train` as data=: its loaded splits, or nothing for a trial that trains in processes of
    its own (parallel.strategy), whose ranks load [data] themselves (the splits still give its values: latency)."""
    return data if config.parallel.strategy == "none" else None


def trial_track(study_name: str, number: int, out: Path) -> Run:
    """How [tracking] names a search's trial."""
    return Run(study_name, f"trial-{number}", {"dltune": "search", "trial": str(number)}, folder=out)


def objective_values(result: RunResult, objectives: list[str], run_dir: Path,
                     data: Splits) -> tuple[list[float], dict[str, float]]:
    """A finished run's value for each objective, and the compressed model's measures when an objective names one
    (compress.methods' first entry applied to the run's model; empty otherwise)."""
    compressed: dict[str, float] = {}
    assert result.model is not None  # a run that just trained holds its model
    if any(name.startswith("compressed.") for name in objectives):
        from dltune.compression import search_values

        compressed = search_values(run_dir, result.model, result.config, data)
    return [compressed[name] if name in compressed else _value(result, name, data) for name in objectives], compressed


def _value(result: RunResult, name: str, data: Splits) -> float:
    if name == "parameters":
        return float(result.parameters)
    if name == "latency":
        assert result.model is not None  # a run that just trained holds its model
        if not isinstance(data, TensorSplits):
            raise ConfigError("search.objectives: latency is timed on test inputs held as tensors; a torch Dataset's "
                              "examples are not: leave latency out, or give the data as arrays")
        return _latency_ms(result.model, result.config, data.test[0])
    if name.startswith("test."):
        return float(result.test[name[5:]])
    return float(result.metric(name))


def _latency_ms(model: torch.nn.Module, config: ExperimentConfig, x: torch.Tensor) -> float:
    """Inference time per test example in milliseconds: best of 3 passes over the test inputs `x`."""
    device = next(model.parameters()).device
    model.eval()
    best = math.inf
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for i in range(0, len(x), config.batch.eval_size):
                model(x[i : i + config.batch.eval_size].to(device))
            best = min(best, time.perf_counter() - start)
    return best * 1000 / len(x)


def interrupt(study: optuna.Study, trial: optuna.Trial, cause: BaseException | None) -> None:
    """End a trial that the search's interrupt cut short as interrupted, not failed: Optuna's FAIL (its one end that
    does not count as finished) with the reason in the attribute `interrupted` (records.trial_record reads it as
    the state INTERRUPTED), and its parameters queued again, a WAITING trial that the next run of the search takes
    before any new point: the configuration is trained after all."""
    what = "Ctrl-C" if cause is None or isinstance(cause, KeyboardInterrupt) else f"{type(cause).__name__}: {cause}"
    rung = trial.user_attrs.get("waiting_at")
    during = f"while it waited at the rung of epoch {rung}" if rung is not None else "while it trained"
    study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number, **queued_with(trial.user_attrs)})
    queued = max((t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                  if t.user_attrs.get("requeued_from") == trial.number), default=None)
    trial.set_user_attr("interrupted", f"the search was stopped ({what}) {during}; its configuration is queued "
                                       f"again as trial {queued}, which the next run of the search trains")
    tell(study, trial, state=TrialState.FAIL)


def tell(study: optuna.Study, trial: optuna.Trial, values: Any = None, state: TrialState | None = None) -> None:
    """Tell the study how a trial ended."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        # the grid sampler asks the study to stop once its grid is spent, which Optuna refuses outside
        # optimize(), after storing the trial; the search stops by its own count
        if "Study.stop" not in str(e):
            raise


def run_and_tell(study: optuna.Study, trial: optuna.Trial, objective: Objective, resume: bool = False) -> None:
    """One trial, told to the study: complete, pruned, or failed with its error (then the work goes on;
    a KeyboardInterrupt marks it interrupted, queues it again, and is raised again). A trial saved to disk at a
    rung (Paused) is told nothing: it still runs, and `resume` goes on with it. A trial that another worker failed
    meanwhile, as a dead worker's (its heartbeats stopped while this process could not reach the database), is left
    as it is: it was queued to run again, and this run of it no longer counts."""
    try:
        _run_told(study, trial, objective, resume)
    except optuna.exceptions.UpdateFinishedTrialError:
        logging.getLogger("dltune").warning(
            f"trial {trial.number} was failed by another worker while this one could not reach the storage (its "
            "heartbeats stopped); what it trained here is dropped, and the trial runs again")


def _run_told(study: optuna.Study, trial: optuna.Trial, objective: Objective, resume: bool) -> None:
    try:
        values = objective(trial, resume)
    except Paused:
        raise
    except optuna.TrialPruned:
        tell(study, trial, state=TrialState.PRUNED)
    except Exception as e:
        if "error" not in trial.user_attrs:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
        tell(study, trial, state=TrialState.FAIL)
        if isinstance(e, WriteError):  # a full disk fails every trial alike: the search stops here
            raise
    except BaseException as e:  # an interrupt (Ctrl-C, should_stop): recorded as such, the trial queued again
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # the interrupt goes on up all the same
            interrupt(study, trial, e)
        raise
    else:
        tell(study, trial, values)
