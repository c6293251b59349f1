"""dltune profile: the phases account for the measured step; the step's FLOPs against a count by hand; each advice
rule fires on a case built for it and stays silent on one built against it, by real runs and by its thresholds on
given timings; the caller's model and torch's state are left alone; the CLI's JSON, Chrome trace and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli, run_main
from torch.utils.data import TensorDataset

from dltune.experiment.config import load_config
from dltune.models import build_model
from dltune.run.precision import unsupported
from dltune.tuner.profile import profile
from dltune.tuner.profile_advice import (
    BATCH_SPEEDUP,
    CHANNELS_LAST_SPEEDUP,
    DATA_SAVING,
    ORDER,
    PRECISION_SPEEDUP,
    RULES,
    TECHNIQUE_SHARE,
    Situation,
    Timing,
    advise,
)

SEED_MNIST = "examples/seed_mnist.toml"


def _fired(result: Any, rule: str) -> list[str]:
    return [a.text for a in result.checks if a.rule == rule and a.fired]


def test_phases_add_up_to_the_measured_step_and_the_flops_to_a_count_by_hand() -> None:
    result = profile(SEED_MNIST, steps=30, rules=())
    assert [p.name for p in result.phases] == ["batching", "forward", "loss", "backward", "optimizer"]
    assert abs(result.ratio - 1) <= 0.10, (result.phases_ms, result.step_ms)
    assert sum(p.ms for p in result.phases) == pytest.approx(result.phases_ms)
    assert sum(p.share for p in result.phases) == pytest.approx(1.0)
    # 784-500-10 at batch 100: forward 2·B·(784·500 + 500·10); backward the weights' gradients (as many) and the
    # hidden layer's input gradient 2·B·500·10 (the first layer's input, the data, needs none)
    forward = 2 * 100 * (784 * 500 + 500 * 10)
    assert result.flops_per_step == forward + forward + 2 * 100 * 500 * 10
    assert result.gflops == pytest.approx(result.flops_per_step / result.step_ms / 1e6)
    assert result.samples_per_second == pytest.approx(100 / result.step_ms * 1e3, rel=0.05)  # 3,600 = 36 full batches
    assert result.peak_gflops["fp32"] > 0 and result.peak_share == pytest.approx(
        result.gflops / result.peak_gflops["fp32"])
    assert result.evaluation_ms is not None and result.evaluation_ms > 0
    assert result.peak_rss_bytes > 2**20 and result.cuda_peak_bytes is None
    names = [o.name for o in result.operators]
    assert 0 < len(names) <= 10 and "aten::addmm" in names and not any(n.startswith("dltune: ") for n in names)
    assert result.checks == [] and json.loads(json.dumps(result.to_dict()))["advice"] == []


def test_profile_leaves_the_callers_model_and_torchs_state_alone() -> None:
    config = load_config({"data": {"name": "digits", "limit": 400}, "model": {"hidden": [16]},
                          "parallel": {"threads": 1}})
    torch.manual_seed(5)
    model = build_model(config.model, (1, 8, 8), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    profile(config, model=model, steps=5, rules=())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


# --- each rule on real runs: a case built to fire it, and one built not to --------------------------------------

def _cpu_flags() -> set[str]:
    """The instruction sets this CPU has, as Linux lists them (elsewhere none are known)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(re.findall(r"^flags\s*:(.*)$", text, re.M)[0].split()) if "flags" in text else set()


