"""Threads under load: before training, dltune warns when the load average says that other processes hold the cores
that torch's threads will use, with the load it measured and the setting to try; it never changes the thread count
itself (another count changes float sums, and the same seed must give the same bits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, run_main
from dltune.run.runtime import Load, crowding, read_load


@pytest.mark.parametrize(("load", "running", "cores", "threads", "warn"), [
    (0.1, 0.0, 2, 2, False),   # an idle machine
    (1.0, 0.0, 2, 2, False),   # busy a minute ago, idle now: the load average lags
    (1.0, 1.0, 2, 2, True),    # one other process on one of 2 cores: torch's 2 threads wait on each other
    (4.2, 4.0, 2, 2, True),    # the machine of the issue: load 4-5 on 2 cores
    (4.2, 4.0, 2, 1, False),   # one thread: nothing waits for another thread
    (1.0, 1.0, 4, 2, False),   # 3 cores free for 2 threads
    (3.0, 3.0, 4, 2, True),    # 1 core free for 2 threads
    (0.5, 3.0, 4, 4, False),   # a burst now, not the minute's load
])
def test_when_the_load_says_other_processes_hold_the_cores(load: float, running: float, cores: int, threads: int,
                                                           warn: bool) -> None:
    advice = crowding(Load(load, running), cores, threads)
    assert (advice is not None) == warn
    if advice is not None:
        assert advice.startswith(f"warning: the load average is {load:.1f} on {cores} cores")
        assert f"torch's {threads} threads" in advice and "parallel.threads=" in advice


def test_the_load_is_read_from_the_system() -> None:
    load = read_load()
    assert load is not None and load.average >= 0 and load.running >= 0  # Linux: /proc/loadavg


def test_the_cli_warns_before_training_and_keeps_the_threads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the run is set up (bad input is an error alone), once per process, on stderr; the threads as set."""
    import json

    import dltune.run.runtime

    monkeypatch.setattr(dltune.run.runtime, "read_load", lambda: Load(4.2, 4.0))  # what the machine read
    monkeypatch.setattr(dltune.run.runtime.os, "getloadavg", lambda: (4.2, 4.0, 4.0))
    monkeypatch.setattr(dltune.run.runtime, "cores", lambda: 2)
    monkeypatch.setattr(dltune.run.runtime, "_WARNED", set())
    reference = str(ROOT / "examples" / "seed_mnist.toml")
    bad = run_main(capsys, "train", reference, "--set", "data.name=csv", "--set", "parallel.threads=2", "--out",
                   str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.startswith("dltune train: error: ") and "warning" not in bad.stderr
    done = run_main(capsys, "train", reference, "--set", "train.epochs=1", "--set", "parallel.threads=2", "--out",
                    str(tmp_path / "run"), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].startswith("warning: the load average is 4.2 on 2 cores (4.0 processes "
                                                  "running besides this one)")
    assert "--set parallel.threads=1" in done.stderr
    assert json.loads(done.stdout)["environment"]["torch_threads"] == 2  # kept as set
    again = run_main(capsys, "train", reference, "--set", "train.epochs=1", "--set", "parallel.threads=2", "--out",
                     str(tmp_path / "again"))
    assert again.returncode == 0 and "warning" not in again.stderr  # said once in this process
    monkeypatch.setattr(dltune.run.runtime, "_WARNED", set())
    quiet = run_main(capsys, "train", reference, "--set", "train.epochs=1", "--set", "parallel.threads=1", "--out",
                     str(tmp_path / "one"))
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


def test_a_compression_before_leaves_the_warning_said(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's quantizer warns on the root logger; compress quiets it for the quantization only. Left at
    ERROR, the root silenced dltune's warnings for the rest of the process (CI ran a compression test first)."""
    import logging

    import torch

    import dltune.run.runtime
    from dltune.compression.onnx_io import export_onnx, quantize

    root = logging.getLogger()
    level = root.level
    export_onnx(torch.nn.Linear(4, 3), torch.zeros(2, 4), tmp_path / "fp32.onnx", "compress")
    quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", "dynamic")
    assert (tmp_path / "int8.onnx").is_file() and root.level == level
    monkeypatch.setattr(dltune.run.runtime, "read_load", lambda: Load(4.2, 4.0))
    monkeypatch.setattr(dltune.run.runtime.os, "getloadavg", lambda: (4.2, 4.0, 4.0))
    monkeypatch.setattr(dltune.run.runtime, "cores", lambda: 2)
    monkeypatch.setattr(dltune.run.runtime, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="dltune"):
        dltune.run.runtime.warn_if_crowded(2, torch.device("cpu"))
    assert any(r.getMessage().startswith("warning: the load average is 4.2") for r in caplog.records)
