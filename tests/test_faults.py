"""Faults of storage and disk: a PostgreSQL server lost mid-study (for a moment, and for good), a disk that fills up
while a run, a trial or a report is written, and damaged files (a study.db, a journal, a model.safetensors). Each ends
in a clear error naming the URL or file (the CLI exits 2, no traceback) or is ridden out, and nothing already stored
is lost or changed."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna
import pytest
import tomli_w
from optuna.trial import TrialState

from dltune.experiment.config import load_config
from dltune.errors import ConfigError
from dltune.run.results import RUN_FILES
from dltune.study.tune import create_study

from conftest import POSTGRES, ROOT, run_main, server_trials

TINY = {"data": {"name": "digits", "limit": 500}, "model": {"hidden": [16]}, "train": {"epochs": 3}}
SPACE = {"optim.lr": {"low": 1e-3, "high": 1e-1, "log": True}}


class Proxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut: `down()` closes every connection through it and
    refuses new ones (accepted, then closed at once, as a server that is restarting), `up()` lets them through
    again. `down(hang=True)` holds the new ones instead, never answering, as a hung host or a failover to a
    machine that is not up yet. The URL it gives carries a password (trust authentication ignores it), so that
    errors can be seen to mask it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.hang = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql://postgres:s3cret-pw@127.0.0.1:{self.port}/{database}"

    def down(self, hang: bool = False) -> None:
        with self._lock:
            self.open, self.hang = False, hang
            for s in self._sockets:
                _close(s)
            self._sockets.clear()

    def up(self) -> None:
        self.open = True

    def close(self) -> None:
        self.down()
        _close(self.listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if not self.open and self.hang:  # accepted, never answered
                    self._sockets.add(client)
                    continue
                if not self.open:
                    _close(client)
                    continue
                try:
                    server = socket.create_connection(self.target)
                except OSError:
                    _close(client)
                    continue
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def proxy():
    host_port = POSTGRES.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    p = Proxy((host, int(port or 5432)))
    yield p
    p.close()


def _stored(name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, read straight from the server (not through the proxy)."""
    return server_trials(name)


def _snapshot(trials: list[optuna.trial.FrozenTrial]) -> dict[int, tuple]:
    """What must not change of a finished trial: its state, parameters, values, attributes and epochs."""
    return {t.number: (t.state, t.params, t.values, t.user_attrs, t.intermediate_values) for t in trials
            if t.state.is_finished()}