def _cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic of its own (AVX512-BF16 or AMX): torch's own check is true where oneDNN
    only emulates it, which is slower."""
    return unsupported("bf16", torch.device("cpu")) is None and bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def test_bf16_advice_stays_silent_for_a_tiny_mlp() -> None:
    # 64-32-10 at batch 16: autocast's casts cost more than its matmuls save (0.6x fp32's speed on an EPYC here)
    result = profile(load_config({"data": {"name": "digits"}, "model": {"hidden": [32]}, "batch": {"size": 16}}),
                     steps=5, rules=["precision"])
    assert _fired(result, "precision") == []


def test_bf16_advice_fires_for_a_wider_mlp() -> None:
    if not _cpu_computes_bf16():
        pytest.skip("this CPU has no bf16 arithmetic of its own (avx512_bf16 or amx_bf16), where bf16 is no faster")
    # 784-1024-10 at batch 128: matmuls that bf16 computes at twice fp32's rate (1.4x the step on an EPYC here;
    # 784-4096-10 at batch 256, 1.5-1.8x, takes five times as long to profile)
    result = profile(load_config({"model": {"hidden": [1024]}, "batch": {"size": 128}}), steps=5,
                     rules=["precision"])
    (text,) = _fired(result, "precision")
    assert text.startswith("bf16 makes this model's step") and 'train.precision = "bf16"' in text


def test_data_advice_fires_when_batches_are_made_one_example_at_a_time() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 20, generator=g)
    data = TensorDataset(x, (x[:, 0] > 0).long())  # a Dataset: a DataLoader collates each batch, example by example
    result = profile(load_config({"model": {"hidden": [32]}, "batch": {"size": 256}}), data=data, steps=10,
                     rules=["data"])
    (text,) = _fired(result, "data")
    assert re.fullmatch(r"data loading is \d+% of the step \(with one batch reused, the step takes [\d.]+ ms "
                        r"instead of [\d.]+\): DataLoader workers make batches beside the step: set "
                        r"parallel.workers \(now 0\) and profile again", text)


def test_data_advice_stays_silent_for_batches_held_in_memory() -> None:
    result = profile(load_config({"data": {"name": "digits"}, "model": {"hidden": [256]}, "batch": {"size": 64}}),
                     steps=10, rules=["data"])
    assert result.phases[0].name == "batching" and result.phases[0].share < 0.3
    assert _fired(result, "data") == []


def test_batch_advice_fires_for_a_batch_of_8() -> None:
    result = profile(load_config({"data": {"name": "digits"}, "model": {"hidden": [32]}, "batch": {"size": 8}}),
                     steps=10, rules=["batch"])
    (text,) = _fired(result, "batch")
    assert re.match(r"batch 8 uses [\d.]+% of the matmul peak; batch 64 reaches [\d.]+% \([\d.]+× the samples/s\): "
                    r"`dltune batch-find`", text)


def test_batch_advice_stays_silent_for_a_batch_of_the_whole_split() -> None:
    result = profile(load_config({"data": {"name": "digits"}, "model": {"hidden": [32]}, "batch": {"size": 4096}}),
                     steps=5, rules=["batch"])
    assert result.checks == []  # no larger batch to try


L1 = {"data": {"name": "digits"}, "model": {"hidden": [1024, 1024]}, "regularization": {"l1": 1e-5}}


def test_technique_advice_fires_for_an_l1_penalty_on_a_large_model_at_batch_1() -> None:
    # the penalty reads every weight each step, as the forward and backward passes of one example do
    result = profile(load_config({**L1, "batch": {"size": 1}}), steps=10, rules=["technique"])
    (text,) = _fired(result, "technique")
    assert re.fullmatch(r"the L1 penalty costs \d+% of the step", text)


def test_technique_advice_stays_silent_for_an_l1_penalty_beside_large_batches() -> None:
    config = {"model": {"hidden": [256]}, "batch": {"size": 512}, "regularization": {"l1": 1e-5}}
    result = profile(load_config(config), steps=5, rules=["technique"])
    (check,) = result.checks
    assert not check.fired and check.measured["technique"] == "the L1 penalty"


CNN = {"data": {"name": "digits"}, "model": {"name": "cnn", "channels": [32, 64]}, "batch": {"size": 64}}


def test_channels_last_advice_fires_for_a_cnn_where_it_is_faster() -> None:
    if "avx512f" not in _cpu_flags():
        pytest.skip("oneDNN's channels-last convolutions are the fast ones on AVX-512 CPUs; this one has none")
    # 1.3x here (an EPYC with AVX-512), in three runs of three
    result = profile(load_config(CNN), steps=5, rules=["channels_last"])
    (check,) = result.checks
    assert check.fired, check.text
    assert re.fullmatch(r"channels-last memory order makes this model's step [\d.]+× faster here: set "
                        r"model.channels_last = true", check.text)


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [32]}, {**CNN["model"], "channels_last": True}],
                         ids=["no convolution", "channels-last already"])
def test_channels_last_advice_stays_silent_where_it_cannot_help(model: dict[str, Any]) -> None:
    result = profile(load_config({**CNN, "model": model}), steps=5, rules=["channels_last"])
    assert result.checks == []


# --- each rule's threshold, on given timings -----------------------------------------------------------------------

def _situation(config: dict[str, Any], base: float, changed: float, **kw: Any) -> Situation:
    """A Situation whose comparisons return steps of `base` and `changed` seconds (100 examples each)."""

    def timings(*_: Any) -> tuple[Timing, Timing]:
        return Timing(base, 100 / base, 1e9), Timing(changed, 100 / changed, 8e9)

    values = {"device": torch.device("cpu"), "convolutional": False, "n_train": 10_000, "in_memory": True,
              "workers": 0, "batch": 100, "shares": {}, "peak_flops": 1e11, **kw}
    return Situation(load_config(config), compare=timings, compare_same_batch=timings, **values)


# rule, config, shares or flags, (base, changed) seconds that fire, and that do not
THRESHOLDS = [
    ("precision", {}, {}, 1.0 / PRECISION_SPEEDUP),
    ("data", {}, {"shares": {"batching": 0.5}}, 1.0 - DATA_SAVING),
    ("batch", {}, {}, 1.0 / BATCH_SPEEDUP),
    ("technique", {"regularization": {"l2": 1e-4}}, {}, 1.0 - TECHNIQUE_SHARE),
    ("channels_last", {"model": {"name": "cnn"}}, {"convolutional": True}, 1.0 / CHANNELS_LAST_SPEEDUP),
]


@pytest.mark.parametrize(("rule", "config", "flags", "at"), THRESHOLDS, ids=[t[0] for t in THRESHOLDS])
def test_each_rule_fires_past_its_threshold_and_not_short_of_it(rule: str, config: dict[str, Any],
                                                                flags: dict[str, Any], at: float) -> None:
    if rule == "precision" and unsupported("bf16", torch.device("cpu")) is not None:
        pytest.skip("torch computes no bf16 on this CPU: the rule has nothing to try")
    past = advise(_situation(config, 1.0, at * 0.98, **flags), [rule])
    short = advise(_situation(config, 1.0, at * 1.02, **flags), [rule])
    assert [a.fired for a in past] == [True] and [a.fired for a in short] == [False]
    assert past[0].measured and short[0].measured  # a silent check keeps what it measured


def test_a_batching_share_below_30_percent_is_not_even_checked() -> None:
    assert advise(_situation({}, 1.0, 0.1, shares={"batching": 0.29}), ["data"]) == []


def test_the_l2_advice_names_the_optimizers_weight_decay_except_for_adamw() -> None:
    (sgd,) = advise(_situation({"optim": {"name": "sgd"}, "regularization": {"l2": 1e-4}}, 1.0, 0.5), ["technique"])
    assert sgd.text == ("the L2 penalty costs 50% of the step: optim.weight_decay = 0.0002 (2·l2) adds the same "
                        "gradient inside the optimizer's step (to the biases too), for a fraction of the cost")
    (adamw,) = advise(_situation({"optim": {"name": "adamw"}, "regularization": {"l2": 1e-4}}, 1.0, 0.5),
                      ["technique"])
    assert adamw.text == "the L2 penalty costs 50% of the step"


def test_every_rule_is_in_the_order_and_an_unknown_one_is_refused() -> None:
    assert sorted(ORDER) == RULES.names()
    with pytest.raises(Exception, match=r"rules: unknown advice rule 'precison' \(did you mean 'precision'\?\)"):
        profile(SEED_MNIST, steps=5, rules=["precison"])


# --- the command line ----------------------------------------------------------------------------------------------

def test_cli_prints_json_and_writes_a_chrome_trace(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    r = run_cli("profile", SEED_MNIST, "--steps", "10", "--set", "parallel.threads=1", "--json", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    assert "USDT" not in r.stderr  # the profiler's own log lines are kept out
    document = json.loads(r.stdout)
    assert document["steps"] == 10 and document["batch_size"] == 100 and document["trace"] == str(trace)
    assert {p["name"] for p in document["phases"]} >= {"forward", "backward", "optimizer"}
    assert {c["rule"] for c in document["checks"]} <= set(ORDER)
    assert document["advice"] == [c["text"] for c in document["checks"] if c["fired"]]
    events = json.loads(trace.read_text())["traceEvents"]
    assert events and all({"name", "ph", "ts"} <= set(e) for e in events if e["ph"] != "M")
    assert {"dltune: forward", "dltune: backward"} <= {e["name"] for e in events}


def test_cli_report_names_each_part(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "profile", SEED_MNIST, "--steps", "5", "--set", "data.name=digits", "--set",
                 "model.hidden=[16]")
    assert r.returncode == 0, r.stderr
    for said in ("where a training step's time goes", "measured step (no timers)", "evaluation, per training step",
                 "top operators by self time", "throughput:", "memory: peak RSS", "compute:", "matmul"):
        assert said in r.stdout, said


@pytest.mark.parametrize(("args", "named"), [
    (["--set", "parallel.strategy=ddp"], "parallel.strategy"),
    (["--steps", "3"], "--steps"),
    (["--trace", "no/such/folder/trace.json"], "--trace"),
], ids=["ddp", "steps", "trace"])
def test_bad_input_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    r = run_main(capsys, "profile", SEED_MNIST, *args)
    assert r.returncode == 2
    assert r.stderr.startswith(f"dltune profile: error: {named}") and "Traceback" not in r.stderr
