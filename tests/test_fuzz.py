"""Fuzzing with hypothesis: experiment files (random TOML, and values at the edges of every field of every section),
--set strings and data files (IDX, CSV, NPZ) end in a result, or in exit 2 with one error that names the key or
the file, never in a traceback.

How many cases each test tries is the hypothesis profile's (tests/conftest.py): "default" in make test,
"nightly" (HYPOTHESIS_PROFILE=nightly) in make stress, which runs the copies marked stress.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import math
import re
import struct
import subprocess
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import numpy as np
import pytest
import tomli_w
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from conftest import run_main
from dltune.experiment.config import ExperimentConfig
from dltune.data import DATASETS, TensorSplits, load_data
from dltune.errors import DltuneError
from dltune.models import MODELS
from dltune.experiment.sections import DataConfig
from dltune.techniques.batching import BATCH_POLICIES
from dltune.techniques.losses import LOSSES
from dltune.techniques.optim import OPTIMIZERS
from dltune.techniques.schedules import SCHEDULES

# every fuzz test runs once in make test and once, as a stress test, in make stress (with the nightly profile)
CAMPAIGN = pytest.mark.parametrize("campaign", ["make-test", pytest.param("nightly", marks=pytest.mark.stress)])

SECTIONS = tuple(ExperimentConfig.model_fields)


# --- what a case may end in ----------------------------------------------------------------------------------------

def leading_key(line: str) -> str:
    """The dotted path an error line starts with: "optim.lr" of "optim.lr: must be > 0", "" when none."""
    quoted = r'"(?:[^"\\]|\\.)*"'
    found = re.match(rf'\s*((?:{quoted}|[^\s:=,"]+)(?:\.(?:{quoted}|[^\s:=,."]+)|\[\d+\])*)[:=, ]', line)
    return found.group(1) if found else ""


def names_key_or_file(message: str, files: list[Path], given: set[str]) -> bool:
    """Whether an error names the file, or a key path that starts with a section or a key the case gave."""
    if any(str(f) in message for f in files) or message.startswith("--set "):
        return True
    first, *rest = message.split("\n")
    lines = rest if first == "invalid experiment:" else [first]
    quoted = {json.dumps(k) for k in given}  # how a key that is not a name is shown
    return bool(lines) and all(re.split(r"[.\[]", leading_key(line))[0] in set(SECTIONS) | given or
                               any(leading_key(line).startswith(k) for k in quoted) for line in lines)


def assert_ends_well(result: subprocess.CompletedProcess[str], files: list[Path], given: set[str]) -> None:
    """A result (exit 0), or exit 2 with `dltune CMD: error: ...` that names the key or the file."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    event(f"exit {result.returncode}")
    if result.returncode == 0:
        return
    assert result.returncode == 2, (result.returncode, result.stderr)
    prefix = f"dltune {result.args[1]}: error: "
    assert result.stderr.startswith(prefix), result.stderr
    message = result.stderr.removeprefix(prefix).rstrip("\n")
    assert names_key_or_file(message, files, given), message


# --- values: random TOML, and the edges of every field of the schema -----------------------------------------------