def _worker(url: str, name: str, out: Path, patience: float) -> subprocess.Popen:
    env = {**os.environ, "DLTUNE_STORAGE_PATIENCE": str(patience)}
    return subprocess.Popen([sys.executable, "-m", "dltune", "worker", "--storage", url, "--study", name, "--out",
                             str(out), "--threads", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ended(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """A worker process's output once it ends; killed (and the test failed) if it runs past `timeout` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def _when(condition, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def _finished(name: str) -> int:
    return sum(t.state.is_finished() for t in _stored(name))


def _consistent(trials: list[optuna.trial.FrozenTrial], target: int) -> None:
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none repeated, none lost
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == target


class Outage(threading.Thread):
    """Cuts the proxy once the study holds `after` finished trials (their snapshot kept in `before`), for
    `seconds` (None: until the test brings it back)."""

    def __init__(self, proxy: Proxy, study: str, after: int, seconds: float | None, hang: bool = False) -> None:
        super().__init__(daemon=True)
        self.proxy, self.study, self.after, self.seconds, self.hang = proxy, study, after, seconds, hang
        self.before: dict[int, tuple] = {}
        self.running: list[int] = []  # trials RUNNING when it began
        self.started_at: float | None = None
        self.error: BaseException | None = None  # what ended the thread before the outage, if anything did

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e
            raise

    def _run(self) -> None:
        _when(lambda: _finished(self.study) >= self.after, 120)
        self.proxy.down(self.hang)
        self.started_at = time.monotonic()
        trials = _stored(self.study)
        self.before = _snapshot(trials)
        self.running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if self.seconds is not None:
            time.sleep(self.seconds)
            self.proxy.up()


def _search(trials: int) -> dict:
    # trials of 6 epochs, each a few tenths of a second: the outage falls in the middle of the study
    return {**TINY, "train": {"epochs": 6}, "search": {"trials": trials, "space": SPACE, "pruner": "none",
                                                        "sampler": "random"}}


def test_a_worker_rides_out_a_lost_database(tmp_path: Path, proxy: Proxy, pg_study: str,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # a 3 s outage: shorter than the heartbeat's grace period (5 s), so no trial of the worker goes stale
    create_study(load_config(_search(8)), storage=POSTGRES, study=pg_study)
    monkeypatch.setenv("DLTUNE_STORAGE_PATIENCE", "30")
    outage = Outage(proxy, pg_study, after=2, seconds=3)
    outage.start()
    r = run_main(capsys, "worker", "--storage", proxy.url("test"), "--study", pg_study, "--out", str(tmp_path / "w"))
    outage.join()
    assert r.returncode == 0, r.stderr
    assert outage.before and "8 trials run here" in r.stdout
    trials = _stored(pg_study)
    _consistent(trials, 8)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {n: v for n, v in _snapshot(trials).items() if n in outage.before} == outage.before


@pytest.mark.parametrize("hang", [False, True], ids=["refused", "never-answers"])
def test_a_database_that_stays_away_ends_the_worker_clearly(tmp_path: Path, proxy: Proxy, pg_study: str, hang: bool,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # never-answers: the worker's new connections are accepted and then hear nothing; without libpq's connect_timeout
    # (engines.libpq_timeouts) the first of them held the worker forever
    create_study(load_config(_search(6)), storage=POSTGRES, study=pg_study)
    monkeypatch.setenv("DLTUNE_STORAGE_PATIENCE", "3")
    outage = Outage(proxy, pg_study, after=2, seconds=None, hang=hang)
    outage.start()
    url = proxy.url("test")
    if hang:  # in a process of its own: were it held forever, the test would fail at the timeout, not hang
        worker = _worker(url, pg_study, tmp_path / "w", patience=3)
        out, err = _ended(worker, 180)
        r = subprocess.CompletedProcess(worker.args, worker.returncode, out, err)
    else:
        r = run_main(capsys, "worker", "--storage", url, "--study", pg_study, "--out", str(tmp_path / "w"))
    assert outage.started_at is not None, outage.error
    took = time.monotonic() - outage.started_at
    _gave_up(r, proxy, took, patience=3)
    stored = _stored(pg_study)
    assert {n: v for n, v in _snapshot(stored).items() if n in outage.before} == outage.before
    proxy.up()
    # a new worker finishes the study: a trial the first left RUNNING is failed by its heartbeat and run again
    r = run_main(capsys, "worker", "--storage", url, "--study", pg_study, "--out", str(tmp_path / "rescue"))
    assert r.returncode == 0, r.stderr
    _rescued(stored, _stored(pg_study), outage.before, 6)


def test_a_database_that_never_answers_at_the_start_is_an_error_not_a_hang(tmp_path: Path, proxy: Proxy,
                                                                          pg_study: str) -> None:
    create_study(load_config(_search(2)), storage=POSTGRES, study=pg_study)
    proxy.down(hang=True)
    worker = _worker(proxy.url("test"), pg_study, tmp_path / "w", patience=2)  # connect_timeout: 2 s
    out, err = _ended(worker, 60)
    assert worker.returncode == 2, err
    assert "Traceback" not in err and "s3cret-pw" not in out + err
    assert f"--storage postgresql://postgres:***@127.0.0.1:{proxy.port}/test: cannot open the storage" in err
    assert "timeout" in err.lower() and not (tmp_path / "w").exists()
    assert [t.state for t in _stored(pg_study)] == []  # nothing was taken


def test_a_database_url_sets_libpq_timeouts_itself_or_gets_dltunes() -> None:
    from dltune.study.engines import storage_for

    def parameters(url: str) -> dict[str, str]:
        storage = storage_for(url, heartbeat=False)
        try:
            connection = storage.engine.raw_connection()
            try:
                return connection.driver_connection.info.get_parameters()
            finally:
                connection.close()
        finally:
            storage.engine.dispose()

    given = parameters(POSTGRES)
    assert given["connect_timeout"] == "10" and given["keepalives"] == "1" and given["keepalives_idle"] == "30"
    own = parameters(POSTGRES + "?connect_timeout=4&keepalives_idle=7")
    assert own["connect_timeout"] == "4" and own["keepalives_idle"] == "7" and own["keepalives_count"] == "3"


def _gave_up(r: subprocess.CompletedProcess[str], proxy: Proxy, took: float, patience: float) -> None:
    assert r.returncode == 2, r.stderr
    assert took < patience + 10, took  # patience, and the epoch and the backoff it was in
    assert "Traceback" not in r.stderr and "s3cret-pw" not in r.stderr + r.stdout
    assert f"postgresql://postgres:***@127.0.0.1:{proxy.port}/test" in r.stderr
    assert f"lost the connection to the database and it did not come back within {patience:g} s" in r.stderr


def _rescued(stored: list[optuna.trial.FrozenTrial], trials: list[optuna.trial.FrozenTrial],
             before: dict[int, tuple], target: int) -> None:
    _consistent(trials, target)
    assert {n: v for n, v in _snapshot(trials).items() if n in before} == before
    assert {n: v for n, v in _snapshot(trials).items() if n in _snapshot(stored)} == _snapshot(stored)
    for t in stored:
        if t.state == TrialState.RUNNING:
            assert next(s for s in trials if s.number == t.number).state == TrialState.FAIL


# the same, with the workers in processes of their own, as on a cluster (their start-up takes seconds)


@pytest.mark.stress
def test_a_worker_process_rides_out_a_lost_database(tmp_path: Path, proxy: Proxy, pg_study: str) -> None:
    create_study(load_config(_search(8)), storage=POSTGRES, study=pg_study)
    worker = _worker(proxy.url("test"), pg_study, tmp_path / "w", patience=30)
    outage = Outage(proxy, pg_study, after=2, seconds=3)
    outage.start()
    out, err = _ended(worker, 120)
    outage.join()
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "8 trials run here" in out
    trials = _stored(pg_study)
    _consistent(trials, 8)
    assert {n: v for n, v in _snapshot(trials).items() if n in outage.before} == outage.before


@pytest.mark.stress
def test_a_worker_process_ends_clearly_when_the_database_stays_away(tmp_path: Path, proxy: Proxy,
                                                                     pg_study: str) -> None:
    create_study(load_config(_search(6)), storage=POSTGRES, study=pg_study)
    url = proxy.url("test")
    worker = _worker(url, pg_study, tmp_path / "w", patience=3)
    outage = Outage(proxy, pg_study, after=2, seconds=None)
    outage.start()
    out, err = _ended(worker, 120)
    assert outage.started_at is not None, outage.error
    _gave_up(subprocess.CompletedProcess([], worker.returncode, out, err), proxy,
             time.monotonic() - outage.started_at, patience=3)
    stored = _stored(pg_study)
    proxy.up()
    rescue = _worker(url, pg_study, tmp_path / "rescue", patience=3)
    out, err = _ended(rescue, 120)
    assert rescue.returncode == 0, err
    _rescued(stored, _stored(pg_study), outage.before, 6)


# --- a full disk: RLIMIT_FSIZE in this process, SIGXFSZ ignored, so that a write past the limit fails with EFBIG, as
# on a disk that fills up (ENOSPC takes the same path)


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """No file of this process grows past `nbytes` in the block (the soft limit; it is raised back afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _toml(path: Path, experiment: dict) -> Path:
    path.write_text(tomli_w.dumps(experiment))
    return path


def _no_partial_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    # every run folder whole (a search's best/ is a copy of one, without its environment.json)
    for run in {p.parent for p in folder.rglob("*") if p.name in RUN_FILES and p.parent.name != "best"}:
        assert sorted(p.name for p in run.iterdir() if p.name in RUN_FILES) == sorted(RUN_FILES), run


def _clear_error(r: subprocess.CompletedProcess[str], command: str, file: Path) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"dltune {command}: error: {file}: cannot write: File too large" in r.stderr, r.stderr


WIDE = {**TINY, "model": {"hidden": [256, 256]}, "train": {"epochs": 2}}  # weights of 340 KB


def test_a_full_disk_while_a_run_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = _toml(tmp_path / "wide.toml", WIDE), tmp_path / "run"
    with file_size_limit(250_000):
        r = run_main(capsys, "train", str(config), "--out", str(out))
    _clear_error(r, "train", out / "model.safetensors")
    assert not out.exists()  # the claim taken back: no half run
    _no_partial_files(tmp_path)
    r = run_main(capsys, "train", str(config), "--out", str(out))  # room again: the same command runs
    assert r.returncode == 0, r.stderr
    _no_partial_files(tmp_path)


def test_a_full_disk_while_a_trial_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    search = {"trials": 3, "space": SPACE, "pruner": "none", "sampler": "random"}
    config, out = _toml(tmp_path / "wide.toml", {**WIDE, "search": search}), tmp_path / "search"
    with file_size_limit(250_000):  # study.db stays smaller
        r = run_main(capsys, "tune", str(config), "--out", str(out))
    _clear_error(r, "tune", out / "trials" / "trial-0" / "model.safetensors")
    _no_partial_files(tmp_path)
    study = optuna.load_study(study_name="wide", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]  # the search stopped at once
    assert "cannot write: File too large" in study.trials[0].user_attrs["error"]
    r = run_main(capsys, "tune", str(config), "--out", str(out))
    assert r.returncode == 0, r.stderr
    states = [t.state for t in optuna.load_study(study_name="wide", storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    _no_partial_files(tmp_path)


@pytest.mark.stress
def test_a_full_disk_while_a_report_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ablation = {"seeds": 1, "variants": {"a": {"optim.lr": 3e-3}}}
    config, out = _toml(tmp_path / "abl.toml", {**TINY, "train": {"epochs": 2}, "ablation": ablation}), tmp_path / "a"
    with file_size_limit(150_000):  # the runs and study.db fit, the report (185 KB, its plots inline) does not
        r = run_main(capsys, "ablate", str(config), "--out", str(out))
    _clear_error(r, "ablate", out / "report.html")
    _no_partial_files(tmp_path)
    assert not (out / "report.html").exists()
    study = optuna.load_study(study_name="abl", storage=f"sqlite:///{out / 'study.db'}")
    finished = {t.number: t.user_attrs for t in study.trials}
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and len(finished) == 2
    r = run_main(capsys, "ablate", str(config), "--out", str(out))  # resumes: nothing run again
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="abl", storage=f"sqlite:///{out / 'study.db'}")
    assert {t.number: t.user_attrs for t in study.trials} == finished and (out / "report.html").exists()


# --- damaged files: each read gives a clear error naming the file, never a traceback


SEARCHED = {"trials": 2, "space": SPACE, "pruner": "none", "sampler": "random"}


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search of 2 trials (study.db, trials/, best/), to copy and damage."""
    from dltune.study.tune import tune

    out = tmp_path_factory.mktemp("searched")
    tune(load_config({**TINY, "search": SEARCHED}), out_dir=out / "s", study="s")
    return out / "s"


def _damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage\xff" * 100)


def _names(r: subprocess.CompletedProcess[str], command: str, file: Path) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith(f"dltune {command}: error: "), r.stderr
    assert str(file) in r.stderr, r.stderr


@pytest.mark.parametrize("how", ["truncated", pytest.param("garbage", marks=pytest.mark.stress)])
def test_damaged_weights_are_named(how: str, searched: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "s"
    shutil.copytree(searched, copy)
    weights = copy / "trials" / "trial-0" / "model.safetensors"
    _damage(weights, how)
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 64), dtype=np.float32))
    r = run_main(capsys, "predict", str(weights.parent), "--input", str(tmp_path / "x.npz"))
    _names(r, "predict", weights)
    r = run_main(capsys, "compress", str(weights.parent), "--out", str(tmp_path / "c"), "--methods", "quantize")
    _names(r, "compress", weights)
    assert not (tmp_path / "c").exists()
    # the study names its trials' folders where they ran: the original's, damaged for a moment
    from dltune.study.tune import load_tune, tune

    data = load_tune(f"sqlite:///{searched / 'study.db'}", "s")
    original = Path(next(t.run_dir for t in data.trials if t.number == data.best[0])) / "model.safetensors"
    kept, best = original.read_bytes(), (searched / "best" / "model.safetensors").read_bytes()
    try:
        _damage(original, how)
        r = run_main(capsys, "ensemble", str(searched), "--top", "2", "--out", str(tmp_path / "e"))
        _names(r, "ensemble", original)
        assert not (tmp_path / "e").exists()
        # tune, asked again when the search is done, copies the best trial's weights to best/: not damaged ones
        with pytest.raises(ConfigError, match=re.escape(f"{original}: the best trial's weights cannot be read")):
            tune(load_config({**TINY, "search": SEARCHED}), out_dir=searched, study="s")
        assert (searched / "best" / "model.safetensors").read_bytes() == best
    finally:
        original.write_bytes(kept)
    transfer = _toml(tmp_path / "t.toml", {**TINY, "transfer": {"from": str(weights.parent)}})
    r = run_main(capsys, "train", str(transfer), "--out", str(tmp_path / "t"))
    _names(r, "train", weights)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("how", ["truncated", pytest.param("garbage", marks=pytest.mark.stress)])
def test_a_damaged_study_db_is_named(how: str, searched: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "s"
    shutil.copytree(searched, copy)
    _damage(copy / "study.db", how)
    damaged = (copy / "study.db").read_bytes()
    config = _toml(tmp_path / "s.toml", {**TINY, "search": SEARCHED})
    r = run_main(capsys, "tune", str(config), "--out", str(copy))
    _names(r, "tune", copy / "study.db")
    assert (copy / "study.db").read_bytes() == damaged  # left as it was found, for the user to restore


@pytest.mark.stress  # --jobs 2 starts processes of its own: tens of seconds
def test_a_journal_with_a_torn_last_record_or_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _toml(tmp_path / "j.toml", {**TINY, "train": {"epochs": 1}, "search": SEARCHED})
    out = tmp_path / "j"
    assert run_main(capsys, "tune", str(config), "--out", str(out), "--jobs", "2").returncode == 0
    journal = out / "journal.log"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id"')  # a kill mid-write: skipped
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--jobs", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trials"]["complete"] == 2
    lines = whole.splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:3]) + b"\x00garbage\xff\n" + b"".join(lines[3:]))
    r = run_main(capsys, "tune", str(config), "--out", str(out), "--jobs", "2")
    _names(r, "tune", journal)


def test_a_trial_failed_elsewhere_while_this_worker_was_cut_off_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    # an outage longer than the heartbeat's grace: another worker failed this worker's trial as a dead one (and
    # queued it again); when the database is back, the trial's result is dropped here, with a warning, not a traceback
    from dltune.study.worker import run_and_tell as _run

    study = optuna.create_study()
    trial = study.ask()

    def objective(t: optuna.Trial, resume: bool) -> float:
        study.tell(t.number, state=TrialState.FAIL)  # the other worker, meanwhile
        t.set_user_attr("status", "completed")  # what this worker then writes: refused by Optuna
        return 0.5

    with caplog.at_level("WARNING", logger="dltune"):
        _run(study, trial, objective)
    assert "was failed by another worker" in caplog.text
    assert study.get_trials()[0].state == TrialState.FAIL and "status" not in study.get_trials()[0].user_attrs
