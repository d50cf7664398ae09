"""Trace an IdleViT to ONNX, clean the graph with onnx-graphsurgeon, check it, stamp metadata.

The steps follow TensorRT's ``create_onnx.py`` samples: trace -> graph-surgeon clean-up
(constant folding, cleanup, toposort, readable I/O names) -> ONNX checker (full) and shape
inference -> metadata -> atomic write -> a parity run of the written file against PyTorch
(:mod:`validate.judge`, FP32 thresholds), which fails the export when it does not hold.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import torch

import idlevit
from engines.plan import FP32
from idlevit.cli import progress as progress_bar
from idlevit.errors import CheckFailed, ToolkitError
from idlevit.fileio import atomic_write, sha256_file
from idlevit.metadata import ExportMetadata, write_metadata
from idlevit.model import IdleViT
from idlevit.names import IMAGES
from plugins.idle_scatter.graph_pass import fuse_idle_scatter
from validate.inputs import InputSpec
from validate.judge import run_parity
from validate.report import ParityReport

from .contract import DEFAULT_OPSET, FORBIDDEN_OPS, SUPPORTED_OPSETS


def trace(
    model: IdleViT, opset: int = DEFAULT_OPSET, batch: int | None = None, with_indices: bool = False
) -> onnx.ModelProto:
    """Trace the export forward to an ONNX model (dynamic batch unless ``batch`` is given).

    The example batch is at least 2 so the tracer cannot specialise the batch to 1.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ToolkitError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    module = model.export_module(with_indices)
    size = model.cfg.img_size
    example = torch.randn(batch or 2, 3, size, size)
    outputs = model.output_names(with_indices)
    dynamic = None if batch else {name: {0: "batch"} for name in [IMAGES, *outputs]}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[IMAGES],
            output_names=outputs,
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, drop dead nodes, sort topologically (onnx-graphsurgeon)."""
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    cleaned.ir_version = model.ir_version
    return cleaned


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX checker (full) and strict shape inference; refuse graphs holding forbidden ops."""
    forbidden = sorted({n.op_type for n in model.graph.node} & FORBIDDEN_OPS)
    if forbidden:
        raise ToolkitError(f"exported graph holds forbidden ops {forbidden}; this is a toolkit bug, please report it")
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def build_metadata(
    model: IdleViT, opset: int, batch: int | None, with_indices: bool, checkpoint: str, checkpoint_sha256: str
) -> ExportMetadata:
    cfg, schedule = model.cfg, model.schedule
    return ExportMetadata(
        arch=cfg.name,
        idle_layers=list(schedule.idle_layers),
        keep_ratios=list(schedule.keep_ratios),
        keep_tokens=list(schedule.keep_tokens(cfg.num_tokens)),
        num_tokens=cfg.num_tokens,
        img_size=cfg.img_size,
        num_classes=cfg.num_classes,
        mean=list(cfg.mean),
        std=list(cfg.std),
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        opset=opset,
        toolkit_version=idlevit.__version__,
        checkpoint=checkpoint,
        checkpoint_sha256=checkpoint_sha256,
        with_indices=with_indices,
        batch=batch or 0,
    )


def export_onnx(
    model: IdleViT,
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    with_indices: bool = False,
    plugin: bool = False,
    checkpoint: str = "random-init",
    checkpoint_sha256: str = "",
    verify_batch: int = 3,
    progress: bool = True,
) -> ParityReport | None:
    """Export ``model`` to ``out``, then judge the file against the model; returns the verdict (None if skipped).

    The check is a parity run (ONNX Runtime on the CPU against the PyTorch reference, FP32
    thresholds, on ``verify_batch`` seeded random images); when it fails, :class:`CheckFailed`
    names the first failed metric and the file, which is kept for inspection.
    """
    steps = ["trace", "clean", "check", "write", "verify"] if verify_batch else ["trace", "clean", "check", "write"]
    bar = progress_bar(steps, enabled=progress, desc="export", unit="step", leave=False)
    report = None
    for step in bar:
        bar.set_postfix_str(step)
        if step == "trace":
            proto = trace(model, opset, batch, with_indices)
        elif step == "clean":
            proto = clean(proto)
            if plugin:
                proto = _fuse_plugin(proto)
        elif step == "check":
            proto = check(proto)
            meta = build_metadata(model, opset, batch, with_indices, checkpoint, checkpoint_sha256)
            if plugin:
                meta.plugin = "idlevit::IdleScatter"
            write_metadata(proto, meta)
        elif step == "write":
            with atomic_write(out) as handle:
                handle.write(proto.SerializeToString())
        elif step == "verify":
            report = verify_against_reference(model, out, batch or verify_batch)
    bar.close()
    return report


