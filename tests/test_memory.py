"""Memory that stays flat over a long search: what a trial leaves behind (an invariant, checked in this process on a
small search), and the peak RSS of a 200-trial search against a 20-trial one (make stress)."""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path

import psutil
import pytest
import torch
from matplotlib.figure import Figure

from dltune.experiment.config import load_config
from dltune.data import load_data
from dltune.study.records import TrialRecord
from dltune.study.tune import tune

from test_benchmarks import load as load_benchmark

SPACE = {"optim.lr": {"low": 1e-4, "high": 3e-2, "log": True}, "schedule.name": ["constant", "cosine"]}


def _alive(kind: type, collect: bool = True) -> list:
    if collect:
        gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


def _storages_of(nbytes: int) -> set[int]:
    """The distinct tensor storages alive that hold exactly `nbytes` bytes (a tensor goes with its last reference,
    so no collection is needed to see what a trial still holds)."""
    return {t.untyped_storage().data_ptr() for t in _alive(torch.Tensor, collect=False)
            if t.untyped_storage().nbytes() == nbytes}


def test_a_trial_leaves_nothing_behind_and_a_paused_one_keeps_no_copy_of_the_data(tmp_path: Path) -> None:
    # ASHA's paused trials wait in their threads, in on_epoch; the epoch's last batch was a view of that epoch's
    # shuffled copy of the training set (assembly.batcher), so each paused trial kept a whole copy of the data
    # (11 MiB on mnist-5k), and up to search.max_paused of them wait at once
    config = load_config({"data": {"name": "digits"}, "model": {"hidden": [16]}, "train": {"epochs": 2},
                          "search": {"trials": 10, "sampler": "random", "pruner": "asha", "min_epochs": 1,
                                     "reduction_factor": 3, "space": SPACE}})
    copy_bytes = load_data(config.data).train[0].untyped_storage().nbytes()  # the split, or one shuffled copy
    threads, modules = threading.active_count(), len(_alive(torch.nn.Module))
    seen: list[tuple[int, int]] = []  # per trial that ended: (threads alive then, storages of the split's size)

    def on_trial(_: TrialRecord) -> None:
        seen.append((threading.active_count(), len(_storages_of(copy_bytes))))

    data = tune(config, out_dir=tmp_path / "out", on_trial=on_trial)
    assert len([t for t in data.trials if t.state in ("COMPLETE", "PRUNED")]) == 10
    assert max(n for n, _ in seen) >= threads + 3, "no trial was ever paused: the check below could not fail"
    assert max(copies for _, copies in seen) <= 1, seen  # the prepared split alone, however many trials wait
    # once the search is over: no trial's thread, model or result is alive
    assert threading.active_count() == threads
    assert len(_alive(torch.nn.Module)) == modules
    from dltune.report.tune_report import write_tune_report

    write_tune_report(data, tmp_path / "report.html")
    assert not _alive(Figure)


def test_release_freed_memory_gives_back_what_a_finished_thread_freed() -> None:
    # glibc keeps what a thread frees in that thread's arena; a search starts a thread per trial
    from dltune.run.runtime import release_freed_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc_trim: Linux only")
    process = psutil.Process()
    kept: list[torch.Tensor] = []

    def churn() -> None:  # 120 MiB in 1.2 MiB tensors, every 8th kept: the rest freed in this thread's arena
        torch.ones(600_000)  # freed at once: glibc then keeps blocks of up to 2.4 MiB in its arenas, as in a long
        # process (its mmap threshold rises to the largest block freed), rather than mapping each apart
        tensors = [torch.ones(300_000) for _ in range(100)]
        kept.extend(tensors[::8])

    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
    before = process.memory_info().rss
    release_freed_memory()
    assert before - process.memory_info().rss > 50 * 2**20


# ---- make stress: the peak RSS of a long search (benchmarks/bench_memory.py runs the searches) ----

@pytest.mark.stress
def test_the_peak_rss_of_200_trials_stays_within_1_2_times_that_of_20(tmp_path: Path) -> None:
    bench = load_benchmark("bench_memory")
    peaks = {}
    for trials in (20, 200):
        (tmp_path / str(trials)).mkdir()
        peaks[trials] = bench.search_peak(trials, tmp_path / str(trials))
    print(f"peak RSS: {peaks[20]:.0f} MiB after 20 trials, {peaks[200]:.0f} MiB after 200 "
          f"({peaks[200] / peaks[20]:.2f}x)")
    assert peaks[200] <= 1.2 * peaks[20], peaks
