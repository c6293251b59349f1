"""Optuna's private API goes through study.optuna_adapter alone. Each adapter function runs here against the installed
Optuna on real storages (in memory, SQLite, a journal file; PostgreSQL for the database's own), so that an upgrade
that breaks one fails here first; and a scan of the package finds a private Optuna name anywhere else."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from dltune.experiment.config import load_config
from dltune.study import optuna_adapter
from dltune.study.engines import SAMPLERS, quiet
from dltune.study.optuna_adapter import (READ_FROM, RDB_PRIVATE_METHODS, beating_trial_ids, rdb_backend,
                                         reseed_sampler, storage_of, take_waiting, trial_id, trial_ids,
                                         trial_numbered_qmc)
from dltune.study.retry import PatientStorage
from dltune.study.space import parse_space

from conftest import POSTGRES, ROOT
from test_tune import experiment

PACKAGE = ROOT / "src" / "dltune"
ADAPTER = Path(optuna_adapter.__file__).resolve()
STORAGES = ("memory", "sqlite", "journal")

# dltune chose these experimental features (QMC, TPE's groups, heartbeats); their warnings say nothing here
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

MakeStudy = Callable[..., optuna.Study]


@pytest.fixture(params=STORAGES)
def make_study(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStudy:
    """A factory of studies on one kind of storage, each study under a new name."""
    kind = request.param
    storage = {"memory": optuna.storages.InMemoryStorage(), "sqlite": RDBStorage(f"sqlite:///{tmp_path / 's.db'}"),
               "journal": JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))}[kind]
    names = iter(range(1000))

    def make(sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.create_study(storage=storage, study_name=f"{kind}-{next(names)}", sampler=sampler)

    return make


def test_the_adapter_was_read_from_the_installed_optuna() -> None:
    # patch releases may come and go; a new minor release is read again, function by function, and READ_FROM and
    # the comments moved to it (the tests below say what broke; this one says that nobody looked)
    assert optuna.__version__.split(".")[:2] == READ_FROM.split(".")[:2], (
        f"Optuna {optuna.__version__} is installed; study/optuna_adapter.py was read from {READ_FROM}: read its "
        "functions against the new release, then update READ_FROM and the comments")


def test_storage_of_is_the_storage_the_study_reads_and_writes(make_study: MakeStudy) -> None:
    study = make_study()
    storage = storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    storage.set_study_user_attr(storage.get_study_id_from_name(study.study_name), "written", "through the storage")
    assert study.user_attrs["written"] == "through the storage"


def test_trial_ids_are_the_ids_the_storage_takes(make_study: MakeStudy) -> None:
    study = make_study()
    other = make_study()  # ids count across the studies of a storage; numbers count within one
    other.ask()
    asked = [study.ask() for _ in range(3)]
    ids = trial_ids(study, [0, 1, 2])
    assert ids == {t.number: t._trial_id for t in asked}  # Optuna's own record of them (a test may read it)
    assert [storage_of(study).get_trial(ids[n]).number for n in range(3)] == [0, 1, 2]
    assert trial_id(study, 2) == ids[2]
    # what sharing.claim_trial does with the id: the trial back in the queue
    storage_of(study).set_trial_state_values(trial_id(study, 2), TrialState.WAITING)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]


def test_rdb_backend_is_the_database_storage_behind_a_study(make_study: MakeStudy, tmp_path: Path) -> None:
    study = make_study()
    backend = rdb_backend(storage_of(study))
    assert isinstance(backend, RDBStorage) if study.study_name.startswith("sqlite") else backend is None
    by_url = optuna.create_study(storage=f"sqlite:///{tmp_path / 'url.db'}")  # wrapped in Optuna's cache
    assert not isinstance(storage_of(by_url), RDBStorage) and isinstance(rdb_backend(storage_of(by_url)), RDBStorage)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RDBStorage, str]]:
    """A database storage with heartbeats, and a new study name in it (deleted afterwards on the server)."""
    sqlite = request.param == "sqlite"
    url = f"sqlite:///{tmp_path / 'beats.db'}" if sqlite else POSTGRES
    name = "beats" if sqlite else request.getfixturevalue("pg_study")
    with quiet():  # heartbeats are experimental, and meant for optimize()
        yield RDBStorage(url, heartbeat_interval=60), name


def test_beating_trial_ids_are_the_trials_with_a_heartbeat(database: tuple[RDBStorage, str]) -> None:
    storage, name = database
    study = optuna.create_study(storage=storage, study_name=name)
    for _ in range(3):
        study.ask()
    ids = trial_ids(study, [0, 1, 2])
    assert rdb_backend(storage_of(study)) is storage
    assert beating_trial_ids(storage, ids.values()) == set()
    storage.record_heartbeat(ids[1])
    assert beating_trial_ids(storage, ids.values()) == {ids[1]}
    assert beating_trial_ids(storage, [ids[0], ids[2]]) == set() and beating_trial_ids(storage, []) == set()


def test_the_private_rdb_methods_are_the_ones_optuna_calls_itself() -> None:
    # Optuna's cache (around every RDBStorage a study opens) and fail_stale_trials call RDBStorage's private methods;
    # retry.PatientStorage must try each again, so a new one in a new release has to be named in the adapter
    from optuna.storages._cached_storage import _CachedStorage
    from optuna.storages._heartbeat import fail_stale_trials

    called = set(re.findall(r"self\._backend\.(_[a-z_]+)\(", inspect.getsource(_CachedStorage)))
    called |= set(re.findall(r"storage\.(_[a-z_]+)\(", inspect.getsource(fail_stale_trials)))
    assert called == set(RDB_PRIVATE_METHODS)
    for name in RDB_PRIVATE_METHODS:
        assert callable(getattr(RDBStorage, name)) and getattr(PatientStorage, name) is not getattr(RDBStorage, name)


SPACE = {"optim.lr": [1e-3, 1e-2], "model.dropout": [0.0, 0.1]}  # choices: the grid sampler's too


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    config = load_config(experiment(sampler=name, space=SPACE, seed=seed))
    return SAMPLERS.get(name)(config.search, parse_space(config.search.space, config))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_reseed_sampler_finds_every_samplers_random_state(name: str) -> None:
    # a sampler whose random states moved where reseed_sampler does not look would reseed nothing, silently: every
    # worker would draw the first one's points again
    assert reseed_sampler(_sampler(name, seed=1), np.random.SeedSequence(7)) >= 1


@pytest.mark.parametrize("name", [n for n in SAMPLERS.names() if n != "grid"])  # grid: points from the grid
def test_reseed_sampler_sets_the_stream_that_the_next_draw_comes_from(name: str, make_study: MakeStudy) -> None:
    drawn = []
    for made_with, reseeded_with in ((1, 7), (2, 7), (1, 8)):
        sampler = _sampler(name, seed=made_with)
        trial = make_study(sampler).ask()
        reseed_sampler(sampler, np.random.SeedSequence(reseeded_with))
        drawn.append(trial.suggest_float("x", 0.0, 1.0))  # the first trial: each sampler draws it at random
    assert drawn[0] == drawn[1] != drawn[2]


def test_trial_numbered_qmc_gives_a_trial_the_point_of_its_number(make_study: MakeStudy) -> None:
    space = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}

    def run(study: optuna.Study) -> dict[str, float]:
        trial = study.ask(space)
        study.tell(trial, 0.0)
        return trial.params

    whole = make_study(trial_numbered_qmc(seed=3))
    points = [run(whole) for _ in range(6)]
    for sampler, same in ((trial_numbered_qmc(seed=3), True), (optuna.samplers.QMCSampler(seed=3), False)):
        # trials 0-4 told without sampling (another worker's): QMC's own count would give trial 5 its first point
        study = make_study(sampler)
        for params in points[:5]:
            study.add_trial(create_trial(params=params, distributions=space, value=0.0))
        assert (run(study) == points[5]) is same


# -- the scan: a private Optuna name in any module but the adapter


def _private(name: str) -> bool:
    return name.startswith("_") and name != "_" and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def _optuna_private_names() -> frozenset[str]:
    """Every name that Optuna's source defines with a leading underscore: modules, functions, classes, methods, and
    the attributes and variables it assigns."""
    root = Path(optuna.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        names |= {part for part in path.relative_to(root).with_suffix("").parts if _private(part)}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return frozenset(n for n in names if _private(n))


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _resolve(path: str) -> object | None:
    """The object that a dotted path into Optuna names, or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
        return found
    return None


