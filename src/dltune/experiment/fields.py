"""What the sections of an experiment file are made of: the frozen base model, the marks of paths, and the
constrained number types they share."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["Fraction", "IncreasingEpochs", "Local", "PositiveInt", "Ratio", "Section"]


class Local:
    """Marks a setting that names a file or a folder ("path"), several ("paths"), or a URI that may name a local
    file ("uri": an MLflow tracking URI). A relative one is read relative to where it was written: the experiment
    file's folder, or the working folder for --set (dltune.experiment.config.path_keys and resolve_path)."""

    def __init__(self, kind: Literal["path", "paths", "uri"]) -> None:
        self.kind = kind


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _increasing(epochs: tuple[int, ...]) -> tuple[int, ...]:
    if any(b <= a for a, b in pairwise(epochs)):
        raise ValueError(f"must be increasing epochs, got {list(epochs)}")
    return epochs


IncreasingEpochs = Annotated[tuple[PositiveInt, ...], Field(strict=False), AfterValidator(_increasing)]


class Section(BaseModel):
    """A section of the experiment file: frozen, strict, no unknown keys, finite floats."""

    # allow_inf_nan=False: every float setting is a finite number (pydantic's gt=0 admits inf, and lr = inf trained)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


Ratio = Annotated[float, Field(gt=0.0, lt=1.0)]
