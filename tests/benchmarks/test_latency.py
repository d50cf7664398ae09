"""benchmarks.latency: FLOPs ratios against the paper, interleaved timing, and a small end-to-end run."""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

import idlevit
from benchmarks.flops import count_flops
from benchmarks.harness import (
    DENSE,
    BenchResult,
    Config,
    Timing,
    _finish,
    build_models,
    format_table,
    interleaved,
    paired_ratio,
    plot,
    run_benchmark,
    summarise,
    write_json,
)
from idlevit.errors import ToolkitError

#: IDLEVIT.md: FLOPs of IdleViT-DeiT-S relative to dense DeiT-S (paper, 224 px).
PAPER_FLOPS_RATIO = {0.9: 0.914, 0.8: 0.791, 0.7: 0.688, 0.6: 0.600, 0.5: 0.529}
#: The paper's ratios are rounded to 3 digits and come from its own counter run over the
#: official code, which counts a little more than the matmuls counted here (ours sit 0.6-0.9%
#: below). 1.5% keeps that margin, yet a schedule off by one idle layer (3.4% at r=0.7,
#: see the test below) or a wrong k per layer fails.
TOLERANCE = 0.015


@pytest.fixture(scope="module")
def deit_small_models() -> dict[float, idlevit.IdleViT]:
    with torch.device("meta"):  # FLOPs need shapes only: no weight init, no memory
        return build_models("deit_small", list(PAPER_FLOPS_RATIO))


@pytest.fixture(scope="module")
def deit_small_cpu_models() -> dict[float, idlevit.IdleViT]:
    """Real tensors, as `python -m benchmarks.latency` counts: timm's dense attention runs as fused SDPA here."""
    return build_models("deit_small", list(PAPER_FLOPS_RATIO))


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_flops_ratios_match_the_paper(device: str, request: pytest.FixtureRequest) -> None:
    models = request.getfixturevalue("deit_small_models" if device == "meta" else "deit_small_cpu_models")
    dense = count_flops(models[DENSE])
    assert dense == pytest.approx(2 * 4.6e9, rel=0.01)  # DeiT-S: 4.6 GMACs
    for rate, paper in PAPER_FLOPS_RATIO.items():
        assert count_flops(models[rate]) / dense == pytest.approx(paper, rel=TOLERANCE), rate


def test_tolerance_catches_a_schedule_one_layer_short(deit_small_models: dict[float, idlevit.IdleViT]) -> None:
    """The training script's layers 4..11 (8 idle layers) must fall outside the tolerance."""
    with torch.device("meta"):
        ratios = [0.7] * 3 + [0.49] * 3 + [0.343] * 2
        model = idlevit.create_model("deit_small", idle_layers=range(4, 12), keep_ratios=ratios)
    ratio = count_flops(model) / count_flops(deit_small_models[DENSE])
    assert ratio != pytest.approx(PAPER_FLOPS_RATIO[0.7], rel=TOLERANCE)


def test_exported_graph_does_no_more_matmul_work(deit_small_models: dict[float, idlevit.IdleViT]) -> None:
    """The dense export does the reference's matmuls; idle exports skip the all-token key projection."""
    dense = deit_small_models[DENSE]
    assert count_flops(dense, dense.forward_export) == count_flops(dense)
    model = deit_small_models[0.7]
    assert count_flops(model, model.forward_export) < count_flops(model)


def test_models_share_weights_and_dense_has_no_idle_layer(deit_small_models: dict[float, idlevit.IdleViT]) -> None:
    assert deit_small_models[DENSE].idle_plan == {}
    assert deit_small_models[DENSE].state_dict().keys() == deit_small_models[0.5].state_dict().keys()


