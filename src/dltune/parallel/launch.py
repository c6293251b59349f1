"""Start a distributed run with torchrun (torch.distributed.run) and follow it: each epoch's record as rank 0 sends it,
the caller's answer back (a search may stop the run), and at the end the trained result, or an error that says which
rank failed and how."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file

from dltune.errors import ConfigError, DltuneError
from dltune.parallel.ranks import ENV_DIR, ENV_PARENT

if TYPE_CHECKING:
    from dltune.epochs import EpochRecord

__all__ = ["DistributedError", "Nodes", "launch"]

POLL_SECONDS = 0.02
# written by the first rank of each machine, weights last: the RunResult's fields (JSON, NaN kept) and the weights
RESULT, WEIGHTS = "result.json", "model.safetensors"
ERROR = "error-{rank}.txt"  # a rank that stopped on bad input: the message


class DistributedError(DltuneError):
    """A rank of a distributed run failed or was killed; the other ranks were stopped and nothing was written."""


@dataclass(frozen=True)
class Nodes:
    """The machines of a run, as torchrun takes them: how many, and where they meet (host:port of the first)."""

    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "dltune"

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes: must be at least 1, got {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("--rdzv-endpoint: a run on several machines (--nnodes > 1) needs the host:port where "
                              "they meet, the same on every machine")


def launch(config_toml: str, nproc: int, nodes: Nodes, threads: int,
           on_record: Callable[[int, EpochRecord], Any] | None) -> dict[str, Any]:
    """Run `python -m dltune.run.rank` in `nproc` processes on this machine (and nodes.nnodes machines in all) through
    torchrun, on the experiment `config_toml`, with `threads` torch threads each. `on_record(epoch, record)` is
    called with each epoch's record and its answer ("stop" or None) is sent back. Returns what the first rank of
    this machine saved: {"result": the RunResult's fields but its model and config, "state": the model's weights}.
    Nothing is unpickled."""
    folder = Path(tempfile.mkdtemp(prefix="dltune-ranks-"))
    try:
        (folder / "config.toml").write_text(config_toml)
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                   f"--nnodes={nodes.nnodes}"]
        if nodes.rdzv_endpoint:
            command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={nodes.rdzv_endpoint}", f"--rdzv-id={nodes.rdzv_id}"]
        else:
            command += ["--standalone"]
        command += ["-m", "dltune.run.rank", str(folder / "config.toml")]
        env = {**os.environ, ENV_DIR: str(folder), ENV_PARENT: str(os.getpid()), "OMP_NUM_THREADS": str(threads),
               "PYTHONUNBUFFERED": "1"}
        with open(folder / "torchrun.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                _follow(process, folder, on_record)
            except BaseException:
                _stop(process)
                raise
        if process.returncode != 0:
            raise _failure(folder, process.returncode)
        return {"result": json.loads((folder / RESULT).read_text()), "state": load_file(folder / WEIGHTS)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _follow(process: subprocess.Popen, folder: Path, on_record: Callable[[int, EpochRecord], Any] | None) -> None:
    """Pass each new epoch record to `on_record` and write its answer, until the processes end."""
    records, seen = folder / "epochs.jsonl", 0
    while True:
        done = process.poll() is not None
        if records.exists():
            text = records.read_text()
            complete = text[: text.rfind("\n") + 1].splitlines()  # a line still being written waits
            for line in complete[seen:]:
                record = json.loads(line)
                answer = on_record(record["epoch"], record) if on_record is not None else None
                tmp = folder / f".answer-{record['epoch']}"
                tmp.write_text(answer if answer == "stop" else "")
                tmp.rename(folder / f"answer-{record['epoch']}")
            seen = len(complete)
        if done:
            return
        time.sleep(POLL_SECONDS)


def _stop(process: subprocess.Popen) -> None:
    """End torchrun and every rank (their own process group), first gently."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure(folder: Path, returncode: int) -> DltuneError:
    """The error of a run whose torchrun ended with `returncode`: a rank's own message where one stopped on bad
    input, else which rank failed and how, from torchrun's log."""
    errors = sorted(folder.glob(ERROR.format(rank="*")))
    if errors:
        return ConfigError(errors[0].read_text().strip())
    log = (folder / "torchrun.log").read_text(errors="replace")
    root = log.partition("Root Cause")[2]  # torchrun's report of the first rank that failed
    failed = re.search(r"rank\s*:\s*(\d+)\s*\(local_rank: (\d+)\)\s*exitcode\s*:\s*(-?\d+)", root)
    if failed:
        rank, code = failed.group(1), int(failed.group(3))
        killed = code < 0 and -code in {s.value for s in signal.Signals}
        how = f"was killed by {signal.Signals(-code).name}" if killed else f"exited with code {code}"
        cause = "" if killed else _last_error(log, rank)
        return DistributedError(f"rank {rank} of the distributed run {how}{': ' + cause if cause else ''}; the other "
                                "ranks were stopped, and no run folder was written")
    tail = "\n".join(log.strip().splitlines()[-15:])
    return DistributedError(f"the distributed run failed (torchrun exited with code {returncode}); no run folder was "
                            f"written. The end of torchrun's output:\n{tail}")


def _last_error(log: str, rank: str) -> str:
    """The last line of rank `rank`'s traceback in torchrun's output (the exception), if there is one."""
    prefix = f"[rank{rank}]:"
    lines = [line[len(prefix):].strip() for line in log.splitlines() if line.startswith(prefix)]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Interrupt)\b", line) and "ChildFailedError" not in line:
            return line.strip()
    return ""
