from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dltune.cli import main
from dltune.experiment.config import ExperimentConfig, load_config, override, parse_overrides, to_toml
from dltune.errors import ConfigError

from conftest import ROOT, run_cli, run_main


def test_defaults_are_the_reference_experiment() -> None:
    c = load_config()
    assert (c.data.name, c.model.name, c.model.hidden, c.model.activation) == ("mnist-5k", "mlp", (500,), "relu")
    assert (c.optim.name, c.optim.lr, c.batch.size, c.train.epochs, c.train.seed) == ("adam", 1e-3, 100, 10, 1)


def test_overrides_are_toml_literals_or_bare_words() -> None:
    assert parse_overrides(["optim.lr=3e-3", "model.hidden=[256, 128]", "data.name=digits", 'loss.name="mse"',
                            "train.deterministic=false"]) == {
        "optim.lr": 0.003, "model.hidden": [256, 128], "data.name": "digits", "loss.name": "mse",
        "train.deterministic": False}
    c = load_config(None, ["optim.lr=3e-3", "model.hidden=[256,128]"])
    assert c.optim.lr == 0.003 and c.model.hidden == (256, 128)


def test_config_is_frozen_and_override_returns_a_copy() -> None:
    c = load_config()
    with pytest.raises(Exception):
        c.optim.lr = 1.0  # type: ignore[misc]
    d = override(c, {"optim.lr": 0.5, "batch.size": 32})
    assert (d.optim.lr, d.batch.size, c.optim.lr, c.batch.size) == (0.5, 32, 1e-3, 100)


@pytest.mark.parametrize(("setting", "expected"), [
    ("optim.lr=-1", "optim.lr: Input should be greater than 0 (got -1)"),
    ("optim.lrr=1", "optim.lrr: unknown key; allowed: name, lr, momentum"),
    ("model.activation=swish", "model.activation: Input should be 'relu', 'leaky_relu', 'gelu'"),
    ("model.hidden=[500, 0]", "model.hidden[1]: Input should be greater than 0 (got 0)"),
    ("train.epochs=ten", "train.epochs: Input should be a valid integer (got 'ten')"),
    ("train.epochs=2.5", "train.epochs: Input should be a valid integer (got 2.5)"),
    ("optim.nesterov=true", "optim.nesterov: nesterov = true needs momentum > 0"),
    ("data.val_fraction=1.5", "data.val_fraction: Input should be less than 1"),
    ("train.device=tpu", "train.device: Input should be 'auto', 'cpu', 'cuda', 'cuda:N' (the GPU of index N) or 'mps'"),
    ("datta.name=x", "datta: unknown key; allowed: data, model, optim, schedule"),
])
def test_bad_values_name_the_path(setting: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [setting])
    assert expected in str(e.value)


