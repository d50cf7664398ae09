"""Target facts: which TensorRT lines are strongly typed, take plugins, need plugin_namespace."""

from __future__ import annotations

import pytest

from engines.target import JETSON, Target, has_fp8, parse_compute_capability
from idlevit.errors import ToolkitError


@pytest.mark.parametrize(
    ("text", "strongly_typed"),
    [
        ("tensorrt-8.6", False),
        ("tensorrt-10.3", False),
        ("tensorrt-10.11", False),
        ("tensorrt-10.12", True),
        ("tensorrt-11.0", True),
        ("tensorrt-rtx", True),
        ("tensorrt-rtx-1.2", True),
    ],
)
def test_strong_typing_by_line(text: str, strongly_typed: bool) -> None:
    assert Target.parse(text).strongly_typed is strongly_typed


def test_plugins_and_namespace_attribute() -> None:
    assert not Target.parse("tensorrt-rtx").takes_plugins
    assert Target.parse("tensorrt-10.9").needs_plugin_namespace_attr
    assert not Target.parse("tensorrt-10.10").needs_plugin_namespace_attr
    assert Target.parse("tensorrt-10.3").has_timing_cache and not Target.parse("tensorrt-rtx").has_timing_cache


def test_opset_ranges_grow_with_the_line() -> None:
    assert Target.parse("tensorrt-8.6").max_opset == 17
    assert Target.parse("tensorrt-10.3").max_opset == 20
    assert Target.parse("tensorrt-11.5").max_opset == 25


@pytest.mark.parametrize("text", ["trt-10", "tensorrt-x.y", "onnxruntime"])
def test_bad_target_text(text: str) -> None:
    with pytest.raises(ToolkitError):
        Target.parse(text)


@pytest.mark.parametrize(
    ("cc", "fp8"),
    [("7.5", False), ("8.0", False), ("8.6", False), ("8.7", False), ("8.9", True), ("9.0", True), ("11.0", True)],
)
def test_fp8_tensor_cores_start_with_ada(cc: str, fp8: bool) -> None:
    assert has_fp8(cc) is fp8


def test_qdq_graphs_need_a_strongly_typed_builder() -> None:
    assert Target.parse("tensorrt-10.3").builds_strongly_typed  # Jetson Orin, JetPack 6: INT8 Q/DQ builds there
    assert Target.parse("tensorrt-rtx").builds_strongly_typed and Target.parse("tensorrt-11.0").builds_strongly_typed
    assert not Target.parse("tensorrt-8.6").builds_strongly_typed
    assert JETSON["orin"] == ("8.7", "10.3") and not has_fp8(JETSON["orin"][0]) and has_fp8(JETSON["thor"][0])
    with pytest.raises(ToolkitError, match="not MAJOR.MINOR"):
        parse_compute_capability("sm89")
