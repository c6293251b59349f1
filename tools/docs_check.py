"""Rerun what the README and the docs quote, and fail where the quoted output or numbers no longer match.

* Transcripts: a fenced block whose first line is `$ dltune ...` is run (in a scratch folder with a copy of
  examples/) and its output compared line by line. A line `...` in the block stands for any lines; timings
  (samples/s, seconds) and the date-time of default run folders are masked on both sides. A block preceded by
  `<!-- docs-check: run only -->` quotes timings alone: it is run, its output not compared.
* Claims: the numbers of `make demo`'s table and of the tune and techniques examples, quoted in prose, are
  computed again here and looked for in the README (CLAIMS below).

Benchmark tables are measurements of this machine's speed, not outputs: their scripts in benchmarks/ regenerate them.

Run:  .venv/bin/python tools/docs_check.py [--only NAME ...] [--list]   (or `make docs-check`)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_ONLY = "<!-- docs-check: run only -->"
VOLATILE = [  # (pattern, stand-in): what changes from run to run
    (re.compile(r"\d[\d,]*(?:\.\d+)? samples/s"), "N samples/s"),
    (re.compile(r"\b\d+(?:\.\d+)?s\b"), "Ns"),
    (re.compile(r"\d{8}-\d{6}(?:-\d+)?"), "DATE-TIME"),
]


def normalize(line: str) -> str:
    for pattern, stand_in in VOLATILE:
        line = pattern.sub(stand_in, line)
    return line.rstrip()


def mismatch(expected: list[str], actual: list[str]) -> str | None:
    """Where `actual` departs from `expected` (a "..." line there matches any lines), or None."""
    exp = [normalize(line) for line in expected]
    act = [normalize(line) for line in actual if line.strip()]
    i = 0
    for k, line in enumerate(exp):
        if line == "...":
            continue
        if k > 0 and exp[k - 1] == "...":
            found = next((j for j in range(i, len(act)) if act[j] == line), None)
            if found is None:
                return f"quoted line not in the output: {line!r}"
            i = found + 1
        elif i < len(act) and act[i] == line:
            i += 1
        else:
            return f"line {k + 1}: quoted {line!r}, printed {act[i] if i < len(act) else '(nothing)'!r}"
    if i < len(act) and (not exp or exp[-1] != "..."):
        return f"the output goes on: {act[i]!r}"
    return None


def transcripts(path: Path) -> Iterator[tuple[int, str, list[str], bool]]:
    """(line number, command, quoted output, compare it) of every `$ dltune` block in a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if line.startswith("```") and n + 1 < len(lines) and lines[n + 1].startswith("$ dltune "):
            end = next(k for k in range(n + 1, len(lines)) if lines[k].startswith("```"))
            compare = not (n > 0 and lines[n - 1].strip() == RUN_ONLY)
            yield n + 2, lines[n + 1][2:], lines[n + 2 : end], compare


def dltune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLTUNE_DATA": str(cwd / "data-cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dltune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)


def scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="docs-check-"))
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


def check_transcript(command: str, quoted: list[str], compare: bool) -> str | None:
    folder = scratch()
    try:
        r = dltune(*command.split()[1:], cwd=folder)
        if not compare:
            return None if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip()[-300:]}"
        return mismatch(quoted, (r.stdout + r.stderr).splitlines())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- claims in prose ---------------------------------------------------------------------------------------------

def _json(r: subprocess.CompletedProcess[str]) -> dict:
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-500:])
    return json.loads(r.stdout)


def demo_table(readme: str, folder: Path) -> list[str]:
    """`make demo`'s table: every column but the timings (train s, samples/s) as quoted."""
    r = dltune("ablate", "examples/seed_mnist.toml", "--seeds", "3", "--out", "demo", cwd=folder)
    if r.returncode != 0:
        return [f"make demo failed: {r.stderr.strip()[-300:]}"]
    printed = (folder / "demo" / "results.md").read_text(encoding="utf-8").splitlines()
    cut = lambda row: [c for i, c in enumerate(row.split("|")) if i not in (8, 9)]  # noqa: E731  train s, samples/s
    quoted = {tuple(cut(line)) for line in readme.splitlines() if line.startswith("| ")}
    rows = [line for line in printed if line.startswith("| ")]
    return [f"demo table row not quoted as printed: {line}" for line in rows if tuple(cut(line)) not in quoted]


def tune_example(readme: str, folder: Path) -> list[str]:
    """The search continued to 48 trials, its best trial trained again, and the file's own settings."""
    for trials in ("24", "48"):
        data = _json(dltune("tune", "examples/tune_mnist.toml", "--trials", trials, "--json", cwd=folder))
    best = data["best"][0]
    again = _json(dltune("train", "runs/tune_mnist-search/best.toml", "--json", cwd=folder))
    own = _json(dltune("train", "examples/tune_mnist.toml", "--json", cwd=folder))
    val = again["epochs"][-1]["val"]
    return [f"not in the README: {text!r}" for text in (
        f"Trial {best['number']} (", f"reached {best['values'][0]:.2%} validation accuracy",
        f"(val loss {val['loss']:.4f}, test accuracy {again['test']['accuracy']:.2%})",
        f"reach {own['epochs'][-1]['val']['accuracy']:.2%} validation and {own['test']['accuracy']:.2%} test accuracy",
        f"{data['epochs'] - 48} more epochs") if text not in readme]


def techniques_example(readme: str, folder: Path) -> list[str]:
    tuned = _json(dltune("train", "examples/techniques_mnist.toml", "--json", cwd=folder))["test"]["accuracy"]
    reference = _json(dltune("train", "examples/seed_mnist.toml", "--json", cwd=folder))["test"]["accuracy"]
    text = f"# {tuned:.1%} test accuracy on mnist-5k, against {reference:.1%} for the reference"
    return [] if text in readme else [f"not in the README: {text!r}"]


CLAIMS: dict[str, Callable[[str, Path], list[str]]] = {
    "demo-table": demo_table, "tune-example": tune_example, "techniques-example": techniques_example}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", metavar="NAME", help="only these checks (see --list)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    checks: dict[str, Callable[[], list[str]]] = {}
    for path in DOCS:
        for line, command, quoted, compare in transcripts(path):
            name = f"{path.relative_to(ROOT)}:{line}"
            checks[name] = lambda c=command, q=quoted, k=compare: [e for e in [check_transcript(c, q, k)] if e]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, claim in CLAIMS.items():
        def run(claim: Callable[[str, Path], list[str]] = claim) -> list[str]:
            folder = scratch()
            try:
                return claim(readme, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        checks[name] = run
    if args.list:
        print("\n".join(checks))
        return 0
    failed = 0
    for name, check in checks.items():
        if args.only and name not in args.only:
            continue
        problems = check()
        print(f"{'ok  ' if not problems else 'FAIL'} {name}", *(f"\n     {p}" for p in problems), flush=True)
        failed += bool(problems)
    print(f"{failed} of the checks failed" if failed else "every quoted output matches")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