def test_models_share_the_same_weights() -> None:
    models = build_models("deit_tiny", [0.5], img_size=64)
    a, b = models[DENSE].state_dict(), models[0.5].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class CallRunner(BaseRunner):
    """A Polygraphy runner around a function of the feed: what ``interleaved`` times, with its activations logged."""

    def __init__(self, name: str, run: Callable[[dict], None], log: list[tuple[str, str]]) -> None:
        super().__init__(name=name)
        self.run, self.log = run, log

    def activate_impl(self) -> None:
        self.log.append(("activate", self.name))

    def deactivate_impl(self) -> None:
        self.log.append(("deactivate", self.name))

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata()

    def infer_impl(self, feed_dict: dict) -> OrderedDict:
        self.log.append(("run", self.name))
        self.run(feed_dict)
        return OrderedDict()


def _sleeping_runners(names: dict[str, float], log: list[tuple[str, str]]) -> dict[tuple[str, float], CallRunner]:
    def sleeper(seconds: float) -> Callable[[dict], None]:
        return lambda feed: time.sleep(seconds)

    return {(name, 1.0): CallRunner(name, sleeper(seconds), log) for name, seconds in names.items()}


def test_interleaved_times_every_configuration_each_round_in_a_shuffled_order() -> None:
    log: list[tuple[str, str]] = []
    names = {"slow": 0.02, "fast": 0.01, "mid": 0.015}
    runners = _sleeping_runners(names, log)
    timings = interleaved(runners, batch=1, img_size=8, warmup=1, repeats=8, progress=False, rebuild_every=8)
    calls = [name for what, name in log if what == "run"]
    assert calls[:3] == ["slow", "fast", "mid"]  # warm-up
    rounds = [calls[3 + 3 * i : 6 + 3 * i] for i in range(8)]
    assert all(sorted(r) == sorted(names) for r in rounds)  # every configuration once a round
    for name in names:  # nobody always runs after the same neighbour (a rotation would do that)
        before = {r[r.index(name) - 1] if r.index(name) else None for r in rounds}
        assert len(before) >= 2, (name, rounds)
    assert 1.4 < paired_ratio(timings["slow", 1.0], timings["fast", 1.0]) < 2.6
    assert timings["fast", 1.0].median_ms >= 10 and timings["fast", 1.0].throughput <= 100


def test_interleaved_rebuilds_every_runner_in_a_new_order_and_leaves_them_inactive() -> None:
    """Sessions made earlier ran slower than the same file made later: the creation order must change."""
    log: list[tuple[str, str]] = []
    names = {f"graph{i}": 0.0 for i in range(5)}
    runners = _sleeping_runners(names, log)
    timings = interleaved(runners, batch=1, img_size=8, warmup=2, repeats=12, progress=False, rebuild_every=4)
    assert all(len(t.seconds) == 12 for t in timings.values())
    assert not any(runner.is_active for runner in runners.values())
    activations = [name for what, name in log if what == "activate"]
    orders = [tuple(activations[i : i + 5]) for i in range(0, len(activations), 5)]
    assert len(orders) == 3 and all(sorted(order) == sorted(names) for order in orders)  # rounds 0, 4 and 8
    assert len(set(orders)) >= 2, orders
    for block in range(3):  # each block: every runner deactivated, activated, warmed up twice, then 4 rounds
        first = [i for i, (what, _) in enumerate(log) if what == "activate"][5 * block]
        runs = [name for what, name in log[first:] if what == "run"][: 2 * 5 + 4 * 5]
        assert runs[:10] == [name for name in names for _ in range(2)]
        assert sorted(runs[10:]) == sorted(list(names) * 4)


def test_interleaved_leaves_every_runner_inactive_when_a_run_fails() -> None:
    log: list[tuple[str, str]] = []

    def fail(feed: dict) -> None:
        raise RuntimeError("the runtime failed")

    runners = _sleeping_runners({"ok": 0.0}, log)
    runners["bad", 1.0] = CallRunner("bad", fail, log)
    with pytest.raises(RuntimeError, match="the runtime failed"):
        interleaved(runners, batch=1, img_size=8, warmup=1, repeats=3, progress=False)
    assert not any(runner.is_active for runner in runners.values())
    with pytest.raises(ToolkitError, match="rebuild_every"):
        interleaved(runners, batch=1, img_size=8, warmup=1, repeats=3, progress=False, rebuild_every=0)