def _defined_by(base: type) -> set[str]:
    """The private names that Optuna's classes among `base` and its ancestors define (methods, self._x = ...)."""
    names: set[str] = set()
    for cls in base.__mro__:
        if cls.__module__.split(".")[0] == "optuna":
            for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(cls)))):
                if isinstance(node, ast.FunctionDef):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
    return {n for n in names if _private(n)}


def private_optuna_uses(source: str) -> list[str]:
    """Where `source` reaches a private name of Optuna's, as "line N: what": an import path or a dotted path from
    Optuna with a private part, a private Optuna attribute of any object but the class's own (getattr's string
    included), and a private name of an Optuna base class overridden or read in a subclass."""
    tree = ast.parse(source)
    private = _optuna_private_names()
    aliases: dict[str, str] = {}  # local name -> dotted path in optuna
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0])
                        for a in node.names if a.name.split(".")[0] == "optuna"}
            paths = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            aliases |= {(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names}
            paths = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found += [f"line {node.lineno}: import {p}" for p in paths
                  if p.split(".")[0] == "optuna" and any(_private(part) for part in p.split("."))]

    def optuna_path(node: ast.expr) -> str | None:
        dotted = _dotted(node)
        head, _, rest = (dotted or "").partition(".")
        return None if head not in aliases else ".".join(filter(None, [aliases[head], rest]))

    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        bases = [b for b in (_resolve(p) for p in map(optuna_path, cls.bases) if p) if isinstance(b, type)]
        inherited = set().union(*map(_defined_by, bases)) if bases else set()
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef) and node.name in inherited:
                found.append(f"line {node.lineno}: def {node.name} overrides {cls.name}'s Optuna base")
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                  and node.attr in inherited):
                found.append(f"line {node.lineno}: self.{node.attr} of {cls.name}'s Optuna base")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            path = optuna_path(node)
            if path is not None and any(_private(part) for part in path.split(".")):
                found.append(f"line {node.lineno}: {path}")
            elif path is None and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) or (
                isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")):
            strings = node.elts if not isinstance(node, ast.Call) else node.args[1:2]
            found += [f"line {node.lineno}: {s.value!r}" for s in strings
                      if isinstance(s, ast.Constant) and isinstance(s.value, str) and s.value in private]
    return sorted(set(found), key=lambda f: int(f.split(":")[0].removeprefix("line ")))


def test_take_waiting_takes_a_queued_trial_once_and_never_creates_one(make_study: MakeStudy) -> None:
    study = make_study()
    study.enqueue_trial({"x": 0.5}, user_attrs={"pbt": {"member": 0}})
    study.enqueue_trial({"x": 0.25})
    first, second = take_waiting(study), take_waiting(study)
    assert first is not None and second is not None
    assert (first.number, second.number) == (0, 1) and first.user_attrs == {"pbt": {"member": 0}}
    assert first.suggest_float("x", 0.0, 1.0) == 0.5  # the queued value
    assert take_waiting(study) is None  # the queue is empty: no new trial made
    assert len(study.trials) == 2 and {t.state for t in study.trials} == {TrialState.RUNNING}


def test_no_module_but_the_adapter_uses_a_private_optuna_name() -> None:
    found = {str(path.relative_to(ROOT)): uses for path in sorted(PACKAGE.rglob("*.py"))
             if path.resolve() != ADAPTER and (uses := private_optuna_uses(path.read_text(encoding="utf-8")))}
    assert not found, f"private Optuna names outside study/optuna_adapter.py (put them there, with a test): {found}"


def test_the_adapter_is_where_the_private_names_are() -> None:
    # the scan sees what the adapter holds: were it blind, the test above could not fail
    uses = " ".join(private_optuna_uses(ADAPTER.read_text(encoding="utf-8")))
    for name in ("._storage", "'_backend'", "optuna.storages._rdb.models", "optuna.samplers._lazy_random_state",
                 "_find_sample_id"):
        assert name in uses, (name, uses)


@pytest.mark.parametrize("probe", [
    "x = study._storage\n",
    "n = trial._trial_id\n",
    "from optuna.storages._heartbeat import BaseHeartbeat\n",
    "import optuna.storages._rdb.models\n",
    "from optuna.storages import _CachedStorage\n",
    "import optuna\nbeats = isinstance(s, optuna.storages._heartbeat.BaseHeartbeat)\n",
    "from optuna import storages\nbeats = isinstance(s, storages._heartbeat.BaseHeartbeat)\n",
    "storage = getattr(storage, '_backend', storage)\n",
    "RETRIED = ('get_trial', '_get_trials')\n",
    "import optuna\nclass Q(optuna.samplers.QMCSampler):\n    def _find_sample_id(self, study, space):\n"
    "        return 0\n",
    "from optuna.storages import RDBStorage\nclass P(RDBStorage):\n    def f(self):\n"
    "        return self._version_manager\n",
])
def test_the_scan_catches_a_private_optuna_name(probe: str) -> None:
    assert private_optuna_uses(probe), probe


@pytest.mark.parametrize("probe", [
    "self._storage = storage\n",
    "n = trial.number\n",
    "import optuna\nfail = optuna.storages.fail_stale_trials\n",
    "from optuna.storages.journal import JournalFileSymlinkLock\n",
    "import torch\ntorch._foreach_mul_(x, 1.0)\n",
    "state = details.pop('_state')\n",
    "from optuna.storages import RDBStorage\nclass P(RDBStorage):\n    def f(self):\n        self._down_since = None\n",
])
def test_the_scan_passes_what_is_public(probe: str) -> None:
    assert private_optuna_uses(probe) == [], probe
