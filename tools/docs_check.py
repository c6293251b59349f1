"""Rerun what the README and the docs quote, and fail where the quoted output or numbers no longer match.

* Transcripts: a fenced block whose first line is `$ dltune ...` is run (in a scratch folder with a copy of
  examples/) and its output compared line by line. A line `...` in the block stands for any lines; timings
  (samples/s, seconds) and the date-time of default run folders are masked on both sides. A block preceded by
  `<!-- docs-check: run only -->` quotes timings alone: it is run, its output not compared.
* Claims: the numbers of `make demo`'s table and of the tune and techniques examples, quoted in prose, are
  computed again here and looked for in the README (CLAIMS below).
* Machines: a training run's numbers depend on the CPU's float kernels, which MKL and oneDNN choose by its vendor
  and instruction set (an Intel Xeon and an AMD EPYC, both with AVX-512, printed 93.77 ± 0.49 and 93.77 ± 0.42 for
  `make demo`'s baseline, and a search pruned other trials). A document names the kind of machine that printed its
  numbers (`<!-- docs-check: numbers printed on VENDOR ARCH [avx512] -->`; `machine()` gives this one's). On
  another kind, each check compares what it printed with what was printed on that kind before and recorded in
  PRINTED_ELSEWHERE (`--record` writes this machine's); a change of the code that moves the numbers is printed
  again on each kind: quoted in the document on its own kind, recorded on the others.

Benchmark tables are measurements of this machine's speed, not outputs: their scripts in benchmarks/ regenerate them.
One is checked all the same, since its document is committed: the README's problem-suite tables (between
`<!-- bench_suite: begin -->` and `<!-- bench_suite: end -->`) must be what `benchmarks/bench_suite.py --from
benchmarks/results/suite.json --markdown` prints, and every number with a decimal point in the prose there must be
one that it prints (SUITE).

Run:  .venv/bin/python tools/docs_check.py [--only NAME ...] [--list]   (or `make docs-check`)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
PRINTED_ON = re.compile(r"<!-- docs-check: numbers printed on (.+?) -->")
PRINTED_ELSEWHERE = ROOT / "tools" / "docs_printed_elsewhere.json"  # {machine: {check key: printed lines}}
VOLATILE = [  # (pattern, stand-in): what changes from run to run
    (re.compile(r"\d[\d,]*(?:\.\d+)? samples/s"), "N samples/s"),
    (re.compile(r"\b\d+(?:\.\d+)?s\b"), "Ns"),
    (re.compile(r"\d{8}-\d{6}(?:-\d+)?"), "DATE-TIME"),
]


def machine() -> str:
    """The kind of CPU, as far as it decides the float kernels: vendor, architecture, and AVX-512 or not."""
    cpuinfo = Path("/proc/cpuinfo")
    info = cpuinfo.read_text(encoding="utf-8", errors="replace") if cpuinfo.exists() else ""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:(.*)$", info, re.MULTILINE)
    avx512 = " avx512" if flags and "avx512f" in flags.group(1).split() else ""
    return f"{vendor.group(1) if vendor else platform.processor() or 'unknown'} {platform.machine()}{avx512}"


def printed_on(text: str) -> str | None:
    """The kind of machine a document's numbers were printed on, as it names it (None: not named)."""
    found = PRINTED_ON.search(text)
    return found.group(1).strip() if found else None


# the warning of a machine whose other processes hold the cores (runtime.crowding): a fact of the moment, as timings are
LOAD_WARNING = "warning: the load average is "


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


def run_transcript(command: str) -> tuple[int, list[str]]:
    """A transcript's command, run in a scratch folder: its exit code and the lines it printed (normalized)."""
    folder = scratch()
    try:
        r = dltune(*command.split()[1:], cwd=folder)
        return r.returncode, [normalize(line) for line in (r.stdout + r.stderr).splitlines()
                              if line.strip() and not line.startswith(LOAD_WARNING)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_transcript(command: str, quoted: list[str], compare: bool) -> str | None:
    code, printed = run_transcript(command)
    if not compare:
        return None if code == 0 else f"exit {code}: {' '.join(printed)[-300:]}"
    return mismatch(quoted, printed)


# --- claims in prose ---------------------------------------------------------------------------------------------

def _json(r: subprocess.CompletedProcess[str]) -> dict:
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-500:])
    return json.loads(r.stdout)


