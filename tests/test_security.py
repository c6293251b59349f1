"""Security: every report escapes the names it shows (checked in headless Chromium, with and without its policy),
its Content-Security-Policy lets no script or outside resource in, no code unpickles a file, a storage password is
masked in everything a study run writes or logs, and outputs take the user's umask and stay inside --out."""

from __future__ import annotations

import ast
import logging
import os
import re
import stat
import subprocess
import sys
import uuid
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import POSTGRES, ROOT, drop_study, in_ci, run_main
from dltune.study.records import AblationData, TrialRecord, TuneData
from report_data import ablation, history

# Names that run script if a report writes them unescaped: as element text, and inside a double- or single-quoted
# attribute. MATH has two $: matplotlib would take it for mathtext (and fail to parse it) if a plot did not draw
# names as written.
HOSTILE = ["<script>window.__pwned=1</script>", '"><img src=x onerror="window.__pwned=1">',
           "'><svg onload=window.__pwned=1>"]
MATH = r"cost $\alpha_{bad$ & co"
PASSWORD = "S3cretPw"
# an experiment's MLflow URI with a password, as the reports' configurations quote it
TRACKING = f'\n[tracking]\nmlflow = "postgresql://mlflow:{PASSWORD}@db.example.org/mlflow"\n'
KINDS = ("ablation", "tune", "compress", "ensemble")


# --- the four reports, built from hand-made results (no training) ---------------------------------------------------


def _ablation() -> AblationData:
    """Variants, study, environment, changes (your own model's import path among them) and config named hostilely."""
    names = ["baseline", *HOSTILE, MATH]
    data = ablation({n: [0.90 + 0.01 * i, 0.91 + 0.01 * i] for i, n in enumerate(names)},
                    changes={HOSTILE[0]: {"model.name": f"my_models:{HOSTILE[0]}"}, HOSTILE[1]: {"optim.lr": 0.01},
                             HOSTILE[2]: {"model.name": HOSTILE[2]}, MATH: {"optim.name": MATH}},
                    study=HOSTILE[0], mode="cumulative")  # cumulative: the changes cells get a title attribute
    return replace(data, environment={**data.environment, "git_revision": HOSTILE[1]},
                   config_toml=f'[model]\nname = "{HOSTILE[2]}"\n' + TRACKING)


def _search() -> TuneData:
    """A search whose study, sampler, parameters (your own model's name a sampled one), error and configs are
    hostile."""
    def trial(n: int, state: str, value: float | None = None, error: str | None = None) -> TrialRecord:
        params = {"model.name": [*HOSTILE, MATH][n % 4], "optim.lr": 0.01 * (n + 1)}
        return TrialRecord(n, state, [value] if value is not None else None, params,
                           history(value, epochs=3) if value is not None else [], {"accuracy": value or 0.0},
                           1.0, 1000, error=error, run_dir=f"/runs/{HOSTILE[1]}/trial-{n}")

    trials = [trial(0, "COMPLETE", 0.91), trial(1, "COMPLETE", 0.93), trial(2, "COMPLETE", 0.92),
              trial(3, "COMPLETE", 0.90), trial(4, "FAIL", error=f"RuntimeError: {HOSTILE[1]}")]
    return TuneData(study=HOSTILE[0], objectives=["val.accuracy"], directions=["maximize"], trials=trials, best=[1],
                    importances={"model.name": 0.6, "optim.lr": 0.4}, environment={"git_revision": HOSTILE[2]},
                    config_toml=f'[model]\nname = "my_models:{HOSTILE[0]}"\n' + TRACKING, sampler=HOSTILE[2],
                    pruner=MATH, best_config_toml=f'[model]\nname = "{HOSTILE[1]}"\n' + TRACKING)


def _compressed():  # noqa: ANN202 - CompressResult, imported with the test module that builds it
    from test_compress_report import result

    made = result(Path(f"/runs/{HOSTILE[0]}"))
    return replace(made, out_dir=f"/runs/{HOSTILE[1]}", config={**made.config, HOSTILE[2]: MATH})