def test_bad_file_contents(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 'fast'\n[model]\nwidth = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "optim.lr: Input should be a valid number (got 'fast')" in str(e.value)
    assert "model.width: unknown key" in str(e.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[optim\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="missing.toml: no such experiment file"):
        load_config(tmp_path / "missing.toml")


def test_relative_data_paths_follow_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "exp.toml"
    f.write_text('[data]\nname = "csv"\npath = "table.csv"\ntarget = "y"\n')
    assert load_config(f).data.path == str(tmp_path / "sub" / "table.csv")


def test_resolved_toml_round_trips() -> None:
    c = load_config(ROOT / "examples" / "seed_mnist.toml", ["optim.lr=0.002", "model.hidden=[64,32]"])
    again = ExperimentConfig.model_validate(tomllib.loads(to_toml(c)))
    assert again == c


@pytest.mark.parametrize(("args", "expected"), [
    (["config", "examples/seed_mnist.toml", "--set", "optim.lr=-1"], "optim.lr: Input should be greater than 0"),
    (["config", "examples/seed_mnist.toml", "--set", "model.name=transformer"],
     "model.name: unknown model 'transformer'"),
    (["config", "examples/seed_mnist.toml", "--set", "data.name=mnist5k"], "(did you mean 'mnist-5k'?)"),
    (["config", "examples/seed_mnist.toml", "--set", "optim.name=adamm"], "optim.name: unknown optimizer 'adamm'"),
    (["config", "examples/seed_mnist.toml", "--set", "nodot=1"], "expected section.key=value"),
    (["config", "no/such.toml"], "no/such.toml: no such experiment file"),
    (["train", "examples/seed_mnist.toml", "--set", "batch.size=0"], "batch.size: Input should be greater than 0"),
])
def test_cli_config_errors_exit_2(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert expected in err and out == ""


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    r = run_cli("train", "examples/seed_mnist.toml", "--set", "model.hidden=[0]", "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "model.hidden[0]: Input should be greater than 0" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "run").exists()  # rejected before anything was written


def test_cli_config_prints_resolved_toml() -> None:
    r = run_cli("config", "examples/seed_mnist.toml", "--set", "optim.lr=0.01")
    assert r.returncode == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    assert doc["optim"]["lr"] == 0.01 and doc["model"]["hidden"] == [500] and doc["train"]["deterministic"] is True


def test_a_renamed_key_says_what_it_is_called_now(capsys: pytest.CaptureFixture[str]) -> None:
    for source, overrides in (({"regularization": {"weight_decay": 1e-2}}, []), (None, ["regularization.weight_decay=0.01"])):
        with pytest.raises(ConfigError) as e:
            load_config(source, overrides)
        assert "regularization.weight_decay: renamed to regularization.decoupled_weight_decay" in str(e.value)
    assert load_config({"regularization": {"decoupled_weight_decay": 1e-2}}).regularization.decoupled_weight_decay == 1e-2
    assert load_config({"optim": {"weight_decay": 1e-2}}).optim.weight_decay == 1e-2  # the optimizer's own keeps its name
    r = run_main(capsys, "train", "examples/seed_mnist.toml", "--set", "regularization.weight_decay=0.01")
    assert r.returncode == 2 and "renamed to regularization.decoupled_weight_decay" in r.stderr


def _float_keys(model: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every setting of the config models that takes a float (alone, in a union or optional), by dotted path."""
    import typing

    from pydantic import BaseModel

    def floats(hint: object) -> bool:
        if hint is float:
            return True
        if typing.get_origin(hint) is tuple:  # a tuple of floats (betas) is set whole
            return False
        return any(floats(a) for a in typing.get_args(hint))

    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _float_keys(field.annotation, f"{key}.")
        elif floats(field.annotation):
            keys.append(key)
    return keys


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_setting_must_be_finite(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={value}"])
    assert f"  {key}: " in str(e.value) and "finite number" in str(e.value)


def test_floats_that_are_not_finite_are_refused_everywhere_naming_the_key(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """In a file, in --set, in a variant, in a search space: exit 2, the key named, nothing written."""
    assert len(_float_keys()) > 30 and "optim.lr" in _float_keys() and "optim.betas" not in _float_keys()
    experiment = tmp_path / "exp.toml"
    for text, args, expected in [
        ("[optim]\nlr = inf\n", ["train"], "optim.lr: Input should be a finite number"),
        ("", ["train", "--set", "optim.lr=nan"], "optim.lr: Input should be a finite number"),
        ("", ["train", "--set", "optim.betas=[0.9, nan]"], "optim.betas[1]: Input should be a finite number"),
        ('[ablation.variants]\nfast = { "optim.lr" = inf }\n', ["ablate"],
         "ablation.variants.fast: invalid experiment:\n  optim.lr: Input should be a finite number (got inf)"),
        ('[search.space]\n"optim.lr" = { low = 1e-4, high = inf, log = true }\n', ["tune"],
         "search.space.optim.lr: low and high must be finite numbers"),
        ('[search.space]\n"optim.lr" = [1e-3, inf]\n', ["tune"],
         "search.space.optim.lr: invalid experiment:\n  optim.lr: Input should be a finite number"),
        ('[search.space]\n"optim.lr" = { low = 1e-4, high = 1e-2, step = nan }\n', ["tune"],
         "search.space.optim.lr: step must be a positive number"),
    ]:
        experiment.write_text('[data]\nname = "digits"\n' + text)
        done = run_main(capsys, args[0], str(experiment), *args[1:], "--out", str(tmp_path / "out"))
        assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, (text, done.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.toml"]


def _set(raw: dict, dotted: str, value: object) -> dict:
    section, _, key = dotted.partition(".")
    raw.setdefault(section, {})[key] = value
    return raw


def _relative(kind: str, name: str) -> object:
    return {"path": name, "paths": [name], "uri": f"sqlite:///{name}.db"}[kind]


def _absolute(kind: str, folder: Path, name: str) -> object:
    return {"path": str(folder / name), "paths": (str(folder / name),), "uri": f"sqlite:///{folder / name}.db"}[kind]


def test_the_path_valued_keys_are_known() -> None:
    from dltune.experiment.config import path_keys

    assert path_keys() == {"data.dir": "path", "data.path": "path", "data.images": "path", "data.labels": "path",
                           "loss.distill_from": "path", "code.paths": "paths", "tracking.tensorboard": "path",
                           "tracking.mlflow": "uri", "transfer.from": "path", "search.enqueue": "paths"}


@pytest.mark.parametrize("where", ["section", "variant", "space", "set"])
def test_every_path_valued_key_is_read_relative_to_where_it_was_written(tmp_path: Path, where: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule: a relative path in the file (its own section, a variant, a search space) is read relative to the
    file's folder; on the command line (--set), relative to the working folder; either way it is made absolute when
    the experiment is loaded, so that it means the same from any folder later."""
    import tomli_w

    from dltune.experiment.config import path_keys

    (tmp_path / "exp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for key, kind in path_keys().items():
        raw: dict = {}
        value = _relative(kind, "sub/thing")
        if where == "section":
            _set(raw, key, value)
        elif where == "variant":
            raw["ablation"] = {"variants": {"v": {key: value}}}
        elif where == "space":
            raw["search"] = {"space": {key: [value, _relative(kind, "other")], "optim.lr": {"low": 1e-4, "high": 1e-2}}}
        file = tmp_path / "exp" / "exp.toml"
        file.write_text(tomli_w.dumps(raw))
        config = load_config(file, [f"{key}={value!r}".replace("'", '"')] if where == "set" else [])
        expected = _absolute(kind, tmp_path / ("elsewhere" if where == "set" else "exp"), "sub/thing")
        if where in ("section", "set"):
            section, _, name = key.partition(".")
            got = getattr(getattr(config, section), "from_" if name == "from" else name)
        elif where == "variant":
            got = config.ablation.variants["v"][key]
        else:
            got = config.search.space[key][0]
        if kind == "paths" and where in ("variant", "space"):
            got = tuple(got)
        assert got == expected, (key, where, got)


def test_other_uris_and_absolute_paths_are_kept(tmp_path: Path) -> None:
    file = tmp_path / "exp.toml"
    for mlflow, expected in [("http://mlflow.example:5000", "http://mlflow.example:5000"),
                             ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
                             ("sqlite:////abs/m.db", "sqlite:////abs/m.db"), ("file:///abs/mlruns", "file:///abs/mlruns"),
                             ("file:mlruns", f"file://{tmp_path / 'mlruns'}"), ("mlruns", str(tmp_path / "mlruns"))]:
        file.write_text(f'[tracking]\nmlflow = "{mlflow}"\ntensorboard = "/abs/tb"\n')
        config = load_config(file)
        assert (config.tracking.mlflow, config.tracking.tensorboard) == (expected, "/abs/tb")
    file.write_text("[tracking]\nmlflow = true\n")
    assert load_config(file).tracking.mlflow is True


def test_a_variant_and_a_tracker_find_their_paths_from_any_folder(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """transfer.from in a variant and tracking.tensorboard in the file name paths beside the file, whichever
    folder the command runs in (they were read relative to the working folder)."""
    from dltune import train

    tiny = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [16]}, "train": {"epochs": 1}}
    (tmp_path / "project").mkdir()
    (tmp_path / "elsewhere").mkdir()
    train(load_config(tiny), out_dir=tmp_path / "project" / "pre")
    (tmp_path / "project" / "exp.toml").write_text(
        '[data]\nname = "digits"\nlimit = 300\n[model]\nhidden = [16]\n[train]\nepochs = 1\n'
        '[tracking]\ntensorboard = "tb"\n[ablation]\nseeds = 1\n'
        '[ablation.variants]\nfrom-pre = { "transfer.from" = "pre" }\n')
    done = run_main(capsys, "ablate", "../project/exp.toml", "--out", "abl", cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "project" / "tb").is_dir() and not (tmp_path / "elsewhere" / "tb").exists()
    config = (tmp_path / "elsewhere" / "abl" / "runs" / "from-pre" / "seed-1" / "config.toml").read_text()
    assert f'from = "{tmp_path / "project" / "pre"}"' in config


def test_a_path_is_made_absolute_without_dot_dot_and_shown_relative_to_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dltune.report.tables import format_changes

    (tmp_path / "examples").mkdir()
    file = tmp_path / "examples" / "exp.toml"
    file.write_text('[ablation.variants]\nv = { "transfer.from" = "../runs/pre", "optim.lr" = 0.01 }\n')
    monkeypatch.chdir(tmp_path)
    changes = load_config(file).ablation.variants["v"]
    assert changes["transfer.from"] == str(tmp_path / "runs" / "pre")
    assert format_changes(changes) == "transfer.from=runs/pre, optim.lr=0.01"
    monkeypatch.chdir(tmp_path / "examples")  # outside the working folder: shown whole
    assert format_changes(changes) == f"transfer.from={tmp_path / 'runs' / 'pre'}, optim.lr=0.01"
