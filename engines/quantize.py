"""INT8 and FP8 graphs that keep IdleViT's token selection: ModelOpt's explicit quantization, planned.

Quantization rounds the token features that every idle layer's CLS scoring ranks, so a graph
quantized the usual way keeps other tokens than the FP32 model. Two rules hold here whatever
the plan:

* the **scoring path** of every idle layer (:func:`engines.precision.scoring_path_nodes`:
  norm1 -> CLS query folded into the keys -> scores -> TopK) gets no Q/DQ and stays FP32, and
  the written graph is checked for it (:func:`check_scoring_path_unquantized`);
* everything else that is not quantized stays FP32 (ModelOpt's ``high_precision_dtype="fp32"``):
  the graph runs on ONNX Runtime's CPU kernels for the check against the FP32 graph, and a
  strongly typed TensorRT network built from it computes exactly those types.

Which GEMMs get Q/DQ is a named plan (:data:`engines.plan.QUANT_PLANS`): the block GEMMs are
found by structure (per block, in graph order: qkv, proj, fc1, fc2; the attention core is the
two MatMuls without weights), not by node names. ModelOpt (``modelopt.onnx.quantization``)
calibrates on ONNX Runtime's CPU provider with images read by the model's recorded
preprocessing, and writes the Q/DQ nodes (activations per tensor, weights per output channel and
stored quantized, with a DequantizeLinear only).
ModelOpt is optional and imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from idlevit.chatter import captured
from idlevit.configs import get_arch
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write
from idlevit.images import load_dataset
from idlevit.metadata import ExportMetadata, load_onnx, read_metadata, write_metadata
from idlevit.names import DIGITS, IMAGES, reduced_graph_name

from .plan import ATTENTION, BLOCK_GEMMS, CALIBRATION_METHODS, FP8, INT8, QUANT_PLANS, Quantization, QuantPlan
from .precision import quantizer_label, scoring_path_nodes, source_record
from .tensorrt import is_installed as runtime_installed

QUANT_INSTALL = (
    "pip install -e '.[quant]' (nvidia-modelopt, which needs PyTorch, without its [onnx] extra; onnxslim, lief, "
    "cppimport), or write the Q/DQ graph where ModelOpt is installed and pass it here with --onnx: it builds as it is"
)
#: Calibration images when ``--calib-images`` is not given: the whole digits train split, else this many.
DEFAULT_CALIB_IMAGES = 512
#: Images per calibration batch (ONNX Runtime runs the graph on this many at a time).
CALIB_BATCH = 32
#: ONNX opset of the Q/DQ graphs (ModelOpt's minimum for INT8 and FP8: per-axis Q/DQ, FP8 types).
QDQ_OPSET = 19
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


# ---- which nodes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockGemm:
    """One GEMM of a transformer block: its node, role (qkv, proj, fc1, fc2, attention) and block index."""

    node: str
    role: str
    block: int


def block_gemms(model: onnx.ModelProto, depth: int, scoring: list[str]) -> list[BlockGemm]:
    """The GEMMs of every block, found by structure.

    Weight GEMMs (MatMul/Gemm with a constant second input) outside the scoring path come in
    data-dependent order, four per block (qkv, proj, fc1, fc2), then the head(s); MatMuls of two
    activations outside the scoring path (``scoring``) are the attention core of the block whose
    qkv came last.
    """
    skip = set(scoring)
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    gemms: list[BlockGemm] = []
    weights = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.name in skip:
            continue
        if len(node.input) > 1 and node.input[1] in constants:
            if weights < 4 * depth:
                gemms.append(BlockGemm(node.name, BLOCK_GEMMS[weights % 4], weights // 4))
            weights += 1
        elif weights and weights <= 4 * depth:
            gemms.append(BlockGemm(node.name, ATTENTION, (weights - 1) // 4))
    if weights < 4 * depth or sum(g.role == ATTENTION for g in gemms) != 2 * depth:
        raise ToolkitError(
            f"cannot find the {depth} blocks' GEMMs in the graph ({weights} weight GEMMs, "
            f"{sum(g.role == ATTENTION for g in gemms)} attention MatMuls); export it with `python -m export.onnx`"
        )
    return gemms


def scoring_nodes(model: onnx.ModelProto, meta: ExportMetadata) -> list[str]:
    """The scoring path of every idle layer (none in a dense graph)."""
    return scoring_path_nodes(model) if meta.idle_layers else []


def plan_nodes(model: onnx.ModelProto, meta: ExportMetadata, plan: QuantPlan) -> list[str] | None:
    """Names of the nodes ``plan`` quantizes in ``model`` (None: ModelOpt's own placement)."""
    if plan.modelopt_default:
        return None
    depth = get_arch(meta.arch).depth
    idle = set(meta.idle_layers)
    edge = plan.fp32_edge_blocks
    return [
        gemm.node
        for gemm in block_gemms(model, depth, scoring_nodes(model, meta))
        if edge <= gemm.block < depth - edge and gemm.role in plan.roles_for(gemm.block in idle)
    ]


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes (other than Q/DQ) that read a DequantizeLinear output: what the graph computes from quantized values."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.op_type not in _QDQ_OPS and any(name in dequantized for name in node.input)
    ]