def _ensembled():  # noqa: ANN202 - EnsembleResult
    from test_ensemble_report import classification

    made = classification()
    names = {m["name"]: new for m, new in zip(made.members, [*HOSTILE, MATH], strict=False)}
    members = [{**m, "name": names.get(m["name"], m["name"]), "run_dir": f"/runs/{HOSTILE[2]}/{m['name']}"}
               for m in made.members]
    return replace(made, source=f"/runs/{HOSTILE[1]}", out_dir=f"/runs/{HOSTILE[2]}", members=members,
                   best_single={**made.best_single, "name": names[made.best_single["name"]]})


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind of report, written by its own writer, from results named with HOSTILE and MATH."""
    from dltune.report import compress_report, ensemble_report
    from dltune.report.publish import publish
    from dltune.report.tune_report import write_tune_report

    base = tmp_path_factory.mktemp("reports")
    return {"ablation": publish(_ablation(), base / "ablation").html,
            "tune": write_tune_report(_search(), base / "tune" / "report.html"),
            "compress": compress_report.publish(_compressed(), base / "compress")[0],
            "ensemble": ensemble_report.publish(_ensembled(), base / "ensemble")}


# --- in a real browser ----------------------------------------------------------------------------------------------

try:  # the browser checks reuse the ablation report's launcher; without playwright only they are skipped
    from test_report_browser import chromium  # noqa: F401  (a fixture)
except pytest.skip.Exception:
    pass

# what no report of ours holds: an injected element or handler would show up here
ACTIVE = ("script, iframe, object, embed, svg, base, form, link, meta[http-equiv=refresh], [onerror], [onload], "
          "[onclick], [onmouseover], [onfocus]")


class Visits:
    """One headless Chromium page for the module (a browser starts in about a second, a page in a few tenths), with
    what each visit asked for, logged and opened recorded."""

    def __init__(self, page) -> None:  # noqa: ANN001 - a playwright Page
        self.page = page
        self.requested: list[str] = []
        self.errors: list[str] = []  # console errors: a blocked load or script, a policy violation
        self.dialogs: list[str] = []
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))

    def visit(self, path: Path) -> dict:
        """Open `path` (file://) and say what ran, what was asked for, and what the page shows."""
        for seen in (self.requested, self.errors, self.dialogs):
            seen.clear()
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        seen = self.page.evaluate(f"""() => ({{pwned: typeof window.__pwned, text: document.body.innerText,
            active: [...document.querySelectorAll({ACTIVE!r})].map(e => e.outerHTML.slice(0, 80)),
            images: [...document.images].map(i => i.getAttribute("src").slice(0, 22))}})""")
        return {**seen, "requested": list(self.requested), "errors": list(self.errors), "dialogs": list(self.dialogs)}


@pytest.fixture(scope="module")
def browser(chromium: str) -> Visits:
    from test_report_browser import CHROMIUM_ARGS, sync_api

    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield Visits(launched.new_page())
        finally:
            launched.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", ["with its CSP", "without its CSP"])
def test_every_name_is_shown_as_text_and_nothing_runs(browser: Visits, reports: dict[str, Path], kind: str,
                                                      policy: str, tmp_path: Path) -> None:
    path = reports[kind]
    if policy == "without its CSP":  # the escaping alone, without the policy that would block what it let through
        html = path.read_text(encoding="utf-8")
        path = tmp_path / "report.html"
        path.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html), encoding="utf-8")
        assert "Content-Security-Policy" not in path.read_text(encoding="utf-8")
    seen = browser.visit(path)
    assert seen["pwned"] == "undefined" and not seen["dialogs"]
    assert not seen["active"], f"the {kind} report holds active elements: {seen['active']}"
    assert seen["images"] and all(src == "data:image/png;base64," for src in seen["images"])
    assert not seen["errors"], f"the browser reported {seen['errors']}"
    outside = [url for url in seen["requested"] if url != path.resolve().as_uri() and not url.startswith("data:")]
    assert not outside, f"the {kind} report requested {outside}"
    for name in [*HOSTILE, MATH]:
        assert name in seen["text"], f"{name!r} is not shown as text in the {kind} report"


