"""The package's layers (DESIGN.md): imports point down only, no module imports itself round a cycle, no module
passes 400 lines and no function 80, and at most 10 modules lie loose at the top of the package, the rest in the
rooms of their layers. Read from the source with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "src" / "dltune"

# lowest first; a module may import its own layer and the ones below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "registry", "imports", "files", "strict_json", "epochs", "experiment")),
    ("data, models, techniques, tracking, parallel", ("data", "models", "techniques", "tracking", "parallel")),
    ("one run", ("run",)),
    ("after training", ("tuner", "study", "compression", "ensembles", "prediction")),
    ("report", ("report",)),
    ("cli", ("cli", "__main__")),
]
MAX_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_LOOSE = 10  # modules at the top of src/dltune, __init__ and __main__ apart


# the reading of the package that tools/house.py counts with: its modules, each one's dltune imports, its functions
_spec = importlib.util.spec_from_file_location("house", ROOT / "tools" / "house.py")
house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(house)

MODULES = house.modules(PACKAGE)


def _imports(name: str) -> set[str]:
    """The dltune modules that module `name` imports (a `from pkg import sub` of a submodule counts as sub)."""
    return house.imports(name, MODULES[name], MODULES)


def _layer(name: str) -> int | None:
    top = name.split(".")[1] if "." in name else None
    for number, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return number
    return None  # the package itself: its __init__ re-exports the public API from every layer


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if m != "dltune" and _layer(m) is None] == []


def _upward(name: str, imports: set[str]) -> list[str]:
    return [f"{m} ({LAYERS[_layer(m)][0]})" for m in sorted(imports) if _layer(m) is not None and _layer(m) > _layer(name)]


@pytest.mark.parametrize("name", [m for m in MODULES if m != "dltune"])
def test_imports_point_down(name: str) -> None:
    upward = _upward(name, _imports(name))
    assert not upward, f"{name} ({LAYERS[_layer(name)][0]}) imports a higher layer: {', '.join(upward)}"


def test_no_import_cycle() -> None:
    # a package's __init__ that re-exports its own submodules is a facade, not a dependency of theirs
    graph = {m: {i for i in _imports(m) if not (MODULES[m].name == "__init__.py" and i.startswith(m + "."))}
             for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_module_passes_400_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def _long_functions(path: Path) -> list[str]:
    return [f"{where} ({n} lines)" for n, where in house.functions(path) if n > MAX_FUNCTION_LINES]


def test_no_function_passes_80_lines() -> None:
    long = [f for p in MODULES.values() for f in _long_functions(p)]
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"


def test_at_most_10_modules_lie_loose_at_the_top() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= MAX_LOOSE, f"{len(loose)} modules at the top of src/dltune: {loose}"


def test_the_checks_are_not_vacuous(tmp_path: Path) -> None:
    # a loop that imported the study layer and the CLI would be caught, and so would a long module
    MODULES["dltune.probe"] = tmp_path / "probe.py"
    (tmp_path / "probe.py").write_text("from dltune.study import tune\nimport dltune.cli\nfrom dltune.data import load_data\n")
    try:
        imports = _imports("dltune.probe")
    finally:
        del MODULES["dltune.probe"]
    assert imports == {"dltune.study.tune", "dltune.cli", "dltune.data"}
    assert _upward("dltune.run.loop", imports) == ["dltune.cli (cli)", "dltune.study.tune (after training)"]
    assert _upward("dltune.report.html", {"dltune.study.records", "dltune.report.plots"}) == []
    long = tmp_path / "long.py"  # a function of 81 lines is caught, one of 80 is not
    long.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\n\ndef g():\n" + "    x = 1\n" * 79)
    assert _long_functions(long) == [f"long.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