def _fuse_plugin(proto: onnx.ModelProto) -> onnx.ModelProto:
    idle_layers = sum(node.op_type == "TopK" for node in proto.graph.node)  # one TopK per idle layer
    fused, count = fuse_idle_scatter(proto)
    if count != idle_layers:
        raise ToolkitError(f"--plugin fused {count} scatters but the graph has {idle_layers} idle layers")
    return fused


def verify_against_reference(
    model: IdleViT, onnx_path: str | os.PathLike[str], batch: int, seed: int = 0
) -> ParityReport:
    """Judge the written ONNX (ONNX Runtime, CPU) against the PyTorch model on one seeded random batch.

    FP32 thresholds (logit error, cosine, top-1, and the kept tokens when the graph exports
    them); NaN or Inf logits fail. Raises :class:`CheckFailed` on the first failed metric.
    """
    inputs = InputSpec(data=None, random_batches=1, batch_sizes=(batch,), seed=seed)
    report = run_parity(onnx_path, model, inputs=inputs, precision=FP32, ort="cpu", progress=False)
    if not report.passed:
        raise CheckFailed(
            f"the exported graph does not compute the model: {report.failures[0]}; "
            f"{os.fspath(onnx_path)} is kept for inspection"
        )
    return report


def verdict_line(report: ParityReport) -> str:
    """One line for the command's output: what the export check measured."""
    row = report.rows[0]
    kept = (
        f"kept-token agreement {min(sel.agreement for sel in row.selection.values()):.2%} (worst idle layer)"
        if row.selection
        else "kept tokens not checked (export with --with-indices)"
    )
    return (
        f"ONNX Runtime vs PyTorch on {row.samples} seeded random images (FP32 thresholds): max abs logit error "
        f"{row.max_abs:.2e}, top-1 agreement {row.top1_agreement:.0%}, {kept}: {'PASS' if row.passed else 'FAIL'}"
    )


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    path: Path
    model: IdleViT
    report: ParityReport | None  # None when the check was skipped
    seconds: float


def export_checkpoint(
    ckpt: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    random_init: bool = False,
    keep_rate: float | None = None,
    idle_layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
    img_size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    with_indices: bool = False,
    plugin: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> ExportResult:
    """``python -m export.onnx`` as a function: load (or create) the model, export it, judge the file.

    ``ckpt`` ``None`` or ``"demo"`` is the bundled demo; ``random_init`` builds ``arch`` with
    random weights instead. The schedule comes from ``keep_rate`` or the explicit lists.
    """
    started = time.perf_counter()
    if batch is not None and batch < 1:
        raise ToolkitError(f"--batch {batch} must be >= 1 (omit it for a dynamic batch)")
    if random_init and ckpt:
        raise ToolkitError("give either --ckpt or --random-init, not both")
    schedule = {"keep_rate": keep_rate, "idle_layers": idle_layers, "keep_ratios": keep_ratios}
    if random_init:
        if not arch:
            raise ToolkitError("--random-init needs --arch (one of: " + ", ".join(idlevit.list_archs()) + ")")
        overrides = {"img_size": img_size} if img_size else {}
        model = idlevit.create_model(arch, **schedule, **overrides).eval()
        ckpt_name, ckpt_sha = "random-init", ""
    else:
        ckpt_path = idlevit.resolve_checkpoint_path(ckpt)
        model = idlevit.load_checkpoint(ckpt_path, arch=arch, **schedule)
        if img_size and img_size != model.cfg.img_size:
            raise ToolkitError(
                f"--img-size {img_size} differs from the checkpoint's {model.cfg.img_size} px "
                "(its position embedding fixes it); omit --img-size"
            )
        ckpt_name, ckpt_sha = ("demo" if ckpt in (None, "demo") else ckpt_path.name), sha256_file(ckpt_path)
    path = Path(out) if out else default_output_path(None if random_init else (ckpt or "demo"), model.cfg.name)
    report = export_onnx(
        model,
        path,
        opset=opset,
        batch=batch,
        with_indices=with_indices,
        plugin=plugin,
        checkpoint=ckpt_name,
        checkpoint_sha256=ckpt_sha,
        verify_batch=3 if verify else 0,
        progress=progress,
    )
    return ExportResult(path, model, report, time.perf_counter() - started)


def default_output_path(checkpoint: str | os.PathLike[str] | None, arch: str) -> Path:
    """``foo.pth`` -> ``foo.onnx`` beside it; the bundled demo or random-init -> the working directory."""
    if checkpoint is None:
        return Path(f"idlevit_{arch}_random.onnx")
    if str(checkpoint) == "demo":
        return Path(idlevit.DEMO_CHECKPOINT.with_suffix(".onnx").name)
    return Path(checkpoint).with_suffix(".onnx")