# --- the policy -----------------------------------------------------------------------------------------------------


class _Head(HTMLParser):
    """The tags of a page in order, and the content of each Content-Security-Policy meta tag with its position."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.policies: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.policies.append((len(self.tags), values.get("content") or ""))
        self.tags.append(tag)


def directives(policy: str) -> dict[str, list[str]]:
    """A policy's directives and their sources: "default-src 'none'; img-src data:" -> {"default-src": ["'none'"],
    ...}."""
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed.setdefault(name.lower(), sources)  # a repeated directive is ignored by browsers
    return parsed


_HASH = re.compile(r"'(sha256|sha384|sha512|nonce)-[A-Za-z0-9+/=_-]+'")


def remote_or_unsafe(parsed: dict[str, list[str]]) -> list[str]:
    """Every source that lets a script run (any but a hash or a nonce) or lets anything in from outside the page: all
    but 'none', data: and a stylesheet's 'unsafe-inline' (no scheme, host, * or 'self'). No script-src and no
    default-src lets every script in."""
    found = [] if "script-src" in parsed or "default-src" in parsed else ["script-src (none given: any script)"]
    for name, sources in parsed.items():
        scripts = name.startswith("script-src") or (name == "default-src" and "script-src" not in parsed)
        for source in sources:
            allowed = source == "'none'" or _HASH.fullmatch(source) or not scripts and (
                source == "data:" or (source == "'unsafe-inline'" and name == "style-src"))
            if not allowed:
                found.append(f"{name} {source}")
    return found


def test_the_policy_check_finds_remote_and_unsafe_sources() -> None:
    assert remote_or_unsafe(directives("default-src 'none'; img-src data:; style-src 'unsafe-inline'")) == []
    assert remote_or_unsafe(directives("default-src 'none'; script-src 'sha256-q0Rz+9u='")) == []
    assert remote_or_unsafe(directives("img-src data:")) == ["script-src (none given: any script)"]
    assert remote_or_unsafe(directives("default-src 'none'; script-src https://cdn.example.org 'unsafe-inline'")) == [
        "script-src https://cdn.example.org", "script-src 'unsafe-inline'"]
    assert remote_or_unsafe(directives("default-src *; script-src 'none'")) == ["default-src *"]
    assert remote_or_unsafe(directives("default-src 'self'")) == ["default-src 'self'"]
    assert remote_or_unsafe(directives("default-src 'none'; img-src https: data:; font-src cdn.example.org")) == [
        "img-src https:", "font-src cdn.example.org"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_report_s_policy_lets_no_script_or_outside_resource_in(reports: dict[str, Path], kind: str) -> None:
    head = _Head()
    head.feed(reports[kind].read_text(encoding="utf-8"))
    assert len(head.policies) == 1, f"the {kind} report has {len(head.policies)} policies"
    position, policy = head.policies[0]
    # a meta policy governs only what comes after it: nothing but the charset before it
    assert head.tags[:position] == ["html", "head", "meta"], head.tags[:position + 1]
    parsed = directives(policy)
    assert parsed.get("default-src") == ["'none'"], policy  # whatever is not named (fonts, frames, fetch) is refused
    assert parsed.get("base-uri") == ["'none'"] and parsed.get("form-action") == ["'none'"], policy
    assert remote_or_unsafe(parsed) == [], policy


@pytest.mark.parametrize("kind", KINDS)
def test_no_report_shows_a_password(reports: dict[str, Path], kind: str) -> None:
    """The configurations that the ablation and search reports quote hold an MLflow URI with a password: shown ***."""
    html = reports[kind].read_text(encoding="utf-8")
    assert PASSWORD not in html
    if kind in ("ablation", "tune"):
        assert "postgresql://mlflow:***@db.example.org/mlflow" in html


# --- no unpickling --------------------------------------------------------------------------------------------------

SCANNED = ("src", "benchmarks", "tools", "examples")
# calls that run code from the file they read: pickle and its kin, TorchScript archives, torch.hub's remote code
NEVER = {f"{module}.{fn}" for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal")
         for fn in ("load", "loads", "Unpickler")} | {
    "joblib.load", "shelve.open", "pandas.read_pickle", "torch.jit.load", "torch.hub.load",
    "torch.package.PackageImporter", "yaml.unsafe_load", "yaml.full_load"}


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Each name a module binds by import, with the dotted path it stands for: {"np": "numpy", "load": "torch.load"}."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # import numpy as np: np; import torch.jit: torch
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([names.get(node.id, node.id), *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> object:
    """The literal value of keyword `name` in `call`; missing: None; not a literal: "?"."""
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "?"
    return None


def unsafe_loads(source: str, where: str = "<source>") -> list[str]:
    """Every call in `source` that may unpickle: torch.load without weights_only=True, numpy.load with allow_pickle
    anything but False (its default), yaml.load without a safe loader, and any call in NEVER."""
    tree = ast.parse(source)
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, names)
        bad = (name in NEVER
               or (name == "torch.load" and _keyword(node, "weights_only") is not True)
               or (name == "numpy.load" and _keyword(node, "allow_pickle") not in (None, False))
               or (name == "yaml.load" and not re.search(r"Safe|Base", ast.unparse(node))))
        if bad:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_unpickling_check_finds_every_form() -> None:
    bad = """
