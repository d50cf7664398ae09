"""The ``config.pbtxt`` of a Triton model repository entry, built as a structure and written by :mod:`.pbtxt`.

The fields are those of Triton's ``ModelConfig`` message (``model_config.proto``): name,
platform (``onnxruntime_onnx`` for an ONNX, ``tensorrt_plan`` for a TensorRT engine),
``max_batch_size``, inputs and outputs with the graph's names, types and dims, class labels on
the logits for Triton's classification extension, dynamic batching and one instance.
"""

from __future__ import annotations

import posixpath
from typing import Any

import onnx

from idlevit.errors import ToolkitError
from idlevit.names import LOGITS

from .layout import KIND_ONNX, KIND_TENSORRT, Layout
from .pbtxt import Enum, to_pbtxt
from .source import DeploySource, TensorSpec

PLATFORMS = {KIND_ONNX: "onnxruntime_onnx", KIND_TENSORRT: "tensorrt_plan"}
#: ONNX element type -> Triton data type (model_config.proto's DataType).
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}
QUEUE_DELAY_US = 100


def _tensor(source: DeploySource, spec: TensorSpec, kind: str) -> dict[str, Any]:
    if spec.elem_type not in TRITON_TYPES:
        name = onnx.TensorProto.DataType.Name(spec.elem_type) if spec.elem_type else "undefined"
        raise ToolkitError(
            f"graph {kind} {spec.name} has ONNX type {name}, which Triton's config cannot name here; "
            "export the graph again with `python -m export.onnx`"
        )
    static = source.max_batch == 0  # then dims carry the batch axis too
    return {
        "name": spec.name,
        "data_type": Enum(TRITON_TYPES[spec.elem_type]),
        # Triton's FORMAT_NCHW wants exactly three dims (C, H, W) beside the batch axis
        "format": Enum("FORMAT_NCHW") if kind == "input" and not static and len(spec.dims) == 3 else None,
        "dims": ([source.meta.batch] if static else []) + spec.dims,
    }


def triton_config(source: DeploySource, layout: Layout, queue_delay_us: int = QUEUE_DELAY_US) -> dict[str, Any]:
    """The ``ModelConfig`` fields of the package's Triton entry, as nested dicts and lists."""
    if source.kind not in PLATFORMS:
        raise ToolkitError(f"Triton cannot load a {source.kind} model; package a TensorRT engine or the ONNX")
    if source.kind == KIND_ONNX and source.uses_plugin:
        raise ToolkitError(
            f"{source.model.name} uses the {source.meta.plugin} plugin op, which Triton's ONNX Runtime backend "
            "cannot run; package the engine built from it, or an export without --plugin"
        )
    if layout.triton_config is None or layout.triton_labels is None:
        raise ValueError(f"a {layout.kind} package has no Triton entry")
    labels = posixpath.relpath(layout.triton_labels, posixpath.dirname(layout.triton_config))
    outputs = []
    for spec in source.outputs:
        tensor = _tensor(source, spec, "output")
        if spec.name == LOGITS:
            tensor["label_filename"] = labels
        outputs.append(tensor)
    config: dict[str, Any] = {
        "name": layout.name,
        "platform": PLATFORMS[source.kind],
        "max_batch_size": source.max_batch,
        "input": [_tensor(source, spec, "input") for spec in source.inputs],
        "output": outputs,
    }
    if source.max_batch:
        config["dynamic_batching"] = {
            "preferred_batch_size": [source.opt_batch],
            "max_queue_delay_microseconds": queue_delay_us,
        }
    kind = "KIND_GPU" if source.kind == KIND_TENSORRT else "KIND_AUTO"
    config["instance_group"] = [{"count": 1, "kind": Enum(kind)}]
    return config


def triton_config_text(source: DeploySource, layout: Layout) -> str:
    """``config.pbtxt``: the config in protobuf text format."""
    header = f"# Triton model repository entry for {source.model.name}, written by `python -m engines.package`\n"
    return header + to_pbtxt(triton_config(source, layout))
