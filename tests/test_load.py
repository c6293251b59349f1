"""Load (make stress): 200 short trials shared by 4 `dltune worker` processes on PostgreSQL, and by `dltune tune
--jobs 4` on a journal file; no trial lost, run twice or left running, every run folder whole. The measurements and
checks are benchmarks/bench_load.py's, which prints the throughput beside one worker's."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_benchmarks import load as load_benchmark

TRIALS = 200


def _shown(load) -> str:
    return f"{load.what}: {TRIALS} trials in {load.seconds:.0f} s, {load.per_minute:.0f} trials/min, {load.states}"


@pytest.mark.stress
def test_four_workers_on_postgresql_run_each_of_200_trials_once(tmp_path: Path) -> None:
    bench = load_benchmark("bench_load")
    load = bench.workers_on_postgres(4, TRIALS, tmp_path)
    print(_shown(load))
    assert not load.problems, "\n".join(load.problems)
    # each worker took a share: a worker that found the search over would be one fewer worker under load
    shares = [sum(1 for _ in (tmp_path / f"w{i}" / "trials").glob("trial-*")) for i in range(4)]
    assert all(shares), shares


@pytest.mark.stress
def test_four_jobs_on_a_journal_file_run_each_of_200_trials_once(tmp_path: Path) -> None:
    bench = load_benchmark("bench_load")
    load = bench.jobs_on_journal(4, TRIALS, tmp_path)
    print(_shown(load))
    assert not load.problems, "\n".join(load.problems)
