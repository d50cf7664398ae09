"""Target facts: which TensorRT lines are strongly typed, take plugins, need plugin_namespace."""

from __future__ import annotations

import pytest

from engines.target import Target
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
