"""Asynchronous successive halving that pauses trials at a rung until they earn promotion (ASHA, Li et al. 2020).

Optuna's SuccessiveHalvingPruner decides once, when a trial reaches a rung: promoted if it is in the top
1/η of the trials seen there so far, and the first η − 1 trials of every rung are promoted for want of
rivals. With a sampler that keeps improving (TPE), most late trials beat the early ones and go on, so the
search spends far more than successive halving's budget. The paper's ASHA instead pauses a trial at its
rung and promotes, whenever a worker is free, a paused trial in the top ⌊n/η⌋ of its rung (n trials there),
highest rung first; otherwise it starts a new trial. Optuna cannot pause a trial, so dltune does: each
trial trains in its own thread, which waits at a rung (its model, optimizer and heartbeat kept) for the
word to go on or to stop. Other trials reseed and draw from torch's process-wide generator meanwhile
(shuffling, dropout) and may change its thread count: a trial gets its own back when it goes on, so it
trains exactly as if it had not waited, and its experiment file alone reproduces it. Beyond search.max_paused
trials waiting in memory, the weakest is saved to disk instead (its run folder's checkpoint: dltune.run.checkpoints) and
its thread ends, so that its model, optimizer and data are freed; promoted or stopped later, it is loaded and goes
on from there, exactly as one that waited in memory.

Two rules of dltune's own. A rung reached by n trials promotes at most ⌊n/η⌋ of them in all: the paper
promotes any paused trial that is in the current top ⌊n/η⌋, so under an improving sampler the late,
better trials all go on while the early ones already have, and the budget grows past successive
halving's. With the cap a study spends what synchronous successive halving spends (32 trials of 10
epochs at η = 3: 32 + 10·2 + 3·6 + 1 = 71 epochs, 22%); the price is that a good late trial waits for
a slot, which opens every η trials. And once no new trial will start, a rung with fewer than η trials
promotes its best, so that a study ends with a complete trial.

Rungs are at min_epochs · η^k epochs, below the training's length, as in Optuna's pruner.

ASHA assumes that a trial's rank at a rung predicts its rank at the end. Where the first epochs mislead (a model
that overfits, dropout and weight decay that pay only late), its first rung throws away the configurations that
would win. So the search checks the assumption as it goes (dltune.study.rank_check): a rung whose ranks disagree
with later ranks no longer holds anyone back, and every trial waiting there goes on to the next rung (`distrusted`
below); and one promotion in four goes to a witness near the rung's median, whose later value tests the rung.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dltune.run.checkpoints import Paused
from dltune.run.runtime import torch_state_kept
from dltune.study.records import Curve

__all__ = ["Ladder", "Move", "Turn", "next_move", "promotable", "rungs", "weakest"]

GO, STOP, ABORT, SPILL = "go", "stop", "abort", "spill"  # the words a paused trial waits for
# of a rung's promotions, the 2nd, 6th, 10th, ... go to a witness, the waiting trial nearest the rung's median: the
# trials that went on then span the rung's range, and rank_check can tell a rung that ranks from one that misleads
WITNESS_EVERY = 4


def rungs(min_epochs: int, factor: int, epochs: int) -> list[int]:
    """Epochs at which trials wait for promotion: min_epochs · factor^k below `epochs`."""
    out, r = [], min_epochs
    while r < epochs:
        out.append(r)
        r *= factor
    return out


def promotable(trials: Sequence[Curve], paused: dict[int, int], factor: int, maximize: bool,
               draining: bool, distrusted: Collection[int] = ()) -> int | None:
    """The paused trial to promote now, by number, or None.

    `trials`: every trial of the study (all processes); `paused`: this process's paused trials, number ->
    the rung epoch each waits at. A rung reached by n trials promotes at most ⌊n/η⌋ of them, and only
    from its top ⌊n/η⌋ (fewer than ⌊n/η⌋ strictly better); when `draining` (no new trial will start), a
    rung with fewer than η trials promotes its best. Of a rung's promotions, every WITNESS_EVERY-th from the second on
    goes to a witness, the waiting trial nearest the rung's median (while η or more wait and new trials come): the same
    count of promotions, so the same budget. A rung in `distrusted` (rank_check.rank_checks) promotes every trial.
    Highest rung first; there, the best trial first.
    """
    sign = 1.0 if maximize else -1.0
    for epoch in sorted(set(paused.values()), reverse=True):
        values = {t.number: sign * t.intermediate_values[epoch] for t in trials if epoch in t.intermediate_values}
        if epoch in distrusted:
            return max((n for n, e in paused.items() if e == epoch), key=lambda n: values.get(n, -math.inf))
        slots = len(values) // factor or (1 if draining else 0)
        promoted = sum(max(t.intermediate_values) > epoch for t in trials if epoch in t.intermediate_values)
        if promoted >= slots:
            continue
        waiting = sorted((n for n, e in paused.items() if e == epoch and n in values), key=lambda n: -values[n])
        if WITNESS_EVERY and promoted % WITNESS_EVERY == 1 and not draining and len(waiting) >= factor:
            middle = statistics.median(values.values())  # a witness: the typical trial, not the best
            return min(waiting, key=lambda n: (abs(values[n] - middle), n))
        for number in waiting:
            if sum(v > values[number] for v in values.values()) < slots:
                return number
    return None


@dataclass(frozen=True)
class Turn:
    """What a worker knows when it decides its next move: counts of the study's trials, and its situation."""

    finished: int  # complete or pruned, by every worker
    running: int  # by every worker; this worker's paused trials included
    target: int  # search.trials: finished trials the study aims for
    late: bool  # this worker's --timeout has passed: it starts and promotes nothing more
    heartbeats: bool  # the storage tells a live trial from a dead one (a database; not a journal file)
    training_elsewhere: bool  # another worker's trial is on its way to a rung