import torch, pickle as pk, numpy as np, joblib
from torch import load
from pickle import loads
torch.load(f)
torch.load(f, weights_only=False)
load(f, map_location="cpu")
pk.load(f)
loads(b)
np.load(f, allow_pickle=True)
torch.jit.load(f)
joblib.load(f)
"""
    assert [line.split(": ", 1)[1] for line in unsafe_loads(bad)] == [
        "torch.load(f)", "torch.load(f, weights_only=False)", "load(f, map_location='cpu')", "pk.load(f)", "loads(b)",
        "np.load(f, allow_pickle=True)", "torch.jit.load(f)", "joblib.load(f)"]
    good = "import torch, numpy as np\ntorch.load(f, weights_only=True)\nnp.load(f)\nnp.load(f, allow_pickle=False)\n"
    assert unsafe_loads(good) == []


def test_no_code_unpickles_a_file() -> None:
    files = [p for folder in SCANNED for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50  # the folders are where they were
    found = [hit for p in files for hit in unsafe_loads(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not found, "calls that may unpickle a file:\n" + "\n".join(found)


# --- a storage password, masked everywhere --------------------------------------------------------------------------



@pytest.mark.parametrize(("text", "shown"), [
    ("postgresql+psycopg://postgres:S3cretPw@127.0.0.1:5432/test",
     "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"),
    ("--storage mysql://u:S3cretPw@db:3306/x: cannot open", "--storage mysql://u:***@db:3306/x: cannot open"),
    ("'postgresql://u:S3c@retPw@h/db'", "'postgresql://u:***@h/db'"),  # an @ the user did not percent-encode
    ("postgresql://u:S3cretPw@h/db?x=a@b", "postgresql://u:***@h/db?x=a@b"),
    ("postgresql://u@h/db?sslmode=require&password=S3cretPw", "postgresql://u@h/db?sslmode=require&password=***"),
    ("redis://:S3cretPw@h:6379", "redis://:***@h:6379"),
    ("postgresql://u@h/db, sqlite:////runs/a:b@c/study.db", "postgresql://u@h/db, sqlite:////runs/a:b@c/study.db"),
])
def test_mask_password_hides_the_password_of_every_form(text: str, shown: str) -> None:
    from dltune.errors import mask_password

    assert mask_password(text) == shown


def _with_password(url: str, port: int | None = None) -> str:
    """The test database's URL with PASSWORD (trust authentication ignores it), driven by psycopg 3."""
    from sqlalchemy.engine import make_url

    made = make_url(url).set(drivername="postgresql+psycopg", password=PASSWORD)
    return (made.set(port=port) if port else made).render_as_string(hide_password=False)


