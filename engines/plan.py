"""The precision plan as plain data: which precision, how the target is told, which nodes stay FP32.

:mod:`engines.precision` makes plans from graphs; the builder, the sidecar and the deployment
package read them. Nothing here imports onnx or TensorRT, so the commands can name the
precisions in ``--help`` before anything heavy loads. Every layer is IEEE FP32 unless the plan
says otherwise: TF32 is always off (it would round the token scores as FP16 does), and graph
inputs and outputs stay FP32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

FP32, FP16 = "fp32", "fp16"
#: Precisions the plan knows today (bf16 / int8 / fp8 slot in here: one entry and one converter each).
PRECISIONS = (FP32, FP16)


class Method(str, Enum):
    """How a plan reaches TensorRT (the value is what the sidecar records)."""

    FP32 = "fp32"  # FP32 everywhere
    MIXED_ONNX = "mixed-onnx"  # reduced precision written into the graph's types (strongly typed targets)
    BUILDER_FLAGS = "builder-flags"  # FP16 builder flag + per-layer FP32 constraints (weakly typed TensorRT 10.x)


@dataclass
class PrecisionPlan:
    """A decision, recorded in the engine's sidecar."""

    precision: str  # what the user asked for: "fp32" or "fp16"
    target: str  # e.g. "tensorrt-rtx 1.7.1.116"
    strongly_typed: bool
    method: Method
    fp32_nodes: list[str] = field(default_factory=list)  # the scoring path, kept FP32 by the plan
    converter: str = ""  # what produced the mixed graph, e.g. "modelopt.onnx.autocast 0.47.0"

    @property
    def needs_mixed_onnx(self) -> bool:
        return self.method is Method.MIXED_ONNX

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        if self.method is Method.FP32:
            return f"FP32 everywhere ({'strongly typed' if self.strongly_typed else 'weakly typed'} network, no TF32)"
        how = "mixed-precision ONNX" if self.needs_mixed_onnx else "FP16 builder flag + per-layer FP32 constraints"
        return f"FP16 with {len(self.fp32_nodes)} scoring-path nodes kept FP32 ({how}, I/O FP32, no TF32)"