@dataclass(frozen=True)
class Move:
    """A worker's next move: start a new trial, resume a paused one, prune a paused one, save a paused one to disk
    (spill), wait, or end."""

    kind: Literal["start", "resume", "prune", "spill", "wait", "end"]
    trial: int | None = None  # resume, prune, spill: the paused trial's number


def next_move(turn: Turn, trials: Sequence[Curve], paused: dict[int, int], *, factor: int, maximize: bool,
              max_paused: int, held: Collection[int] | None = None, distrusted: Collection[int] = ()) -> Move:
    """The search loop's decision, from plain data (the loop only carries it out).

    `trials`: the trials with the per-epoch values (every worker's); `paused`: this worker's paused trials,
    number -> rung epoch; `held`: those of them that wait in memory (default: all); `distrusted`: rungs whose ranks
    disagree with later ones (rank_check.rank_checks), which promote every trial. In order: more than
    `max_paused` waiting in memory saves the weakest of them to disk; a study at its target
    (or a worker past its timeout) with nothing paused ends; a promotable paused trial goes on; while there is
    room a new trial starts; paused trials wait while another worker's trials are still on their way to the
    rungs, and are pruned one by one after that; with nothing paused and no room the worker waits for the last
    trials to end elsewhere, unless the storage has no heartbeats to tell a dead worker from a live one (then
    it ends and leaves those trials to their workers).
    """
    held = paused.keys() if held is None else held
    if len(held) > max_paused:
        return Move("spill", weakest(trials, {n: paused[n] for n in held}, maximize))
    if (turn.finished >= turn.target or turn.late) and not paused:
        return Move("end")
    room = turn.finished + turn.running < turn.target and not turn.late
    if paused and not turn.late:
        number = promotable(trials, paused, factor, maximize, draining=not room, distrusted=distrusted)
        if number is not None:
            return Move("resume", number)
    if room:
        return Move("start")
    if paused and not turn.late and turn.training_elsewhere:
        return Move("wait")
    if paused:
        return Move("prune", next(iter(paused)))
    return Move("wait") if turn.heartbeats else Move("end")


def weakest(trials: Sequence[Curve], paused: dict[int, int], maximize: bool) -> int:
    """The paused trial least likely ever to be promoted: the worst at the lowest rung."""
    sign = 1.0 if maximize else -1.0
    epoch = min(paused.values())
    values = {t.number: sign * t.intermediate_values[epoch] for t in trials if t.number in paused}
    return min((n for n, e in paused.items() if e == epoch), key=lambda n: values.get(n, -math.inf))