def table_rows(text: str) -> list[str]:
    """The rows of the Markdown tables in `text`, without the columns of timings (train s, samples/s)."""
    return ["|".join(c for i, c in enumerate(line.split("|")) if i not in (8, 9)).strip()
            for line in text.splitlines() if line.startswith("| ")]


def demo_table(folder: Path) -> list[str]:
    """`make demo`'s table: every column but the timings, a row each."""
    r = dltune("ablate", "examples/seed_mnist.toml", "--seeds", "3", "--out", "demo", cwd=folder)
    if r.returncode != 0:
        raise RuntimeError(f"make demo failed: {r.stderr.strip()[-300:]}")
    return table_rows((folder / "demo" / "results.md").read_text(encoding="utf-8"))


def tune_example(folder: Path) -> list[str]:
    """The search continued to 48 trials, its best trial trained again, and the file's own settings."""
    for trials in ("24", "48"):
        data = _json(dltune("tune", "examples/tune_mnist.toml", "--trials", trials, "--json", cwd=folder))
    best = data["best"][0]
    again = _json(dltune("train", "runs/tune_mnist-search/best.toml", "--json", cwd=folder))
    own = _json(dltune("train", "examples/tune_mnist.toml", "--json", cwd=folder))
    val = again["epochs"][-1]["val"]
    return [f"Trial {best['number']} (", f"reached {best['values'][0]:.2%} validation accuracy",
            f"(val loss {val['loss']:.4f}, test accuracy {again['test']['accuracy']:.2%})",
            f"reach {own['epochs'][-1]['val']['accuracy']:.2%} validation and {own['test']['accuracy']:.2%} test "
            "accuracy", f"{data['epochs'] - 48} more epochs"]


def techniques_example(folder: Path) -> list[str]:
    tuned = _json(dltune("train", "examples/techniques_mnist.toml", "--json", cwd=folder))["test"]["accuracy"]
    reference = _json(dltune("train", "examples/seed_mnist.toml", "--json", cwd=folder))["test"]["accuracy"]
    return [f"# {tuned:.1%} test accuracy on mnist-5k, against {reference:.1%} for the reference"]


CLAIMS: dict[str, Callable[[Path], list[str]]] = {
    "demo-table": demo_table, "tune-example": tune_example, "techniques-example": techniques_example}


SUITE = ROOT / "benchmarks" / "results" / "suite.json"
SUITE_BEGIN, SUITE_END = "<!-- bench_suite: begin -->", "<!-- bench_suite: end -->"
DECIMAL = re.compile(r"[+\-−]?\d+\.\d+")


def decimals(text: str) -> list[str]:
    """The numbers with a decimal point in `text`, signs as Python prints them (−0.5 and -0.5 alike, +0.5 as 0.5)."""
    return [n.replace("−", "-").lstrip("+") for n in DECIMAL.findall(text)]


def suite_problems(readme: str) -> list[str]:
    """Where the README's problem-suite section departs from what bench_suite prints from its committed document."""
    if SUITE_BEGIN not in readme or SUITE_END not in readme:
        return [f"README.md has no {SUITE_BEGIN} ... {SUITE_END} section"]
    section = readme.split(SUITE_BEGIN, 1)[1].split(SUITE_END, 1)[0]
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_suite.py"), "--from", str(SUITE),
                        "--markdown"], capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        return [f"bench_suite.py --from failed: {r.stderr.strip()[-300:]}"]
    printed = r.stdout
    tables = [line for line in printed.splitlines() if line.startswith("|")]
    quoted = [line for line in section.splitlines() if line.startswith("|")]
    problems = [f"table row not as printed: {row}" for row in quoted if row not in tables]
    problems += [f"printed row not in the README: {row}" for row in tables if row not in quoted]
    prose = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
    shown = set(decimals(printed))
    problems += [f"a number in the prose that bench_suite does not print: {n}" for n in decimals(prose)
                 if n not in shown]
    return problems