def test_settle_pause_happens_before_each_run_and_outside_its_timing() -> None:
    gaps: list[float] = []
    last = [time.perf_counter()]

    def run(feed: dict) -> None:
        gaps.append(time.perf_counter() - last[0])
        time.sleep(0.005)
        last[0] = time.perf_counter()

    runners = {("m", 1.0): CallRunner("m", run, [])}
    timings = interleaved(runners, batch=1, img_size=8, warmup=1, repeats=3, progress=False, settle_s=0.05)
    assert len(gaps) == 4 and all(gap >= 0.05 for gap in gaps)  # warm-up included
    assert max(timings["m", 1.0].seconds) < 0.05


def test_paired_ratio_cancels_noise_common_to_a_round() -> None:
    """A round where the machine was 10x slower for both configs must not move the ratio."""
    a = Timing("x", 0.5, 1, [0.05, 0.5, 0.05])
    b = Timing("x", 1.0, 1, [0.1, 1.0, 0.1])
    assert paired_ratio(a, b) == pytest.approx(0.5)


@pytest.mark.slow
def test_end_to_end_on_deit_tiny(tmp_path: Path) -> None:
    backends = ["pytorch", "onnxruntime-cpu", "onnxruntime-cuda"]
    graphs = ["dynamo", "torchscript", "optimized"]
    # 6 rounds: every runner (PyTorch and each ONNX Runtime session) is made again after the 5th
    result = run_benchmark("deit_tiny", [0.7], [1, 2], backends, 1, 6, progress=False, img_size=64, graphs=graphs)
    assert result.keep_rates == [0.7, DENSE]
    ort_labels = ["onnxruntime-cpu", "onnxruntime-cpu torchscript", "onnxruntime-cpu optimized"]
    if not torch.cuda.is_available():
        assert "onnxruntime-cuda" in result.skipped and result.backends == ["pytorch", *ort_labels]
    assert len(result.rows) == 2 * len(result.backends) * 2
    dense = result.row(2, "onnxruntime-cpu", DENSE)
    assert dense["time_ratio"] == 1.0 and dense["flops_ratio"] == 1.0
    assert result.row(1, "pytorch", 0.7)["speedup_vs_pytorch"] == 1.0
    assert 0.5 < result.row(1, "pytorch", 0.7)["flops_ratio"] < 0.8
    for label in ort_labels[1:]:  # every other graph is compared with the default export, dense and idle alike
        for rate in (0.7, DENSE):
            row = result.row(1, label, rate)
            assert row["vs_default_graph_min"] <= row["vs_default_graph"] <= row["vs_default_graph_max"]
    best = min(ort_labels, key=lambda label: result.row(2, label, DENSE)["median_ms"])
    assert all(result.row(2, label, DENSE)["vs_best_dense"] >= 1.0 or label == best for label in ort_labels)
    table = format_table(result)
    assert "batch 2" in table and "dense" in table and "onnxruntime-cpu optimized" in table
    assert "against the default export" in table and "load average" in table
    write_json(result, tmp_path / "latency.json")
    plot(result, tmp_path / "latency.png")
    assert json.loads((tmp_path / "latency.json").read_text())["arch"] == "deit_tiny"
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_brings_its_own_arch() -> None:
    """--ckpt without --arch: the arch is the checkpoint's (the demo is deit_micro), nothing to omit."""
    models = build_models(None, [0.7], ckpt="demo")
    assert {model.cfg.name for model in models.values()} == {"deit_micro"}
    assert models[0.7].idle_plan == {3: 44, 4: 44, 5: 44, 6: 31, 7: 31, 8: 31, 9: 21, 10: 21, 11: 21}


# ---- the summary and the report, on hand-made timings (the arithmetic, independent of the machine) ----
def _timing(label: str, rate: float, seconds: list[float]) -> Timing:
    return Timing(label, rate, 1, seconds)


