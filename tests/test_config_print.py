"""`dltune config` shows every section and key of the experiment file, the unset ones as comments, and its
text reads back to the same values."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dltune.cli import main
from dltune.experiment.config import ExperimentConfig, load_config
from dltune.experiment.config_text import type_hint

from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.toml"))
FIELDS = [(section, key, info) for section, s in ExperimentConfig.model_fields.items()
          for key, info in s.annotation.model_fields.items()]


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["config", *args]) == 0
    return capsys.readouterr().out


def section_text(text: str, section: str) -> str:
    """The lines of [section] and its sub-tables, up to the next section."""
    match = re.search(rf"^\[{section}\]\n(.*?)(?=^\[(?!{section}\.)|\Z)", text, re.M | re.S)
    assert match, f"no [{section}]"
    return match.group(1)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_key_is_printed_and_reads_back(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = printed(capsys, str(example))
    config = load_config(example)
    for section, attribute, info in FIELDS:
        body, key = section_text(text, section), info.alias or attribute  # transfer.from_ is "from" in a file
        if getattr(getattr(config, section), attribute) is None:
            assert re.search(rf"^# {key} = \.\.\.  \(not set; .+\)$", body, re.M), f"{section}.{key}"
        else:
            assert re.search(rf"^{key} = |^\[{section}\.{key}\]$", body, re.M), f"{section}.{key}"
    assert tomllib.loads(text) == config.model_dump(mode="json", exclude_none=True)


def test_a_key_that_is_set_is_no_longer_a_comment(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(ROOT / "examples" / "seed_mnist.toml")
    assert "# limit = ...  (not set; an integer > 0)" in printed(capsys, example)
    text = printed(capsys, example, "--set", "data.limit=300", "--set", "regularization.clip_norm=1.5")
    assert "\nlimit = 300\n" in text and "# limit" not in text and "\nclip_norm = 1.5\n" in text
    assert tomllib.loads(text)["data"]["limit"] == 300


@pytest.mark.parametrize(("section", "key", "info"), FIELDS, ids=[f"{s}.{k}" for s, k, _ in FIELDS])
def test_every_key_has_a_type_hint(section: str, key: str, info) -> None:
    assert "a value" not in type_hint(info)  # every annotation is understood


@pytest.mark.parametrize(("path", "hint"), [
    ("data.limit", "an integer > 0"), ("data.dir", "a string"), ("data.mirrors", "a list of strings"),
    ("loss.pos_weight", "a number > 0"), ("loss.alpha", "a number > 0 and < 1"),
    ("regularization.early_stopping", "an integer >= 1"),
    ("search.directions", 'a list of values, each one of "maximize", "minimize", "auto"'),
])
def test_type_hints(path: str, hint: str) -> None:
    section, key = path.split(".")
    assert type_hint(ExperimentConfig.model_fields[section].annotation.model_fields[key]) == hint
