from __future__ import annotations

import pytest

from dltune.errors import ConfigError
from dltune.registry import Registry


def test_lookup_by_name_and_passthrough() -> None:
    reg: Registry[object] = Registry("schedule")
    reg.register("cosine", "COS")
    reg.register("constant")(print)
    assert reg.get("cosine") == "COS"
    assert reg.get(len) is len  # an object instead of a name passes through
    assert reg.names() == ["constant", "cosine"]


def test_unknown_name_suggests_and_lists() -> None:
    reg: Registry[int] = Registry("schedule")
    for i, name in enumerate(["constant", "cosine", "exponential"]):
        reg.register(name, i)
    with pytest.raises(ConfigError) as e:
        reg.get("cosin", path="schedule.name")
    assert str(e.value) == ("schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?); "
                            "known: constant, cosine, exponential")


def test_duplicate_registration_fails() -> None:
    reg: Registry[int] = Registry("model")
    reg.register("mlp", 1)
    with pytest.raises(ValueError):
        reg.register("mlp", 2)