def schema_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted key, field) of every key of the experiment file, [compress.prune] and its kin included."""
    fields = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            fields += schema_fields(info.annotation, f"{key}.")
        else:
            fields.append((key, info))
    return fields


FIELDS = schema_fields(ExperimentConfig)
KEYS = [key for key, _ in FIELDS]
# registry names that check() looks up; an import path of the standard library (callable, or not there)
REGISTRIES = {"data.name": DATASETS, "model.name": MODELS, "loss.name": LOSSES, "optim.name": OPTIMIZERS,
              "schedule.name": SCHEDULES, "batch.policy": BATCH_POLICIES}
IMPORT_PATHS = ["json:dumps", "json:no_such_attribute", "json:__doc__", "no_such_module_for_fuzz:build", "a:b:c",
                "json.no_such:x"]
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

scalars = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70), st.floats(), st.text(max_size=12), st.booleans(),
    st.dates(), st.datetimes(), st.times(),
)
WRONG_TYPES = ["x", 1, -1, 0, 1.5, True, [], [1, "a"], {"k": 1}, datetime.date(2024, 2, 29)]
STRINGS = ["", " ", "x", "no-such-name", "adm", "é☃\u202e", "a" * 2000, "../../nowhere", "\x00", "null"]


def number_edges(kind: type, metadata: list[Any]) -> list[Any]:
    bounds = [getattr(m, attr) for m in metadata for attr in ("gt", "ge", "lt", "le") if hasattr(m, attr)
              and isinstance(m, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le))]
    if kind is int:
        near = [b + d for b in bounds for d in (-1, 0, 1)]
        return [0, 1, -1, 2, 2**63 - 1, -2**63, 10**30, *near]
    near = [v for b in bounds for v in (b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf), b - 1, b + 1)]
    return [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e308, -1e308, math.inf, -math.inf, math.nan, 3, *near]


def edges(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """Values at and beyond the edges of what `annotation` (with its constraints in `metadata`) accepts."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return st.one_of(*(edges(a, []) for a in get_args(annotation) if a is not type(None)))
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return edges(base, metadata + [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])])
    if origin is Literal:
        choices = list(get_args(annotation))
        return st.sampled_from([*choices, "no-such-choice", str(choices[0]).upper(), f" {choices[0]}"])
    if origin is tuple:
        items = get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            longest = max([m.min_length + 1 for m in metadata if isinstance(m, annotated_types.MinLen)] + [4])
            return st.lists(edges(items[0], []), max_size=longest)
        return st.one_of(st.tuples(*(edges(a, []) for a in items)).map(list),
                         st.lists(edges(items[0], []), max_size=len(items) + 1))
    if origin is dict:
        return st.dictionaries(st.sampled_from([*KEYS[:8], "x", "", "a.b", "é"]) | st.text(max_size=6),
                               st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                                            | st.dictionaries(st.sampled_from(KEYS), c, max_size=3), max_leaves=6),
                               max_size=3)
    if annotation in (int, float):
        return st.sampled_from(number_edges(annotation, metadata))
    if annotation is bool:
        return st.booleans()
    if annotation is str:
        return st.sampled_from([*STRINGS, *IMPORT_PATHS]) | st.text(max_size=8)
    return scalars  # Any


def field_values(key: str, info: FieldInfo) -> st.SearchStrategy[Any]:
    """A value for `key`: its default, one of its edges, a registry's name, or a value of the wrong type."""
    named = REGISTRIES[key].names() if key in REGISTRIES else []
    default = [] if info.default is None or info.default.__class__.__name__ == "PydanticUndefinedType" else [
        list(info.default) if isinstance(info.default, tuple) else info.default]
    return st.one_of(edges(info.annotation, list(info.metadata)), st.sampled_from([*default, *named, *WRONG_TYPES]))


def nested(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """{"optim": {"lr": 1}} from [("optim.lr", 1)]."""
    document: dict[str, Any] = {}
    for dotted, value in pairs:
        *sections, key = dotted.split(".")
        node = document
        for part in sections:
            node = node.setdefault(part, {})
        node[key] = value
    return document


field_pairs = st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f[0]), field_values(*f)))
unknown_pairs = st.tuples(st.sampled_from([*(f"{s}.no_such_key" for s in SECTIONS), "no_such_section.key",
                                           "regularization.weight_decay", "compress.prune.no_such_key"]),
                          st.sampled_from(WRONG_TYPES))
edge_documents = st.lists(field_pairs | unknown_pairs, min_size=1, max_size=5, unique_by=lambda p: p[0]).map(nested)

toml_keys = st.sampled_from([*SECTIONS, *{k.rsplit(".", 1)[-1] for k in KEYS}]) | st.text(max_size=6)
toml_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(toml_keys, c, max_size=3),
                           max_leaves=6)
random_documents = st.dictionaries(toml_keys, toml_values | st.dictionaries(toml_keys, toml_values, max_size=4),
                                   max_size=4)


def safe_imports(document: Any) -> bool:
    """No import path outside IMPORT_PATHS: a random one could name a module whose import does things."""
    if isinstance(document, dict):
        return all(safe_imports(v) for v in document.values())
    if isinstance(document, list):
        return all(safe_imports(v) for v in document)
    return not isinstance(document, str) or document in IMPORT_PATHS or not _IMPORT_PATH.search(document)


