"""Static checks: a clean export passes; each planted violation fails with its own rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from engines.lint import ERROR, Finding, lint_graph, raise_on_errors, static_checks
from engines.target import Target
from idlevit.errors import CheckFailed

RTX, JETSON = Target.parse("tensorrt-rtx"), Target.parse("tensorrt-10.3")


@pytest.fixture
def graph(tiny_onnx: Path) -> onnx.ModelProto:
    return onnx.load(tiny_onnx)


def _errors(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings if f.severity == ERROR}


def _first(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.op_type == op)


def test_clean_export_passes_both_checkers(graph: onnx.ModelProto) -> None:
    for target in (RTX, JETSON):
        findings = static_checks(graph, target)
        assert not _errors(findings), findings
        raise_on_errors(findings)
    # trtcheck's INT64 false positives are folded into one line, not dropped silently
    assert any(f.rule == "trtcheck:TRT-DTYPE-INT64-WEIGHTS" for f in static_checks(graph, RTX))


def test_topk_k_above_3840_fails(graph: onnx.ModelProto) -> None:
    k_name = _first(graph, "TopK").input[1]
    init = next(i for i in graph.graph.initializer if i.name == k_name)
    init.CopyFrom(numpy_helper.from_array(np.array([4000], dtype=np.int64), k_name))
    findings = static_checks(graph, JETSON)
    assert {"topk-k-max", "trtcheck:TRT-OP-CONDITION"} <= _errors(findings)
    with pytest.raises(CheckFailed, match="K=4000"):
        raise_on_errors(findings)


def test_unsorted_topk_fails(graph: onnx.ModelProto) -> None:
    node = _first(graph, "TopK")
    kept = [a for a in node.attribute if a.name != "sorted"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("sorted", 0)])
    assert "topk-sorted" in _errors(lint_graph(graph, RTX))


def test_opset_outside_the_parser_range_fails(graph: onnx.ModelProto) -> None:
    graph.opset_import[0].version = 21
    assert "opset-range" in _errors(lint_graph(graph, JETSON))  # 10.3's parser documents up to 20
    assert "opset-range" not in _errors(lint_graph(graph, Target.parse("tensorrt-10.8")))


def test_scatter_with_reduction_fails(graph: onnx.ModelProto) -> None:
    scatter = _first(graph, "ScatterElements")
    kept = [attr for attr in scatter.attribute if attr.name != "reduction"]  # an exporter may write reduction="none"
    del scatter.attribute[:]
    scatter.attribute.extend([*kept, helper.make_attribute("reduction", "add")])
    assert "scatter-reduction" in _errors(lint_graph(graph, RTX))


def test_custom_op_rules(graph: onnx.ModelProto) -> None:
    node = _first(graph, "ScatterElements")
    node.domain, node.op_type = "idlevit", "IdleScatter"
    assert "plugin-on-rtx" in _errors(lint_graph(graph, RTX))
    assert "plugin-namespace" in _errors(lint_graph(graph, Target.parse("tensorrt-10.9")))
    assert "plugin-namespace" not in _errors(lint_graph(graph, Target.parse("tensorrt-10.10")))
    node.attribute.append(helper.make_attribute("plugin_namespace", "idlevit"))
    assert not _errors(lint_graph(graph, Target.parse("tensorrt-10.9")))