def test_summary_takes_the_fastest_dense_graph_and_the_spread_of_rounds() -> None:
    plain, fast = "onnxruntime-cpu", "onnxruntime-cpu optimized"
    timings = {
        (plain, DENSE): _timing(plain, DENSE, [1.0, 1.0, 1.0]),
        (plain, 0.7): _timing(plain, 0.7, [0.8, 0.7, 0.9]),
        (fast, DENSE): _timing(fast, DENSE, [0.8, 0.8, 0.8]),
        (fast, 0.7): _timing(fast, 0.7, [0.6, 0.6, 0.6]),
    }
    configs = [
        Config(plain, plain, "dynamo", 0.7, dense=(plain, DENSE)),
        Config(plain, plain, "dynamo", DENSE, dense=(plain, DENSE)),
        Config(fast, plain, "optimized", 0.7, dense=(fast, DENSE), default=(plain, 0.7)),
        Config(fast, plain, "optimized", DENSE, dense=(fast, DENSE), default=(plain, DENSE)),
    ]
    rows = {(r["backend"], r["keep_rate"]): r for r in summarise(timings, configs, 1, {})}
    idle = rows[plain, 0.7]
    assert (idle["time_ratio_min"], idle["time_ratio"], idle["time_ratio_max"]) == pytest.approx((0.7, 0.8, 0.9))
    assert idle["vs_best_dense"] == pytest.approx(1.0)  # 0.8 / 0.8: against the optimised dense graph
    assert rows[fast, 0.7]["vs_best_dense"] == pytest.approx(0.75)
    assert rows[fast, 0.7]["vs_default_graph"] == pytest.approx(0.6 / 0.8)
    assert math.isnan(idle["speedup_vs_pytorch"]) and math.isnan(idle["vs_default_graph"])


def _result(rows: list[dict], **kwargs) -> BenchResult:
    fields = dict(arch="deit_micro", keep_rates=[0.7, DENSE], batch_sizes=[1], threads=2, warmup=1, repeats=3)
    fields.update(backends=["onnxruntime-cpu"], skipped={}, flops={}, graph_flops={}, rows=rows)
    return BenchResult(**{**fields, **kwargs})


def _row(rate: float, ratio: tuple[float, float, float]) -> dict:
    row = {"batch": 1, "backend": "onnxruntime-cpu", "keep_rate": rate, "median_ms": 2.0, "p90_ms": 2.2}
    row.update(throughput=500.0, flops_ratio=math.nan)
    for name in ("time_ratio", "speedup_vs_pytorch", "vs_best_dense", "vs_default_graph"):
        row[name] = row[f"{name}_min"] = row[f"{name}_max"] = math.nan
    row["time_ratio_min"], row["time_ratio"], row["time_ratio_max"] = ratio
    return row


def test_a_loaded_machine_and_a_wide_spread_are_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    steady = _result([_row(0.7, (0.79, 0.80, 0.81)), _row(DENSE, (1.0, 1.0, 1.0))])
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    _finish(steady, (0.4, 0.4, 0.4))
    assert steady.warnings == [] and steady.load["start"] == 0.4
    noisy = _result([_row(0.7, (0.70, 0.80, 0.90)), _row(DENSE, (1.0, 1.0, 1.0))])
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 5.0, 2.0))
    _finish(noisy, (0.4, 0.4, 0.4))
    assert len(noisy.warnings) == 2
    assert "load average 9.0" in noisy.warnings[0] and "more than 10%" in noisy.warnings[1]


def test_a_slower_idlevit_is_explained_where_it_is_shown() -> None:
    result = _result([_row(0.7, (1.5, 1.6, 1.7)), _row(DENSE, (1.0, 1.0, 1.0))], num_tokens=64, img_size=32)
    table = format_table(result)
    assert "1.600 [1.50..1.70]" in table
    assert "IdleViT is slower than dense" in table and "64 image tokens (32 px)" in table
    noise = _result([_row(0.7, (0.7, 1.2, 1.6)), _row(DENSE, (1, 1, 1))])  # slower in the median round only
    assert "slower than dense" not in format_table(noise)