def config_cmd(capsys: pytest.CaptureFixture[str], path: Path, document: Any, *extra: str, json: bool = False,
               given: set[str] = frozenset()) -> None:
    if isinstance(document, dict):
        assume(safe_imports(document))
        path.write_text(tomli_w.dumps(document), encoding="utf-8")
        given = set(given) | set(document)
    else:
        path.write_bytes(document)
    result = run_main(capsys, "config", str(path), *extra, *(["--json"] if json else []))
    assert_ends_well(result, [path], given)


# --- experiment files and --set strings ----------------------------------------------------------------------------

@CAMPAIGN
@given(document=random_documents, json=st.booleans())
@example(document={"": {}}, json=False)  # was "(top level): unknown key": keys that are not names are shown quoted
@example(document={'"': {}, "\x85": 1, "a.b": {}}, json=False)
@example(document={"data": {}, "code": 1}, json=False)  # was AttributeError: 'int' object has no attribute 'get'
def test_random_toml_ends_well(campaign: str, document: dict[str, Any], json: bool, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    config_cmd(capsys, tmp_path / "experiment.toml", document, json=json)


@CAMPAIGN
@given(text=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
@example(text=b"\x80")  # was UnicodeDecodeError: a file that is not UTF-8
def test_random_bytes_end_well(campaign: str, text: bytes, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assume(safe_imports(text.decode("utf-8", "replace")))
    config_cmd(capsys, tmp_path / "experiment.toml", text)


@CAMPAIGN
@given(document=edge_documents, json=st.booleans())
def test_edges_of_every_field_end_well(campaign: str, document: dict[str, Any], json: bool, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config_cmd(capsys, tmp_path / "experiment.toml", document, json=json)


def toml_literal(value: Any) -> str:
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n") if not isinstance(value, dict) else "{}"


set_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: f"{k}.deeper"),
                     st.sampled_from([*SECTIONS, "", ".", "a..b", ".optim.lr", "optim.", "data.args.a.b", " optim.lr ",
                                      "optim . lr", "ÿ.é", "no_such.key"]),
                     st.text(max_size=10))
set_values = st.one_of(field_pairs.map(lambda p: toml_literal(p[1])), st.text(max_size=12),
                       st.sampled_from(["[1,2", "{a=1}", "{ a = 1 }", "nan", "-inf", "1e999", "0x10", "true", "'q'",
                                        '"unterminated', "1979-05-27", "[", "]", "=", "a=b", "[[1]]", ""]))
set_items = st.tuples(set_keys, st.sampled_from(["=", "", " = ", "=="]), set_values).map("".join)


@CAMPAIGN
@given(items=st.lists(set_items, min_size=1, max_size=3))
def test_set_strings_end_well(campaign: str, items: list[str], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assume(safe_imports(items))
    path = tmp_path / "experiment.toml"
    given = {item.partition("=")[0].strip().split(".")[0] for item in items}
    config_cmd(capsys, path, {"train": {"epochs": 2}}, *(f"--set={item}" for item in items), given=given)


# --- data files ----------------------------------------------------------------------------------------------------

def assert_loads_well(cfg: DataConfig, files: list[Path]) -> None:
    """load_data (what every command does first) gives finite, non-empty splits, or a DltuneError that names a
    file or a data key."""
    try:
        splits = load_data(cfg)
    except DltuneError as e:
        event("DltuneError")
        message = str(e)
        assert any(str(f) in message for f in files) or message.startswith("data."), message
        return
    event("loaded")
    assert isinstance(splits, TensorSplits)
    assert len(splits.train[0]) > 0 and splits.n_outputs >= 1
    for split in (splits.train, splits.val, splits.test):
        if split is not None:
            assert torch_finite(split[0]) and torch_finite(split[1]), splits.info


def torch_finite(t: Any) -> bool:
    return bool(np.all(np.isfinite(t.float().numpy()))) if t.numel() else True


data_settings = st.just({}) | st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["auto", "classification", "binary", "regression"]),
    "test_fraction": st.sampled_from([0.01, 0.2, 0.5, 0.99]),
    "val_fraction": st.sampled_from([0.0, 0.1, 0.5, 0.99]),
    "limit": st.sampled_from([1, 2, 3, 10, 10**9]),
    "normalize": st.sampled_from(["standard", "none"]),
    "classes": st.sampled_from([[0, 1], [1, 0], [0, 0], ["a", "b"], [5, 6], ["1", "2", "3"], [0, 1, 2]]),
    "per_class": st.sampled_from([1, 2, 100]),
    "seed": st.sampled_from([0, 1, 2**32 - 2]),
})

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@st.composite
def idx_files(draw: st.DrawFn, ndim: int, n: int) -> bytes:
    """An IDX file of `ndim` dimensions (the first of `n`), perhaps with a broken header or body, perhaps gzip."""
    dtype = np.dtype(draw(st.sampled_from(IDX_DTYPES)))
    shape = [n, *draw(st.lists(st.integers(0, 5), min_size=ndim - 1, max_size=ndim - 1))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    high = 3 if ndim == 1 else 200
    array = rng.integers(0, high, size=shape).astype(dtype)
    if dtype.kind == "f" and draw(st.booleans()):
        array.flat[: draw(st.integers(0, array.size))] = draw(st.sampled_from([np.nan, np.inf, 1e38, 0.5]))
    code = {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13, np.float64: 14}[dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = bytearray(header + array.astype(dtype.newbyteorder(">")).tobytes())
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "append", "magic", "ndim", "dim", "random"]))
    if damage == "truncate" and blob:
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif damage == "append":
        blob += draw(st.binary(min_size=1, max_size=9))
    elif damage == "magic":
        blob[draw(st.integers(0, 2))] = draw(st.integers(0, 255))
    elif damage == "ndim":
        blob[3] = draw(st.integers(0, 255))
    elif damage == "dim":
        at = 4 + 4 * draw(st.integers(0, ndim - 1))
        blob[at:at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 2**31, 2**32 - 1])))
    elif damage == "random":
        blob = bytearray(draw(st.binary(max_size=40)))
    if draw(st.booleans()):
        blob = bytearray(gzip.compress(bytes(blob), mtime=0))
        if draw(st.booleans()):
            blob = blob[: draw(st.integers(0, len(blob)))]
    return bytes(blob)


