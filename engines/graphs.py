"""Small onnx-graphsurgeon steps that several graph rewrites share."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def export_like(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` cleaned, sorted and exported with ``source``'s IR version and metadata (the artefact contract)."""
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model.ir_version = source.ir_version
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    return model


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node that reads ``old`` reads ``new`` instead (``old``'s producer is left to cleanup)."""
    for reader in list(old.outputs):
        for position, tensor in enumerate(list(reader.inputs)):
            if tensor is old:
                reader.inputs[position] = new


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant (initializer) tensor, or None for a computed one."""
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None