def claim_problems(name: str, printed: list[str], readme: str) -> list[str]:
    """What of a claim's printed texts the README does not quote (the demo table: as a row of its table)."""
    if name == "demo-table":
        quoted = set(table_rows(readme))
        return [f"demo table row not quoted as printed: {row}" for row in printed if row not in quoted]
    return [f"not in the README: {text!r}" for text in printed if text not in readme]


def recorded_problems(printed: list[str], recorded: list[str] | None, here: str) -> list[str]:
    """What departs from the lines recorded on this kind of machine (PRINTED_ELSEWHERE)."""
    if recorded is None:
        return [f"nothing recorded for this machine ({here}) in {PRINTED_ELSEWHERE.name}: print it here with "
                "`tools/docs_check.py --record`, after checking the code is as it should be"]
    differs = mismatch(recorded, printed)
    return [f"{differs} (against {PRINTED_ELSEWHERE.name}, as printed on {here} before)"] if differs else []


def run_claim(claim: Callable[[Path], list[str]]) -> list[str]:
    folder = scratch()
    try:
        return claim(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", metavar="NAME", help="only these checks (see --list)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--record", action="store_true",
                        help=f"on a machine of another kind than the documents name: write what each check printed "
                             f"here to {PRINTED_ELSEWHERE.relative_to(ROOT)}, to be compared with from now on")
    args = parser.parse_args(argv)
    here = machine()
    records = json.loads(PRINTED_ELSEWHERE.read_text(encoding="utf-8")) if PRINTED_ELSEWHERE.exists() else {}
    record = records.get(here, {})
    printed_here: dict[str, list[str]] = {}
    # name -> () -> problems; a check of a document printed on another kind compares with the record of this kind
    checks: dict[str, Callable[[], list[str]]] = {}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        elsewhere = printed_on(text) not in (None, here)
        for line, command, quoted, compare in transcripts(path):
            key = f"{path.relative_to(ROOT)}: {command}"

            def check(command: str = command, quoted: list[str] = quoted, compare: bool = compare,
                      key: str = key, elsewhere: bool = elsewhere) -> list[str]:
                if not compare or not elsewhere:
                    return [e for e in [check_transcript(command, quoted, compare)] if e]
                _, printed_here[key] = run_transcript(command)
                return recorded_problems(printed_here[key], record.get(key), here)

            checks[f"{path.relative_to(ROOT)}:{line}"] = check
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme_elsewhere = printed_on(readme) not in (None, here)
    for name, claim in CLAIMS.items():
        def check_claim(name: str = name, claim: Callable[[Path], list[str]] = claim) -> list[str]:
            try:
                printed_here[name] = run_claim(claim)
            except RuntimeError as e:
                return [str(e)]
            if readme_elsewhere:
                return recorded_problems(printed_here[name], record.get(name), here)
            return claim_problems(name, printed_here[name], readme)
        checks[name] = check_claim
    checks["suite-tables"] = lambda: suite_problems(readme)
    if args.list:
        print("\n".join(checks))
        return 0
    if readme_elsewhere:
        print(f"README.md's numbers were printed on {printed_on(readme)}; this machine is {here}: its outputs are "
              f"compared with those printed on it before ({PRINTED_ELSEWHERE.relative_to(ROOT)})", flush=True)
    failed = 0
    for name, check in checks.items():
        if args.only and name not in args.only:
            continue
        problems = check()
        if args.record:
            print(f"ran  {name}", flush=True)
            continue
        print(f"{'ok  ' if not problems else 'FAIL'} {name}", *(f"\n     {p}" for p in problems), flush=True)
        failed += bool(problems)
    if args.record:
        if not printed_here:
            print(f"nothing to record: on {here} the documents' own quotes are compared (print them again there)")
            return 1
        records[here] = {**record, **printed_here}
        PRINTED_ELSEWHERE.write_text(json.dumps(records, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                     encoding="utf-8")
        print(f"recorded {len(printed_here)} checks' outputs for {here} in {PRINTED_ELSEWHERE.relative_to(ROOT)}")
        return 0
    print(f"{failed} of the checks failed" if failed else "every quoted output matches")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