@st.composite
def idx_pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    n = draw(st.integers(0, 12))
    images = draw(idx_files(draw(st.sampled_from([3, 3, 4, 2, 1])), n))
    labels = draw(idx_files(draw(st.sampled_from([1, 1, 1, 2])), draw(st.sampled_from([n, n, n, n + 1, 0]))))
    return images, labels


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow or an empty mean is a bug here too
@CAMPAIGN
@given(pair=idx_pairs(), settings_=data_settings)
# 2 examples, test_fraction 0.99: was ValueError "cannot take 2 of 2 examples and leave some"
@example(pair=(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x01\x05\x07",
               b"\x00\x00\x08\x01\x00\x00\x00\x02\x02\x01"), settings_={"test_fraction": 0.99})
# images of 0 x 0 pixels: were loaded (RuntimeWarning: Mean of empty slice)
@example(pair=(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00",
               b"\x00\x00\x08\x01\x00\x00\x00\x02\x02\x01"), settings_={})
# float labels, one NaN (and one of 1e38): were cast to int64 (RuntimeWarning: invalid value encountered in cast)
@example(pair=(b"\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x05",
               b"\x00\x00\x0d\x01\x00\x00\x00\x01\x7f\xc0\x00\x00"), settings_={})
@example(pair=(b"\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x05",
               b"\x00\x00\x0d\x01\x00\x00\x00\x01\x7e\x96\x76\x99"), settings_={})
def test_idx_files_load_well(campaign: str, pair: tuple[bytes, bytes], settings_: dict[str, Any],
                             tmp_path: Path) -> None:
    images, labels = tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte"
    images.write_bytes(pair[0])
    labels.write_bytes(pair[1])
    assert_loads_well(DataConfig.model_validate({"name": "idx", "images": str(images), "labels": str(labels),
                                                 **settings_}), [images, labels])


csv_names = st.sampled_from(["a", "b", "y", "", "a ", "é", '"q"', '"a,b"', "Unnamed: 0", "1", "nan"]) | st.text(
    alphabet=st.characters(blacklist_characters=",\n\r"), max_size=4)
csv_cells = st.sampled_from(["0", "1", "1", "0", "-1", "2.5", "1e308", "1e39", "-1e39", "3e38", "nan", "NaN", "inf",
                             "-inf", "", "x", '"1,2"', '"', "  3 ", "1_000", "0x10", "True", "1.0"]) | st.integers(
    -3, 3).map(str)


