"""The package's house in numbers: modules loose at the top of src/dltune, the largest module and function, and the
graph of folders and top-level modules (nodes, levels, import edges). Read with `ast`; nothing is imported.
tests/test_layers.py checks the package's layers with the same reading (modules, imports, functions).

    python tools/house.py [SRC_DIR]     # default: src/dltune of this checkout
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path


def modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dltune"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dltune":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
    return {m for m in found if m in known and m != name}


def functions(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    return [(n.end_lineno - n.lineno + 1, f"{path.name}:{n.lineno} {n.name}") for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def main(package: Path) -> None:
    known = modules(package)
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    lines = {m: len(p.read_text().splitlines()) for m, p in known.items()}
    biggest = max(lines, key=lines.get)
    longest = max(f for p in known.values() for f in functions(p))

    def node(m: str) -> str | None:
        parts = m.split(".")
        return parts[1] if len(parts) > 1 else None  # the package's own __init__ is the facade, not a node

    edges = {(node(m), node(i)) for m, p in known.items() for i in imports(m, p, known)
             if node(m) and node(i) and node(m) != node(i)}
    nodes = {node(m) for m in known if node(m)}
    below = {n: {b for a, b in edges if a == n} for n in nodes}

    @cache
    def level(n: str) -> int:
        return 1 + max((level(b) for b in below[n]), default=0)

    print(f"modules loose at the top: {len(loose)} ({', '.join(loose)})")
    print(f"modules: {len(known)}, lines: {sum(lines.values())}; largest module: {biggest} ({lines[biggest]} lines)")
    print(f"largest function: {longest[1]} ({longest[0]} lines); functions over 80 lines: "
          f"{sum(1 for p in known.values() for f in functions(p) if f[0] > 80)}")
    module_edges = sum(len(imports(m, p, known)) for m, p in known.items())
    print(f"imports of one dltune module by another: {module_edges}")
    print(f"graph of folders and top-level modules: {len(nodes)} nodes on {max(map(level, nodes))} levels, "
          f"{len(edges)} import edges")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "dltune")
