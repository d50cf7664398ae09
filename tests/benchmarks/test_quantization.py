"""benchmarks.quantization: the default rule, a small real sweep, and benchmarks.latency --precisions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.harness import DENSE, format_table, run_benchmark
from benchmarks.latency import build_parser as latency_parser
from benchmarks.latency import with_fp32
from benchmarks.quantization import build_parser
from benchmarks.sweep import PlanRow, SweepResult, Targets, choose_default, markdown, run_sweep, write
from engines.plan import DEFAULT_QUANT_PLAN, QUANT_PLANS
from idlevit.errors import ToolkitError

LAYERS = [str(layer) for layer in range(3, 12)]


def row(plan: str, agreement: float, b1: float, b8: float, top1: float = 0.96) -> PlanRow:
    return PlanRow(
        plan,
        "int8",
        top1=top1,
        top1_fp32=0.96,
        kept_agreement=dict.fromkeys(LAYERS, agreement),
        vs_dense={"1": b1, "8": b8},
    )


def test_rule_prefers_the_best_selection_among_plans_that_meet_every_target() -> None:
    rows = [
        row("fast-but-flips", 0.93, 0.37, 0.39),
        row("good", 0.981, 0.39, 0.43),
        row("better", 0.990, 0.42, 0.43),
        row("slow", 0.998, 0.9, 0.95),
        row("accuracy-drop", 0.999, 0.3, 0.3, top1=0.95),
    ]
    assert choose_default(rows)[0] == "better"
    assert not rows[0].meets_selection(Targets()) and rows[0].meets_speed(Targets())
    assert not rows[4].meets_selection(Targets())  # 1 point below FP32


def test_rule_passes_over_a_plan_whose_check_fails() -> None:
    """A plan the int8 check refuses builds no engine, however well it scores here."""
    refused = row("refused", 0.999, 0.3, 0.3)
    refused.judge_passed = False
    assert choose_default([refused, row("built", 0.98, 0.4, 0.45)])[0] == "built"


def test_rule_favours_the_selection_when_nothing_meets_every_target() -> None:
    rows = [row("fast-but-flips", 0.93, 0.37, 0.39), row("slow", 0.998, 0.9, 0.95), row("slower", 0.999, 1.0, 1.1)]
    plan, why = choose_default(rows)
    assert plan == "slow" and "no plan meets the selection and the speed targets together" in why
    plan, why = choose_default([row("a", 0.93, 0.3, 0.3), row("b", 0.95, 0.3, 0.3)])
    assert plan == "b" and "no plan keeps the selection target" in why


def test_small_sweep_end_to_end(tmp_path: Path) -> None:
    """One plan, a few images and one round: every column is filled and the files are written."""
    result = run_sweep(
        ["gemms", "mlp"],
        calib_images=128,
        test_images=48,
        arch="deit_tiny",
        img_size=64,
        batch_sizes=(1, 2),
        warmup=0,
        repeats=1,
        speed_calib_images=4,
        progress=False,
    )
    gemms = result.rows[0]
    assert gemms.quantized_nodes == 48 and result.test_images == 48
    assert "128 images of digits:train" in result.calibration
    assert list(gemms.kept_agreement) == LAYERS and all(0.5 < a <= 1.0 for a in gemms.kept_agreement.values())
    assert 0.5 < gemms.top1 <= 1.0 and gemms.top1_fp32 == result.rows[1].top1_fp32
    assert gemms.judge_passed is not None
    assert set(gemms.vs_dense) == {"1", "2"} and all(v > 0 for v in gemms.vs_idlevit.values())
    assert set(result.fp32_ratio) == {"1", "2"} and result.default in ("gemms", "mlp")
    table = markdown(result)
    assert "| gemms" in table and "kept L3" in table and "b2 vs FP32 IdleViT" in table and "Rule's pick:" in table
    json_path, md_path = write(result, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["plan"] == "gemms" and md_path.read_text() == table


def test_sweep_refuses_unknown_plans() -> None:
    with pytest.raises(ToolkitError, match="unknown plan"):
        run_sweep(["fastest"])
    assert build_parser().parse_args([]).plans == list(QUANT_PLANS)


def test_latency_times_int8_beside_fp32(tmp_path: Path) -> None:
    result = run_benchmark(
        "deit_tiny",
        [0.7],
        [1],
        ["onnxruntime-cpu"],
        warmup=0,
        repeats=1,
        img_size=64,
        progress=False,
        precisions=["fp32", "int8"],
        graphs=["dynamo"],
    )
    assert result.backends == ["onnxruntime-cpu", "onnxruntime-cpu int8"] and result.quant_plan == DEFAULT_QUANT_PLAN
    quantized = result.row(1, "onnxruntime-cpu int8", 0.7)
    assert quantized["vs_fp32_dense"] > 0 and quantized["vs_fp32_idlevit"] > 0
    assert not math.isnan(float(result.row(1, "onnxruntime-cpu int8", DENSE)["time_ratio"]))
    assert f"Q/DQ graphs (plan {DEFAULT_QUANT_PLAN})" in format_table(result)


def test_latency_precisions_flag() -> None:
    parse = latency_parser().parse_args
    assert with_fp32(parse(["--precisions", "int8"]).precisions) == ["fp32", "int8"]
    assert with_fp32(parse(["--precisions", "fp32,fp8"]).precisions) == ["fp32", "fp8"]
    with pytest.raises(ToolkitError, match="choose from fp32, int8, fp8"):
        parse(["--precisions", "fp16"])
    assert "--precisions" in latency_parser().format_help()
    with pytest.raises(ToolkitError, match="timed on ONNX Runtime"):
        run_benchmark("deit_tiny", [0.7], [1], ["pytorch"], precisions=["int8"], progress=False)


def test_rule_without_speed_goes_by_the_selection() -> None:
    rows = [row("a", 0.98, 0.3, 0.3), row("b", 0.99, 0.3, 0.3), row("c", 0.999, 0.3, 0.3, top1=0.9)]
    for r in rows:
        r.vs_dense = {}
    assert choose_default(rows) == ("b", "speed not measured: the highest worst-layer kept-token agreement")


def test_a_table_without_speed_says_so_and_not_how_speed_was_measured() -> None:
    rows = [row("a", 0.98, 0.3, 0.3)]
    rows[0].vs_dense = {}
    result = SweepResult("int8", "demo", "", "64 images", 48, [1, 8], 2, 7, rows)
    table = markdown(result)
    assert "Speed: not measured (--no-speed)." in table and "interleaved" not in table
    result.speed_model = "deit_small"
    assert "interleaved rounds" in markdown(result)