@st.composite
def csv_texts(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CSV file and the target column named for it."""
    header = draw(st.lists(csv_names, max_size=5))
    width = st.integers(max(0, len(header) - 1), len(header) + 1) if draw(st.booleans()) else st.just(len(header))
    cells = csv_cells if draw(st.booleans()) else st.integers(0, 2).map(str) | st.sampled_from(["0.5", "-1.25"])
    rows = draw(st.lists(width.flatmap(lambda w: st.lists(cells, min_size=w, max_size=w)), max_size=14))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(",".join(row) for row in [header, *rows]) + draw(st.sampled_from([newline, ""]))
    if draw(st.booleans()):
        text = "\ufeff" + text
    blob = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"])), "replace")
    target = draw(st.sampled_from([*header, "y", "missing"]) if header else st.sampled_from(["y", "a"]))
    return draw(st.just(blob) | st.binary(max_size=30)), target


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow or an empty mean is a bug here too
@CAMPAIGN
@given(table=csv_texts(), settings_=data_settings)
# one cell more than the header in every row (pandas makes the first its index): was ValueError int('q')
@example(table=(b"a,y\nq,z,0\nr,0,1\n", "y"), settings_={})
@example(table=(b"a,a\n", "a"), settings_={})  # no rows: was ValueError "attempt to get argmax of an empty sequence"
@example(table=(b"a,b\n1e308,0\n1,1\n0,0\n", "b"), settings_={})  # was inf after the cast to float32
@example(table=(b"a,b\n1,inf\n2,1.5\n3,0.5\n", "b"), settings_={})  # an infinite target: was NaN targets
@example(table=(b"a,b\n0,0\n0,3e38\n1,0\n", "b"), settings_={})  # was "overflow encountered" (statistics in float32)
def test_csv_files_load_well(campaign: str, table: tuple[bytes, str], settings_: dict[str, Any],
                             tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_bytes(table[0])
    assert_loads_well(DataConfig.model_validate({"name": "csv", "path": str(path), "target": table[1],
                                                 **settings_}), [path])


def saved(save: Any, *args: Any, **kwargs: Any) -> bytes:
    """The bytes that np.save or np.savez writes."""
    buffer = io.BytesIO()
    save(buffer, *args, **kwargs)
    return buffer.getvalue()


NPZ_KEYS = ["x", "y", "X", "labels", ""]
npz_dtypes = st.sampled_from(["uint8", "int64", "float32", "float64", "bool", "complex64", "<U2", "object"])


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    """An .npz of arrays under likely and unlikely keys, or a broken one."""
    n = draw(st.integers(0, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # arrays that fit, but for their values
        x = rng.integers(0, 200, size=(n, *draw(st.sampled_from([[3], [4, 4], [1, 2, 2]])))).astype(draw(npz_dtypes))
        return saved(np.savez, x=x, y=rng.integers(0, draw(st.integers(1, 3)), size=n).astype(draw(npz_dtypes)))
    arrays = {}
    for key in draw(st.just(["x", "y"]) | st.lists(st.sampled_from(NPZ_KEYS), max_size=3, unique=True)):
        first = draw(st.sampled_from([n, n, n, n + 1, 0]))
        rest = draw(st.just([]) | st.lists(st.integers(0, 4), max_size=3))
        shape = [first, *rest] if draw(st.integers(0, 9)) else []
        dtype = draw(npz_dtypes)
        values = rng.integers(0, 3, size=shape)
        if dtype == "object":
            array = np.empty(shape, dtype=object)
            array.flat[:] = [_Canary() for _ in range(array.size)]
        else:
            array = values.astype(dtype)
            if dtype.startswith("float") and draw(st.booleans()):
                with np.errstate(over="ignore"):  # 1e300 in float32: inf
                    array.flat[: draw(st.integers(0, array.size))] = draw(st.sampled_from([np.nan, np.inf, 0.5, 1e300]))
        arrays[key or "arr_0"] = array
    buffer = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buffer, **arrays)
    blob = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "npy", "empty", "random"]))
    if damage == "truncate":
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif damage == "npy":
        buffer = io.BytesIO()
        np.save(buffer, rng.integers(0, 3, size=(n, 2)))
        blob = buffer.getvalue()
    elif damage == "empty":
        blob = b""
    elif damage == "random":
        blob = draw(st.binary(max_size=40))
    return blob


UNPICKLED: list[str] = []


class _Canary:
    """An object in an array of an .npz: unpickling it would leave a trace in UNPICKLED."""

    def __reduce__(self) -> tuple[Any, ...]:
        return UNPICKLED.append, ("unpickled",)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow or an empty mean is a bug here too
@CAMPAIGN
@given(blob=npz_files(), keys=st.just(("x", "y")) | st.tuples(st.sampled_from(NPZ_KEYS), st.sampled_from(NPZ_KEYS)),
       settings_=data_settings)
@example(blob=b"", keys=("x", "y"), settings_={})  # was EOFError
@example(blob=b"PK\x05\x06", keys=("x", "y"), settings_={})  # was zipfile.BadZipFile
@example(blob=saved(np.save, np.arange(2)), keys=("x", "y"), settings_={})  # an .npy: was TypeError (not a context)
@example(blob=saved(np.savez, x=np.ones((3, 2)), y=np.array([0.5, np.nan, 1.0])), keys=("x", "y"),
         settings_={})  # a NaN target: was loaded as a regression with NaN targets
@example(blob=saved(np.savez, x=np.ones((2, 3), np.complex64), y=np.zeros(2)), keys=("x", "y"),
         settings_={})  # complex inputs: were cast to float32 (ComplexWarning: the imaginary part dropped)
def test_npz_files_load_well(campaign: str, blob: bytes, keys: tuple[str, str], settings_: dict[str, Any],
                             tmp_path: Path) -> None:
    path = tmp_path / "arrays.npz"
    path.write_bytes(blob)
    assert_loads_well(DataConfig.model_validate({"name": "npz", "path": str(path), "x_key": keys[0],
                                                 "y_key": keys[1], **settings_}), [path])
    assert not UNPICKLED  # np.load(allow_pickle=False): an object array is refused, never unpickled


# --- what the fuzzing found, said plainly --------------------------------------------------------------------------

def test_an_unknown_key_is_named_whatever_its_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "experiment.toml"
    path.write_text('"my-section" = {}\n[optim]\n"a.b" = 1\n"" = 2\n')
    result = run_main(capsys, "config", str(path))
    assert result.returncode == 2
    assert '  "my-section": unknown key; allowed: data, model' in result.stderr
    assert '  optim."a.b": unknown key; allowed: name, lr' in result.stderr
    assert '  optim."": unknown key' in result.stderr


@pytest.mark.parametrize("setting", ["data.seed=-1", "data.seed=4294967295", "train.seed=18446744073709551616",
                                     "search.seed=4294967296"])
def test_a_seed_is_one_its_generator_takes(setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    """numpy's RandomState (data.seed, and + 1), torch.manual_seed (train.seed), Optuna's samplers (search.seed)
    raised ValueError at train or tune time."""
    result = run_main(capsys, "config", "examples/seed_mnist.toml", "--set", setting)
    assert result.returncode == 2 and f"{setting.partition('=')[0]}: Input should be" in result.stderr, result.stderr


def test_an_experiment_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "experiment.toml"
    path.write_bytes(b"[optim]\nlr = 0.1 # \xe9\n")
    result = run_main(capsys, "config", str(path))
    assert result.returncode == 2 and f"{path}: not valid TOML: not UTF-8 text" in result.stderr, result.stderr


@pytest.mark.parametrize("name, files", [
    ("csv", {"path": ("table.csv", b"a,y\n")}),
    ("npz", {"path": ("arrays.npz", b"")}),
    ("idx", {"images": ("images", b"\x00\x00\x08\x03"), "labels": ("labels", b"\x00\x00\x08\x01")}),
])
def test_a_broken_data_file_stops_train_with_its_name(name: str, files: dict[str, tuple[str, bytes]], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The data tests above call load_data, which every command calls first; here `dltune train` itself."""
    data = {"name": name, "target": "y"} if name == "csv" else {"name": name}
    for key, (file, blob) in files.items():
        (tmp_path / file).write_bytes(blob)
        data[key] = file  # relative: taken from the experiment file's folder
    path = tmp_path / "experiment.toml"
    path.write_text(tomli_w.dumps({"data": data, "train": {"epochs": 1}}))
    result = run_main(capsys, "train", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"dltune train: error: {tmp_path / next(iter(files.values()))[0]}: "), result.stderr
    assert not (tmp_path / "run").exists()
