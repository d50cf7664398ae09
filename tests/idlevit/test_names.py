"""The one naming rule of every artefact: exports, reduced graphs, engines, plans, package folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.deploy.layout import KIND_ONNX, KIND_RTX, KIND_TENSORRT, package_layout
from engines.deploy.writer import default_package_dir
from engines.precision import mixed_onnx_path
from engines.quantize import quantized_onnx_path
from export.engine import default_engine_path
from export.exporter import default_output_path
from idlevit.names import (
    engine_name,
    export_name,
    model_stem,
    package_dir_name,
    plan_name,
    reduced_graph_name,
)


def test_export_names_join_the_graph_tags_in_one_order() -> None:
    assert export_name("my") == "my.onnx"
    assert export_name("my", ["ort", "indices"]) == "my_indices_ort.onnx"
    assert export_name("my", ["pixels", "plugin", "indices", "ort"]) == "my_indices_plugin_pixels_ort.onnx"
    with pytest.raises(ValueError):
        export_name("my", ["fp16"])
    assert default_output_path("runs/my.pth", "deit_micro", with_indices=True) == Path("runs/my_indices.onnx")


def test_reduced_graph_names() -> None:
    assert reduced_graph_name("my", "fp16") == "my_fp16_mixed.onnx"
    assert reduced_graph_name("my", "int8") == "my_int8.onnx"
    assert reduced_graph_name("my", "fp8") == "my_fp8.onnx"
    with pytest.raises(ValueError):
        reduced_graph_name("my", "fp32")
    assert mixed_onnx_path("a/my.onnx") == Path("a/my_fp16_mixed.onnx")
    assert quantized_onnx_path("a/my.onnx", "int8") == Path("a/my_int8.onnx")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "fp8"])
def test_an_engine_is_named_by_its_model_and_precision_whatever_the_runtime(precision: str) -> None:
    assert engine_name("my", precision) == f"my_{precision}.engine"
    # the runtime (tensorrt or tensorrt-rtx) plays no part: the default path takes none
    assert default_engine_path(Path("a/my.onnx"), precision) == Path(f"a/my_{precision}.engine")
    assert plan_name("my", precision) == f"my_{precision}.plan"


def test_a_reduced_graph_or_an_engine_names_its_artefacts_after_its_source() -> None:
    assert engine_name("my_fp16_mixed", "fp16") == "my_fp16.engine"
    assert engine_name("my_int8", "int8") == "my_int8.engine"
    assert engine_name("my_indices", "fp16") == "my_indices_fp16.engine"
    assert default_engine_path(Path("my_fp8.onnx"), "fp8") == Path("my_fp8.engine")
    # the plan a package of an engine builds is the engine's name with .plan: never <stem>_fp16_fp16.plan
    assert plan_name("my_fp16", "fp16") == "my_fp16.plan"
    assert plan_name("my_int8", "int8") == "my_int8.plan"
    assert model_stem("my_int8", "fp16") == "my_int8"  # another precision's suffix is part of the name
    assert model_stem("_fp16", "fp16") == "_fp16"  # a suffix alone is a name, not an empty stem


def test_package_folders_and_their_device_plans() -> None:
    assert package_dir_name("my") == "my_deploy"
    assert default_package_dir(Path("a/my_fp16.engine")) == Path("a/my_fp16_deploy")
    assert package_layout(KIND_ONNX, "my", "fp16", "my.onnx").device_engine == "my_fp16.plan"
    layout = package_layout(KIND_RTX, "my_fp16", "fp16", "my.onnx", engine_name="my_fp16.engine")
    assert layout.device_engine == "my_fp16.plan"
    assert package_layout(KIND_TENSORRT, "my_fp16", "fp16", "my.onnx").device_engine.endswith("model.plan")