def _experiment(tmp: Path, **sections: dict) -> Path:
    """A tiny experiment file (300 digits, 8 hidden units, 1 epoch) with a one-parameter search and an ablation of
    one variant; `sections` replace or add whole sections."""
    import tomli_w

    experiment = {"data": {"name": "digits", "limit": 300}, "model": {"hidden": [8]}, "train": {"epochs": 1},
                  "search": {"trials": 1, "pruner": "none",
                             "space": {"optim.lr": {"low": 1e-3, "high": 1e-1, "log": True}}},
                  "ablation": {"seeds": 1, "variants": {"lr-high": {"optim.lr": 0.01}}}, **sections}
    path = tmp / "exp.toml"
    path.write_text(tomli_w.dumps(experiment))
    return path


@pytest.fixture
def pg_study() -> str:
    """A new study name in the test PostgreSQL database, deleted afterwards."""
    import optuna

    try:
        import psycopg

        psycopg.connect(POSTGRES.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3).close()
    except Exception as e:  # noqa: BLE001 - no server, no driver
        if in_ci():
            pytest.fail(f"PostgreSQL at {POSTGRES} is needed in CI: {e}")
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {e}")
    name = f"dltune-security-{uuid.uuid4().hex[:8]}"
    yield name
    drop_study(name)


def _leaks(folder: Path) -> list[str]:
    """Every file under `folder` whose bytes hold PASSWORD (SQLite files, event files and weights as well)."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


def test_a_storage_password_is_masked_everywhere(tmp_path: Path, pg_study: str, capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A search on PostgreSQL with a password in its URL: created from Python (Optuna logging everything), run by
    `dltune worker` and resumed by `dltune tune`, combined by `dltune ensemble`, read by `dltune report`, and refused
    at a wrong port. The password is in no output, log, file, report or attribute; the URL shows it as ***."""
    import optuna

    from dltune.experiment.config import load_config
    from dltune.study.tune import create_study

    url = _with_password(POSTGRES)
    masked = url.replace(PASSWORD, "***")
    exp = _experiment(tmp_path, tracking={"tensorboard": str(tmp_path / "tb")})
    caplog.set_level(logging.DEBUG)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    optuna.logging.enable_propagation()  # Optuna's own lines reach caplog as well
    try:
        create_study(load_config(exp), storage=url, study=pg_study)
    finally:
        optuna.logging.disable_propagation()
        optuna.logging.set_verbosity(verbosity)
    runs = [run_main(capsys, "worker", "--storage", url, "--study", pg_study, "--out", str(tmp_path / "worker")),
            run_main(capsys, "tune", str(exp), "--storage", url, "--study", pg_study, "--trials", "2",
                     "--out", str(tmp_path / "tune")),
            run_main(capsys, "ensemble", "--storage", url, "--study", pg_study, "--top", "2", "--method", "mean",
                     "--out", str(tmp_path / "ensemble"))]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert "1 trial run here" in runs[0].stdout and "trial 1:" in runs[1].stdout
    assert masked in (tmp_path / "ensemble" / "report.html").read_text(encoding="utf-8")  # its source, shown masked
    refused = [run_main(capsys, "report", str(tmp_path / "tune"), "--storage", url, "--study", pg_study),
               run_main(capsys, "tune", str(exp), "--storage", _with_password(POSTGRES, port=1), "--study", pg_study,
                        "--out", str(tmp_path / "nowhere"))]
    assert [r.returncode for r in refused] == [2, 2], [r.stderr for r in refused]
    assert f"{masked}: the study {pg_study!r} is not a dltune ablation" in refused[0].stderr
    assert f"--storage {masked.replace(':5432', ':1')}: cannot open the storage" in refused[1].stderr
    assert not (tmp_path / "nowhere").exists()

    outputs = "".join(r.stdout + r.stderr for r in [*runs, *refused]) + caplog.text
    assert "A new study created in RDB" in caplog.text  # Optuna's lines were captured
    assert PASSWORD not in outputs
    assert not _leaks(tmp_path), "files that hold the password"
    storage = optuna.storages.RDBStorage(POSTGRES)
    study_id = storage.get_study_id_from_name(pg_study)
    stored = [storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id)]
    trials = storage.get_all_trials(study_id)
    assert len(trials) == 2
    stored += [attrs for t in trials for attrs in (t.user_attrs, t.system_attrs, t.params)]
    assert PASSWORD not in repr(stored)
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))  # [tracking] wrote, and was searched too