def check_scoring_path_unquantized(model: onnx.ModelProto, scoring: list[str]) -> None:
    """Every scoring-path node is present and reads no DequantizeLinear output (no Q/DQ reaches the scores)."""
    present = {node.name for node in model.graph.node}
    missing = [name for name in scoring if name not in present]
    touched = sorted(set(scoring) & set(quantized_nodes(model)))
    if missing or touched:
        what = f"lost scoring-path nodes {missing[:3]}" if missing else f"quantized scoring-path nodes {touched[:3]}"
        raise ToolkitError(
            f"the quantized graph {what}; the scoring path must stay FP32 (please report this with the ONNX file)"
        )


# ---- calibration data ------------------------------------------------------------------------
def calibration_images(
    meta: ExportMetadata, data: str | os.PathLike[str] = DIGITS, count: int | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Normalised calibration images (N, 3, H, W) and where they came from (e.g. ``digits:train``).

    The train split of the digits or of an ImageFolder (ROOT/train when present, else ROOT), read
    with the graph's recorded preprocessing. ``count`` images are drawn with ``seed``; the
    default is the whole digits train split, or :data:`DEFAULT_CALIB_IMAGES` of a folder.
    """
    if count is not None and count < 1:
        raise ToolkitError(f"--calib-images {count} must be >= 1")
    dataset = load_dataset(data, "train", meta.input_config)
    source = f"{DIGITS}:train" if str(data) == DIGITS else os.fspath(data)
    if len(dataset) == 0:
        raise ToolkitError(f"calibration data {source!r} holds no images; point --calib-data at an ImageFolder")
    wanted = count or (len(dataset) if str(data) == DIGITS else DEFAULT_CALIB_IMAGES)
    picks = np.sort(np.random.default_rng(seed).permutation(len(dataset))[: min(wanted, len(dataset))])
    images = np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in picks])
    if images.shape[1:] != (3, meta.img_size, meta.img_size):
        raise ToolkitError(
            f"calibration images from {source!r} have shape {images.shape[1:]} but the graph takes "
            f"(3, {meta.img_size}, {meta.img_size})"
        )
    return images, source


# ---- quantization ------------------------------------------------------------------------------
def quantized_onnx_path(onnx_path: str | os.PathLike[str], precision: str, out_dir: Path | None = None) -> Path:
    """``model.onnx`` -> ``model_int8.onnx`` / ``model_fp8.onnx`` beside it (or in ``out_dir``)."""
    source = Path(onnx_path)
    return (out_dir or source.parent) / reduced_graph_name(source.stem, precision)


def quantize_onnx(
    onnx_path: str | os.PathLike[str],
    precision: str = INT8,
    plan: str = "all",
    *,
    images: np.ndarray,
    calibration: str = "",
    method: str = "max",
) -> tuple[onnx.ModelProto, Quantization]:
    """The Q/DQ graph of ``onnx_path`` for ``plan``, calibrated on ``images``, and what was done.

    The scoring path is excluded from ModelOpt's placement and checked afterwards; the IdleViT
    metadata is carried over with ``precision``, the opset and the quantization recorded.
    """
    if precision not in (INT8, FP8):
        raise ToolkitError(f"precision {precision!r} is not a quantized one; choose int8 or fp8")
    if plan not in QUANT_PLANS:
        raise ToolkitError(f"unknown quantization plan {plan!r}; choose one of: {', '.join(QUANT_PLANS)}")
    if method not in CALIBRATION_METHODS:
        raise ToolkitError(f"unknown calibration method {method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}")
    quantize = _modelopt_quantize()
    meta = read_metadata(onnx_path)
    if meta.precision != "fp32":
        raise ToolkitError(
            f"{os.fspath(onnx_path)} is already an {meta.precision} graph; quantize the FP32 export of "
            "`python -m export.onnx`"
        )
    model = load_onnx(onnx_path)
    scoring = scoring_nodes(model, meta)
    chosen = plan_nodes(model, meta, QUANT_PLANS[plan])
    if chosen == []:
        raise ToolkitError(f"plan {plan!r} quantizes no node of this {meta.arch} graph; choose another --int8-plan")
    batch = min(CALIB_BATCH, len(images))
    with tempfile.TemporaryDirectory(prefix="idlevit-quantize-") as tmp:
        source, out = Path(tmp, "source.onnx"), Path(tmp, f"quantized_{precision}.onnx")
        onnx.save(model, source)  # ModelOpt writes its intermediate files beside its input
        with _quiet():
            quantize(
                os.fspath(source),
                quantize_mode=precision,
                calibration_data={IMAGES: images[: len(images) // batch * batch]},
                calibration_method=method,
                calibration_shapes=f"{IMAGES}:{batch}x3x{meta.img_size}x{meta.img_size}",
                calibration_eps=["cpu"],
                nodes_to_quantize=None if chosen is None else [f"^{re.escape(name)}$" for name in chosen],
                nodes_to_exclude=[f"^{re.escape(name)}$" for name in scoring] or None,
                high_precision_dtype="fp32",
                dq_only=True,  # weights stored quantized (INT8 / FP8 initializers + DequantizeLinear): 1/3 the file
                output_path=os.fspath(out),
                log_level="ERROR",
                opset=QDQ_OPSET,
                # ModelOpt drops Q/DQ from GEMMs it finds to be GEMVs on TensorRT; the plan names its GEMMs itself
                enable_gemv_detection_for_trt=chosen is None,
            )
        if not out.is_file():
            raise ToolkitError(
                f"ModelOpt wrote no quantized graph for {os.fspath(onnx_path)}; check the calibration data and ModelOpt"
            )
        quantized = onnx.load(os.fspath(out))
    check_scoring_path_unquantized(quantized, scoring)
    record = Quantization(
        plan=plan,
        calibration=calibration,
        calibration_images=len(images[: len(images) // batch * batch]),
        calibration_method=method,
        quantized_nodes=len(quantized_nodes(quantized)),
        excluded_nodes=list(scoring),
        quantizer=quantizer_label(),
    )
    meta.precision = precision
    meta.opset = next(op.version for op in quantized.opset_import if op.domain in ("", "ai.onnx"))
    meta.extra = {**meta.extra, "quantization": record.to_dict(), **source_record(onnx_path)}
    write_metadata(quantized, meta)
    return quantized, record


def write_quantized_onnx(model: onnx.ModelProto, out: str | os.PathLike[str]) -> Path:
    with atomic_write(out) as handle:
        handle.write(model.SerializeToString())
    return Path(out)


def recorded_quantization(meta: ExportMetadata) -> Quantization | None:
    """The quantization a Q/DQ graph's metadata records (None for an unquantized graph)."""
    record = meta.extra.get("quantization")
    if not isinstance(record, dict):
        return None
    try:
        return Quantization(**record)
    except TypeError:
        return None


def quantize_summary(record: Quantization, precision: str, seconds: float) -> str:
    return (
        f"{precision.upper()} plan {record.plan}: {record.quantized_nodes} nodes quantized, "
        f"{len(record.excluded_nodes)} scoring-path nodes kept FP32, calibrated ({record.calibration_method}) on "
        f"{record.calibration_images} images of {record.calibration} in {seconds:.1f} s"
    )


def require_modelopt() -> None:
    """Exit 3 with the extra to install when ModelOpt's quantization cannot be imported."""
    _modelopt_quantize()


def _modelopt_quantize():  # noqa: ANN202 - ModelOpt's own function
    try:
        import modelopt.onnx.trt_utils as trt_utils  # lazy: ModelOpt is optional
        from modelopt.onnx.quantization import quantize  # lazy: as above
    except ImportError as err:
        raise MissingDependencyError(f"ModelOpt quantization is not importable ({err}); {QUANT_INSTALL}") from None
    # tensorrt-stubs installs an importable ``tensorrt`` namespace without the library; ModelOpt would take
    # it for TensorRT and call into it, so tell it the truth
    trt_utils.TRT_PYTHON_AVAILABLE = runtime_installed("tensorrt")
    return quantize


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ModelOpt and ONNX Runtime's calibrator print progress bars and notes, from Python and C++; keep them off
    the terminal (:func:`idlevit.chatter.captured`: replayed if the step fails)."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    loggers = [logging.getLogger(name) for name in ("modelopt", "root")]
    levels = [lg.level for lg in loggers]
    try:
        with captured(step="ModelOpt's quantization"):
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
