"""The precision plan as plain data: which precision, how the target is told, which nodes stay FP32.

:mod:`engines.precision` makes plans from graphs; the builder, the sidecar and the deployment
package read them. Nothing here imports onnx or TensorRT, so the commands can name the
precisions and the quantization plans in ``--help`` before anything heavy loads. Every layer is
IEEE FP32 unless the plan says otherwise: TF32 is always off (it would round the token scores
as FP16 does), and graph inputs and outputs stay FP32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from idlevit import names

FP32, FP16, INT8, FP8 = "fp32", "fp16", "int8", "fp8"
#: Precisions the plan knows (bf16 slots in here: one entry and one converter).
PRECISIONS = (FP32, FP16, INT8, FP8)
#: Precisions reached by explicit quantization (Q/DQ nodes written into the graph by ModelOpt): the naming rule's
#: list (their graphs are ``<stem>_int8.onnx`` / ``<stem>_fp8.onnx``), so plans and names cannot disagree.
QUANTIZED = names.QUANTIZED


class Method(str, Enum):
    """How a plan reaches TensorRT (the value is what the sidecar records)."""

    FP32 = "fp32"  # FP32 everywhere
    MIXED_ONNX = "mixed-onnx"  # reduced precision written into the graph's types (strongly typed targets)
    BUILDER_FLAGS = "builder-flags"  # FP16 builder flag + per-layer FP32 constraints (weakly typed TensorRT 10.x)
    QDQ_ONNX = "qdq-onnx"  # explicit quantization: Q/DQ nodes in the graph, built as a strongly typed network


# ---- quantization plans: which GEMMs get Q/DQ -------------------------------------------------
#: The four weight GEMMs of a transformer block, in graph order, and the attention core (q·kᵀ, attn·v).
QKV, PROJ, FC1, FC2, ATTENTION = "qkv", "proj", "fc1", "fc2", "attention"
BLOCK_GEMMS = (QKV, PROJ, FC1, FC2)
#: What ModelOpt quantizes on its own beyond the GEMMs: residual Adds, LayerNorm inputs, the stem, the head.
MODELOPT_DEFAULT = "modelopt"


@dataclass(frozen=True)
class QuantPlan:
    """Which nodes an INT8/FP8 graph quantizes; the scoring path of every idle layer never is.

    ``roles`` are the block GEMMs that get Q/DQ on both inputs (activation per tensor, weights
    per output channel): in every block, or only in the idle / dense ones when ``idle_roles`` /
    ``dense_roles`` say otherwise. ``roles=(MODELOPT_DEFAULT,)`` lets ModelOpt place Q/DQ by its
    own rules (GEMMs, attention core, residual Adds and LayerNorm inputs, stem and head).
    ``fp32_edge_blocks`` keeps that many blocks at each end of the network unquantized.
    """

    name: str
    summary: str
    roles: tuple[str, ...]
    idle_roles: tuple[str, ...] | None = None  # None: ``roles``
    fp32_edge_blocks: int = 0

    @property
    def modelopt_default(self) -> bool:
        return self.roles == (MODELOPT_DEFAULT,)

    def roles_for(self, idle: bool) -> tuple[str, ...]:
        return self.idle_roles if idle and self.idle_roles is not None else self.roles


#: The named plans of ``--int8-plan`` (and ``--fp8``), measured by ``python -m benchmarks.quantization``.
QUANT_PLANS: dict[str, QuantPlan] = {
    plan.name: plan
    for plan in (
        QuantPlan(
            "all",
            "everything ModelOpt quantizes (GEMMs, attention core, residual Adds, LayerNorm inputs, stem, head)",
            (MODELOPT_DEFAULT,),
        ),
        QuantPlan("gemms", "the four weight GEMMs of every block (qkv, proj, fc1, fc2)", BLOCK_GEMMS),
        QuantPlan("gemms-attn", "the block GEMMs and the attention core (q·kᵀ, attn·v)", (*BLOCK_GEMMS, ATTENTION)),
        QuantPlan("mlp-proj", "fc1, fc2 and the attention output projection of every block", (PROJ, FC1, FC2)),
        QuantPlan("mlp", "the MLP (fc1, fc2) of every block", (FC1, FC2)),
        QuantPlan(
            "gemms-dense-mlp-idle",
            "all four GEMMs of the dense blocks, only the MLP of the idle blocks",
            BLOCK_GEMMS,
            idle_roles=(FC1, FC2),
        ),
        QuantPlan(
            "gemms-inner",
            "the four GEMMs of every block but the first and the last (those stay FP32)",
            BLOCK_GEMMS,
            fp32_edge_blocks=1,
        ),
    )
}
#: The plan ``--int8`` / ``--fp8`` use unless ``--int8-plan`` names another (the rule: README, "INT8 and FP8").
DEFAULT_QUANT_PLAN = "gemms-inner"
#: Calibration methods ModelOpt offers for INT8/FP8 (entropy: KL-divergence thresholds; max: absolute maxima).
CALIBRATION_METHODS = ("max", "entropy")
DEFAULT_CALIBRATION_METHOD = "max"


@dataclass(frozen=True)
class QuantOptions:
    """What ``--int8`` / ``--fp8`` are asked to do: the plan and the calibration set."""

    plan: str = DEFAULT_QUANT_PLAN
    data: str = "digits"  # "digits" (its train split) or an ImageFolder root (ROOT/train when present)
    images: int | None = None  # None: the whole digits train split, or 512 images of a folder
    method: str = DEFAULT_CALIBRATION_METHOD
    seed: int = 0


@dataclass
class Quantization:
    """How a Q/DQ graph was made: recorded in its metadata and in the engine's sidecar."""

    plan: str  # a QUANT_PLANS name
    calibration: str  # "digits:train" or the ImageFolder it read
    calibration_images: int
    calibration_method: str  # max or entropy
    quantized_nodes: int  # nodes with Q/DQ on their inputs
    excluded_nodes: list[str] = field(default_factory=list)  # kept unquantized on purpose (the scoring path)
    quantizer: str = ""  # e.g. "modelopt.onnx.quantization 0.47.0"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PrecisionPlan:
    """A decision, recorded in the engine's sidecar."""

    precision: str  # what the user asked for: "fp32", "fp16", "int8" or "fp8"
    target: str  # e.g. "tensorrt-rtx 1.7.1.116"
    strongly_typed: bool
    method: Method
    fp32_nodes: list[str] = field(default_factory=list)  # the scoring path, kept FP32 by the plan
    converter: str = ""  # what produced the reduced graph, e.g. "modelopt.onnx.autocast 0.47.0"
    quantization: dict[str, Any] | None = None  # Quantization.to_dict() of a Q/DQ graph (int8 / fp8)

    @property
    def needs_mixed_onnx(self) -> bool:
        return self.method is Method.MIXED_ONNX

    @property
    def needs_qdq_onnx(self) -> bool:
        return self.method is Method.QDQ_ONNX

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        if self.method is Method.FP32:
            return f"FP32 everywhere ({'strongly typed' if self.strongly_typed else 'weakly typed'} network, no TF32)"
        if self.method is Method.QDQ_ONNX:
            plan = f"plan {self.quantization['plan']}, " if self.quantization else ""
            return (
                f"{self.precision.upper()} Q/DQ graph ({plan}strongly typed network; {len(self.fp32_nodes)} "
                "scoring-path nodes unquantized FP32, every other layer without Q/DQ FP32, I/O FP32, no TF32)"
            )
        how = "mixed-precision ONNX" if self.needs_mixed_onnx else "FP16 builder flag + per-layer FP32 constraints"
        return f"FP16 with {len(self.fp32_nodes)} scoring-path nodes kept FP32 ({how}, I/O FP32, no TF32)"
