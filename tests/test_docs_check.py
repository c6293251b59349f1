"""tools/docs_check.py, which reruns what the README quotes: its comparison, and one real transcript."""

from __future__ import annotations

import importlib.util

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("docs_check", ROOT / "tools" / "docs_check.py")
docs_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_check)


def test_a_changed_number_is_a_mismatch_and_timings_are_not() -> None:
    quoted = ["epoch 1/2  train loss 0.6932  lr 0.001  54,131 samples/s  0.07s", "test accuracy 94.10%"]
    assert docs_check.mismatch(quoted, ["epoch 1/2  train loss 0.6932  lr 0.001  1,602 samples/s  2.25s",
                                        "test accuracy 94.10%"]) is None
    assert "94.10%" in docs_check.mismatch(quoted, [quoted[0], "test accuracy 94.20%"])
    assert "goes on" in docs_check.mismatch(quoted, [*quoted, "one line more"])
    assert docs_check.mismatch(quoted, quoted[:1]) is not None  # a line missing
    assert docs_check.normalize("run folder: runs/seed_mnist-20261128-171012-2") == "run folder: runs/seed_mnist-DATE-TIME"


def test_dots_stand_for_any_lines() -> None:
    quoted = ["trial 1: 0.91", "...", "trial 23: pruned", "trials: 1 complete"]
    printed = ["trial 1: 0.91", "trial 7: pruned", "trial 9: pruned", "trial 23: pruned", "trials: 1 complete"]
    assert docs_check.mismatch(quoted, printed) is None
    assert docs_check.mismatch(quoted, printed[:-1] + ["trials: 2 complete"]) is not None
    assert docs_check.mismatch(["first", "..."], ["first", "anything", "else"]) is None


def test_the_readme_transcripts_are_found_and_one_reruns_as_quoted() -> None:
    found = {command: (quoted, compare) for _, command, quoted, compare in docs_check.transcripts(ROOT / "README.md")}
    assert {"dltune train examples/seed_mnist.toml --set optim.lr=-1 --set model.activation=swish",
            "dltune tune examples/tune_mnist.toml", "dltune lr-find examples/seed_mnist.toml"} <= set(found)
    assert found["dltune batch-find examples/seed_mnist.toml --couple-lr sqrt"][1] is False  # timings only
    command = "dltune train examples/seed_mnist.toml --set optim.lr=-1 --set model.activation=swish"
    assert docs_check.check_transcript(command, found[command][0], True) is None
    assert docs_check.check_transcript(command, [line.replace("-1", "-2") for line in found[command][0]], True)


def test_another_kind_of_machine_is_compared_with_what_it_printed_before(monkeypatch, capsys) -> None:
    # the README names the machine that printed its numbers; another kind's float kernels move them, so there the
    # outputs are compared with that kind's record (tools/docs_printed_elsewhere.json), and a kind with none fails
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = docs_check.printed_on(readme)
    assert named is not None and docs_check.printed_on("no marker") is None
    assert docs_check.machine().split()[1] in ("x86_64", "aarch64", "arm64")
    # the transcript of an invalid experiment: no number of a training run in it
    error = next(f"README.md:{line}" for line, command, _, _ in docs_check.transcripts(ROOT / "README.md")
                 if command.startswith("dltune train examples/seed_mnist.toml --set optim.lr=-1"))
    monkeypatch.setattr(docs_check, "machine", lambda: named)  # the README's own kind: its quotes are compared
    assert docs_check.main(["--only", error]) == 0 and f"ok   {error}" in capsys.readouterr().out
    monkeypatch.setattr(docs_check, "machine", lambda: "NoSuchVendor x86_64")
    assert docs_check.main(["--only", error]) == 1
    assert "nothing recorded for this machine (NoSuchVendor x86_64)" in capsys.readouterr().out
    recorded = ["epoch 1/2  train loss 0.6932", "test accuracy 94.10%"]
    assert docs_check.recorded_problems(recorded, recorded, "k") == []
    assert "94.20%" in docs_check.recorded_problems([recorded[0], "test accuracy 94.20%"], recorded, "k")[0]
