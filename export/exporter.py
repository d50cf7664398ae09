"""Trace an IdleViT to ONNX, clean the graph with onnx-graphsurgeon, check it, stamp metadata.

The steps follow TensorRT's ``create_onnx.py`` samples: trace -> graph-surgeon clean-up
(constant folding, cleanup, toposort, readable I/O names) -> ONNX checker (full) and shape
inference -> metadata -> atomic write -> a quick ONNX Runtime check against PyTorch.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from tqdm import tqdm

import idlevit
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write
from idlevit.model import IMAGES, IdleViT

from .metadata import ExportMetadata, write_metadata

#: Opsets whose export is tested; TopK/GatherElements/ScatterElements all exist from 11 on.
SUPPORTED_OPSETS = range(13, 21)
DEFAULT_OPSET = 17
#: Ops that must never appear: they break static shapes, batch-dynamism or TensorRT support.
FORBIDDEN_OPS = frozenset({"ScatterND", "NonZero", "Loop", "If"})


@dataclass
class ExportSummary:
    """What the post-export ONNX Runtime check measured against the PyTorch reference."""

    batch: int
    max_abs_error: float
    top1_agreement: float
    kept_token_agreement: float | None  # None when the graph has no index outputs

    def __str__(self) -> str:
        kept = (
            "n/a (export with --with-indices)"
            if self.kept_token_agreement is None
            else (f"{self.kept_token_agreement:.2%}")
        )
        return (
            f"ONNX Runtime vs PyTorch on a random batch of {self.batch}: max abs logit error "
            f"{self.max_abs_error:.2e}, top-1 agreement {self.top1_agreement:.0%}, kept-token agreement {kept}"
        )


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
) -> ExportSummary | None:
    """Export ``model`` to ``out`` and check it; returns the ONNX Runtime summary (None if skipped)."""
    steps = ["trace", "clean", "check", "write", "verify"] if verify_batch else ["trace", "clean", "check", "write"]
    bar = tqdm(steps, desc="export", unit="step", disable=not progress, leave=False)
    summary = None
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
            summary = verify_against_reference(model, out, verify_batch if not batch else batch, with_indices)
    return summary


def _fuse_plugin(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from plugins.idle_scatter.graph_pass import fuse_idle_scatter
    except ImportError as err:
        raise ToolkitError(f"the fused-scatter graph pass is unavailable ({err}); export without --plugin") from None
    idle_layers = sum(node.op_type == "TopK" for node in proto.graph.node)  # one TopK per idle layer
    fused, count = fuse_idle_scatter(proto)
    if count != idle_layers:
        raise ToolkitError(f"--plugin fused {count} scatters but the graph has {idle_layers} idle layers")
    return fused


def verify_against_reference(
    model: IdleViT, onnx_path: str | os.PathLike[str], batch: int, with_indices: bool, seed: int = 0
) -> ExportSummary:
    """Run the written ONNX in ONNX Runtime (CPU) and the PyTorch reference on one random batch."""
    from validate.metrics import kept_token_agreement, max_abs_error, top1_agreement
    from validate.ort import create_session

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, model.cfg.img_size, model.cfg.img_size, generator=generator)
    with torch.no_grad():
        ref_logits, ref_kept = model.eval().forward_with_indices(images)
    outputs = create_session(onnx_path).run(None, {IMAGES: images.numpy()})
    kept = None
    if with_indices:
        kept = float(
            np.mean(
                [
                    kept_token_agreement(ref_kept[layer].numpy(), got)
                    for layer, got in zip(model.schedule.idle_layers, outputs[1:], strict=True)
                ]
            )
        )
    return ExportSummary(
        batch, max_abs_error(ref_logits.numpy(), outputs[0]), top1_agreement(ref_logits.numpy(), outputs[0]), kept
    )


def default_output_path(checkpoint: str | os.PathLike[str] | None, arch: str) -> Path:
    """``foo.pth`` -> ``foo.onnx`` beside it; the bundled demo or random-init -> the working directory."""
    if checkpoint is None:
        return Path(f"idlevit_{arch}_random.onnx")
    if str(checkpoint) == "demo":
        return Path(idlevit.DEMO_CHECKPOINT.with_suffix(".onnx").name)
    return Path(checkpoint).with_suffix(".onnx")