# --- the user's umask, and nothing outside --out --------------------------------------------------------------------


def _modes(*folders: Path) -> dict[str, int]:
    """The permission bits of every file and folder under `folders`, the folders themselves included."""
    return {str(p): stat.S_IMODE(p.lstat().st_mode) for folder in folders for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_files_and_temporary_files_take_the_umask(tmp_path: Path, umask: int) -> None:
    from dltune.files import atomic_write, claim_dir, claim_file, folder_lock, temp_file, write_text

    previous = os.umask(umask)
    try:
        fd, tmp = temp_file(tmp_path, ".x.", ".tmp")
        os.close(fd)
        written = write_text(tmp_path / "a.txt", "a")
        with atomic_write(tmp_path / "b.bin") as path:
            path.write_bytes(b"b")
        claimed, folder = claim_file(tmp_path / "c.json"), claim_dir(tmp_path / "run")
        with folder_lock(folder, "test"):
            pass
    finally:
        os.umask(previous)
    modes = _modes(tmp, written, tmp_path / "b.bin", claimed, folder / ".lock")
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_outputs_of_ablate_and_tune_take_a_shared_umask(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """With umask 002 (a group shares the results) every file ablate and tune write is group-writable: none is forced
    to 0o644, as mkstemp's, SQLite's and explicit modes would make them."""
    exp = _experiment(tmp_path)
    out = tmp_path / "out"
    previous = os.umask(0o002)
    try:
        # a search's trial writes a run folder as train does: train itself is left to the test below
        runs = [run_main(capsys, "ablate", str(exp), "--out", str(out / "ablate")),
                run_main(capsys, "tune", str(exp), "--out", str(out / "tune"))]
    finally:
        os.umask(previous)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    modes = _modes(out)
    assert {"study.db", "report.html", "model.safetensors", ".lock", "best.toml"} <= {Path(p).name for p in modes}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o775 if Path(p).is_dir() else 0o664)}
    assert not wrong, f"not as umask 002 leaves them: {wrong}"


# a fresh process, as a user starts one: umask 077, a home, a working folder and a temporary folder of its own
_FRESH_PROCESS = """
import sys
from dltune.cli import main
exp, out = sys.argv[1:]
for command in (["train", exp, "--out", out + "/train"], ["ablate", exp, "--out", out + "/ablate"],
                ["tune", exp, "--out", out + "/tune"]):
    code = main(command)
    if code:
        sys.exit(code)
"""


@pytest.mark.stress  # a fresh process with three commands: about 10 s of CPU
def test_a_private_umask_keeps_every_output_private_and_nothing_is_written_outside_out(tmp_path: Path) -> None:
    """train, ablate and tune in one fresh process with umask 077, its working folder, HOME, TMPDIR and DLTUNE_DATA
    empty folders of their own: every file and folder under --out is private to the user, and the others hold
    nothing new but matplotlib's documented font cache under HOME (~/.cache/matplotlib, written once per machine;
    dltune leaves MPLCONFIGDIR to the user)."""
    places = {name: tmp_path / name for name in ("cwd", "home", "tmp", "data")}
    for folder in places.values():
        folder.mkdir()
    exp = _experiment(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "MPLCONFIGDIR"))}
    env.update(HOME=str(places["home"]), TMPDIR=str(places["tmp"]), DLTUNE_DATA=str(places["data"]),
               PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(exp), str(tmp_path / "out")], cwd=places["cwd"],
                          env=env, capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(0o077))
    assert done.returncode == 0, done.stderr[-3000:]
    modes = _modes(tmp_path / "out")
    assert len(modes) > 20
    shared = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not shared, f"readable or writable by others under umask 077: {shared}"
    new = {name: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
           for name, folder in places.items()}
    assert all(p.startswith(".cache/matplotlib/") for p in new.pop("home")), new
    assert new == {"cwd": [], "tmp": [], "data": []}
