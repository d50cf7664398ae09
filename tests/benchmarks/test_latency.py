"""benchmarks.latency: FLOPs ratios against the paper, interleaved timing, and a small end-to-end run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import idlevit
from benchmarks.flops import count_flops
from benchmarks.harness import (
    DENSE,
    Timing,
    build_models,
    format_table,
    interleaved,
    paired_ratio,
    plot,
    run_benchmark,
    write_json,
)

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


def test_interleaved_times_every_configuration_each_round() -> None:
    calls: list[str] = []

    def sleeper(name: str, seconds: float):
        def run(feed: dict) -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    runners = {("slow", 1.0): sleeper("slow", 0.02), ("fast", 1.0): sleeper("fast", 0.01)}
    timings = interleaved(runners, batch=1, img_size=8, warmup=1, repeats=4, progress=False)
    assert calls[:2] == ["slow", "fast"]  # warm-up
    rounds = [calls[2 + 2 * i : 4 + 2 * i] for i in range(4)]
    assert all(sorted(r) == ["fast", "slow"] for r in rounds) and rounds[0] != rounds[1]  # rotation
    assert 1.4 < paired_ratio(timings["slow", 1.0], timings["fast", 1.0]) < 2.6
    assert timings["fast", 1.0].median_ms >= 10 and timings["fast", 1.0].throughput <= 100


def test_settle_pause_happens_before_each_run_and_outside_its_timing() -> None:
    gaps: list[float] = []
    last = [time.perf_counter()]

    def run(feed: dict) -> None:
        gaps.append(time.perf_counter() - last[0])
        time.sleep(0.005)
        last[0] = time.perf_counter()

    timings = interleaved({("m", 1.0): run}, batch=1, img_size=8, warmup=1, repeats=3, progress=False, settle_s=0.05)
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
    result = run_benchmark("deit_tiny", [0.7], [1, 2], backends, 1, 2, progress=False, img_size=64)
    assert result.keep_rates == [0.7, DENSE]
    if not torch.cuda.is_available():
        assert "onnxruntime-cuda" in result.skipped and result.backends == ["pytorch", "onnxruntime-cpu"]
    assert len(result.rows) == 2 * len(result.backends) * 2
    dense = result.row(2, "onnxruntime-cpu", DENSE)
    assert dense["time_ratio"] == 1.0 and dense["flops_ratio"] == 1.0
    assert result.row(1, "pytorch", 0.7)["speedup_vs_pytorch"] == 1.0
    assert 0.5 < result.row(1, "pytorch", 0.7)["flops_ratio"] < 0.8
    table = format_table(result)
    assert "batch 2" in table and "dense" in table and "onnxruntime-cpu" in table
    write_json(result, tmp_path / "latency.json")
    plot(result, tmp_path / "latency.png")
    assert json.loads((tmp_path / "latency.json").read_text())["arch"] == "deit_tiny"
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
