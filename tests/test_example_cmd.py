"""`dltune example`: every example of examples/ is listed and copied out as it is in the repository (the shipped
files: .toml and .py, no caches), and nothing that exists is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_main

EXAMPLES = ROOT / "examples"
FILES = sorted(p.stem for p in EXAMPLES.glob("*.toml"))
FOLDERS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and any(p.glob("*.toml")))


def _shipped(folder: Path) -> dict[str, str]:
    """The .toml and .py files under `folder`, by relative path, with their text."""
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*"))
            if p.suffix in (".toml", ".py") and "__pycache__" not in p.parts}


def test_the_list_names_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert "seed_mnist" in FILES and "own_model" in FOLDERS
    r = run_main(capsys, "example", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    expected = sorted([(n, False) for n in FILES] + [(n, True) for n in FOLDERS])
    assert [(e["name"], e["folder"]) for e in listed] == expected
    seed = next(e for e in listed if e["name"] == "seed_mnist")
    assert seed["summary"].startswith("The article's reference experiment")
    plain = run_main(capsys, "example")
    assert plain.returncode == 0 and "own_model/ " in plain.stdout and "dltune example NAME [DEST]" in plain.stdout


@pytest.mark.parametrize("name", FILES)
def test_a_file_example_is_copied_as_it_is(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "example", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"copied to {name}.toml\n"
    assert (tmp_path / f"{name}.toml").read_bytes() == (EXAMPLES / f"{name}.toml").read_bytes()


@pytest.mark.parametrize("name", FOLDERS)
def test_a_folder_example_is_copied_with_its_code(name: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "example", f"{name}/", "into/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    copied = tmp_path / "into" / name
    assert _shipped(copied) == _shipped(EXAMPLES / name) and any(p.endswith(".py") for p in _shipped(copied))
    assert not list(copied.rglob("__pycache__"))


def test_nothing_that_exists_is_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "exp.toml").write_text("# mine\n")
    (tmp_path / "seed_mnist.toml").write_text("# mine too\n")
    (tmp_path / "own_model").mkdir()
    for args in (["seed_mnist", "exp.toml"], ["seed_mnist"], ["seed_mnist", str(tmp_path)], ["own_model"]):
        r = run_main(capsys, "example", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("dltune example: error: DEST ") and "exists" in r.stderr
    assert (tmp_path / "exp.toml").read_text() == "# mine\n"
    assert (tmp_path / "seed_mnist.toml").read_text() == "# mine too\n"
    assert not any((tmp_path / "own_model").iterdir())


def test_an_unknown_name_is_refused_with_the_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "example", "seed", cwd=tmp_path)
    assert r.returncode == 2
    assert "NAME 'seed': no such example (did you mean 'seed_mnist'?); examples: " in r.stderr
    assert list(tmp_path.iterdir()) == []
