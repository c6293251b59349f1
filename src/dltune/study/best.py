"""What a search leaves in its folder for the user: the best trial's experiment (best.toml) and its weights (best/),
or, when no trial completed, the best pruned trial's experiment, labelled so (best-pruned.toml)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from dltune.errors import ConfigError
from dltune.files import atomic_write, write_text
from dltune.study.records import TuneData

__all__ = ["BEST_PRUNED", "best_pruned_toml", "write_best"]


def write_best(data: TuneData, out: Path) -> None:
    """best.toml and best/ in `out`; or best-pruned.toml while no trial has completed."""
    if data.best_config_toml:
        write_text(out / "best.toml", data.best_config_toml)
        _keep_best_weights(data, out)
        (out / BEST_PRUNED).unlink(missing_ok=True)  # from an earlier run of the search, when none had completed
    elif data.best_pruned_config_toml is not None:
        write_text(out / BEST_PRUNED, best_pruned_toml(data))


BEST_PRUNED = "best-pruned.toml"  # no trial completed: the best pruned trial's experiment, labelled so


def best_pruned_toml(data: TuneData) -> str:
    """The best pruned trial's experiment, headed by comments that say it was not trained to the end."""
    trial = next(t for t in data.trials if t.number == data.best_pruned)
    epochs = tomllib.loads(data.config_toml)["train"]["epochs"]
    objective = data.objectives[0].replace("test.", "val.", 1)
    split, _, name = objective.partition(".")
    value = (trial.epochs[-1].get(split) or {}).get(name)
    shown = f" ({objective} {value:.4g} there)" if value is not None else ""
    return (f"# NOT TRAINED TO THE END: no trial of the search {data.study!r} completed. This is trial "
            f"{trial.number},\n# pruned after epoch {len(trial.epochs)} of {epochs}{shown}: of the pruned trials, "
            "the one that went\n# furthest and did best there. `dltune train` on this file trains it fully.\n"
            + (data.best_pruned_config_toml or ""))


def _keep_best_weights(data: TuneData, out: Path) -> None:
    best = next(t for t in data.trials if t.number == data.best[0])
    source = Path(best.run_dir or "") / "model.safetensors"
    if source.is_file():
        from safetensors import safe_open

        try:  # its header and its length, which a damaged file fails, without reading the weights
            with safe_open(str(source), "pt"):
                pass
        except Exception as e:  # safetensors raises its own errors on a damaged file
            raise ConfigError(f"{source}: the best trial's weights cannot be read ({e}); best.toml is written, "
                              "best/ is not") from None
        (out / "best").mkdir(exist_ok=True)
        with atomic_write(out / "best" / "model.safetensors") as tmp:
            shutil.copyfile(source, tmp)
        write_text(out / "best" / "config.toml", data.best_config_toml or "")
        if (source.parent / "metrics.json").is_file():  # the data it trained on, which `dltune predict` reads
            with atomic_write(out / "best" / "metrics.json") as tmp:
                shutil.copyfile(source.parent / "metrics.json", tmp)