@dataclass
class _Held:
    epoch: int
    word: queue.Queue[str] = field(default_factory=lambda: queue.Queue(maxsize=1))


@dataclass(frozen=True)
class _OnDisk:
    epoch: int
    again: Callable[[], int]  # the trial from its checkpoint, in a new thread (Paused.again)


class Ladder:
    """This process's trials, one training at a time, paused at rungs until promoted or stopped.

    `start(run)` runs `run()` (one whole trial, returning its number) in a new thread; `resume(number)`
    lets a paused trial go on; `stop(number)` ends it as pruned; `spill(number)` has it save itself to disk and
    end its thread (it raises checkpoints.Paused, whose `again` goes on from the checkpoint). Each returns when
    that trial pauses (None) or finishes (what `run` returned); an exception in the trial's thread is raised
    here. A ladder without rungs never pauses: one trial after another, as Optuna's own pruners need.
    """

    def __init__(self, epochs: list[int]) -> None:
        self.epochs = set(epochs)
        self.paused: dict[int, _Held] = {}  # trial number (in the study that holds the per-epoch values) -> held
        self.on_disk: dict[int, _OnDisk] = {}  # paused trials saved to disk, whose threads ended
        self._decided: dict[int, str] = {}  # the word for a trial loaded from disk, which asks again at its rung
        self._events: queue.Queue[tuple[str, int | None, _Held | int | BaseException]] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def waiting(self) -> dict[int, int]:
        """Paused trials, in memory and on disk: number -> the rung epoch each waits at."""
        return {**{number: held.epoch for number, held in self.paused.items()},
                **{number: disk.epoch for number, disk in self.on_disk.items()}}

    def at_rung(self, number: int, epoch: int) -> str:
        """Called in a trial's thread after it reported `epoch`: GO on, STOP (pruned) here, or SPILL (save the
        trial to disk and end its thread). Raises KeyboardInterrupt when the work is interrupted, so that the
        trial is marked failed."""
        if epoch not in self.epochs:
            return GO
        word = self._decided.pop(number, None)  # a trial loaded from disk: decided before it was loaded
        if word is None:
            held = _Held(epoch)
            with torch_state_kept(rng=True):
                self._events.put(("paused", number, held))
                word = held.word.get()
        if word == ABORT:
            raise KeyboardInterrupt
        return word

    def start(self, run: Callable[[], int]) -> int | None:
        def body() -> None:
            try:
                self._events.put(("finished", None, run()))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, which re-raises it
                self._events.put(("raised", None, e))

        thread = threading.Thread(target=body, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self._wait()

    def resume(self, number: int) -> int | None:
        return self._tell(number, GO)

    def stop(self, number: int) -> int | None:
        return self._tell(number, STOP)

    def spill(self, number: int) -> None:
        held = self.paused.pop(number)
        held.word.put(SPILL)
        try:
            self._wait()
        except Paused as e:
            assert e.again is not None, "a trial that pauses says how it goes on"
            self.on_disk[number] = _OnDisk(held.epoch, e.again)
            return
        raise AssertionError(f"trial {number} was told to save itself to disk, and did not")

    def _tell(self, number: int, word: str) -> int | None:
        if number in self.on_disk:  # loaded again, in a new thread; it asks again at its rung and hears `word`
            self._decided[number] = word
            return self.start(self.on_disk.pop(number).again)
        self.paused.pop(number).word.put(word)
        return self._wait()

    def abort(self, timeout: float = 10.0) -> None:
        """Interrupt every paused trial (each is then marked failed) and wait for their threads, up to
        `timeout` seconds in all (a trial still training stops at the end of its epoch, if ever)."""
        for number in list(self.paused):
            self.paused.pop(number).word.put(ABORT)
        self.on_disk.clear()  # no thread: the search loop fails their trials (their Paused.again is not called)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _wait(self) -> int | None:
        while True:
            try:  # with a timeout, so that the main thread still runs its signal handlers (Ctrl-C)
                kind, number, payload = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            if kind == "paused":
                assert number is not None and isinstance(payload, _Held)
                self.paused[number] = payload
                return None
            self._threads = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if kind == "raised":
                assert isinstance(payload, BaseException)
                raise payload
            assert isinstance(payload, int)
            return payload
