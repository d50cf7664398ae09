"""What a check compares against, found from what an artefact records: no PyTorch needed to find it.

* the checkpoint an export records (path and sha256 in its metadata), for the PyTorch reference;
* the FP32 graph a reduced-precision graph (FP16 mixed, INT8 / FP8 Q/DQ) was made from (path and
  sha256 in its metadata), for the ONNX reference of :mod:`validate.reduced`.

Each is used only while it is where the artefact says and unchanged, so a check never compares
an artefact with another model than its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.plan import FP32
from idlevit.bundled import DEMO_CHECKPOINT, resolve_checkpoint_path
from idlevit.errors import CheckpointError, ToolkitError, missing_torch_package
from idlevit.fileio import sha256_file
from idlevit.metadata import ExportMetadata, read_metadata


def recorded_checkpoint(meta: ExportMetadata, onnx_path: str | os.PathLike[str]) -> Path:
    """The checkpoint ``onnx_path`` was exported from, as its metadata records it (path and sha256).

    The bundled demo stands for itself; a file is used only while it is where the export read it
    and unchanged, so a check never compares a graph with another model than its own.
    """
    where = os.fspath(onnx_path)
    if meta.checkpoint == "random-init":
        raise CheckpointError(f"{where} was exported from random weights (--random-init); pass --ckpt to compare it")
    path = DEMO_CHECKPOINT if meta.checkpoint == "demo" else Path(meta.checkpoint_path)
    if not meta.checkpoint_path and meta.checkpoint != "demo":
        raise CheckpointError(f"{where} does not record where its checkpoint {meta.checkpoint!r} was; pass --ckpt")
    if not path.is_file():
        raise CheckpointError(
            f"the checkpoint {where} was exported from ({os.fspath(path)}) is not there any more; pass --ckpt"
        )
    if meta.checkpoint_sha256 and sha256_file(path) != meta.checkpoint_sha256:
        raise CheckpointError(
            f"{os.fspath(path)} changed since {where} was exported from it (sha256 differs); pass --ckpt"
        )
    return path


def reference_checkpoint(onnx_path: str | os.PathLike[str], ckpt: str | os.PathLike[str] | None) -> Path:
    """``ckpt`` (``'demo'``: the bundled demo), else the checkpoint ``onnx_path`` records it was exported from."""
    if ckpt:
        return resolve_checkpoint_path(ckpt)
    return recorded_checkpoint(read_metadata(onnx_path), onnx_path)


def recorded_fp32_graph(
    onnx_path: str | os.PathLike[str],
    meta: ExportMetadata | None = None,
    fix: str = "pass --reference-onnx with the FP32 graph it was made from",
) -> Path:
    """The FP32 graph a reduced-precision graph was made from, as its metadata records it (path and sha256).

    Looked up where it was when the reduced graph was written, then under its name beside the reduced
    graph (a folder copied to another machine); used only when its sha256 is the recorded one.
    """
    meta = meta or read_metadata(onnx_path)
    where = os.fspath(onnx_path)
    recorded, digest = meta.extra.get("source_onnx"), meta.extra.get("source_onnx_sha256")
    if not isinstance(recorded, str) or not isinstance(digest, str) or not recorded or not digest:
        raise ToolkitError(f"{where} does not record the FP32 graph it was made from; {fix}")
    candidates = list(dict.fromkeys([Path(recorded), Path(onnx_path).parent / Path(recorded).name]))
    present = [path for path in candidates if path.is_file()]
    for path in present:
        if sha256_file(path) == digest:
            return path
    if present:
        raise ToolkitError(
            f"{os.fspath(present[0])} changed since {where} was made from it (sha256 differs from the recorded "
            f"{digest[:12]}...); {fix}"
        )
    raise ToolkitError(f"the FP32 graph {where} was made from ({recorded}) is not there any more; {fix}")


def check_reference_graph(
    reference: ExportMetadata,
    meta: ExportMetadata,
    reference_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
) -> None:
    """Refuse a reference graph that cannot judge ``onnx_path``: not FP32, another model, other inputs, or
    (when ``onnx_path`` records its FP32 source) not that source by sha256."""
    ref, where = os.fspath(reference_path), os.fspath(onnx_path)
    if reference.precision != FP32:
        raise ToolkitError(
            f"the reference {ref} is an {reference.precision} graph; the reference must be the FP32 export"
        )
    fields = ("arch", "idle_layers", "keep_tokens", "img_size", "num_classes", "input_config")
    differ = [name for name in fields if getattr(reference, name) != getattr(meta, name)]
    if differ:
        raise ToolkitError(
            f"the reference {ref} is another model than {where} (their {', '.join(differ)} differ); "
            "pass the FP32 graph it was made from"
        )
    digest = meta.extra.get("source_onnx_sha256")
    if isinstance(digest, str) and digest and sha256_file(reference_path) != digest:
        raise ToolkitError(
            f"{ref} is not the FP32 graph {where} was made from (sha256 differs from the recorded {digest[:12]}...); "
            "pass that graph, or rebuild the reduced graph from this one with `python -m export.trt`"
        )


def reference_graph(
    onnx_path: str | os.PathLike[str],
    reference_onnx: str | os.PathLike[str] | None,
    ckpt: str | os.PathLike[str] | None,
    engine: str | os.PathLike[str] | None,
) -> Path | None:
    """The FP32 graph parity judges ``onnx_path`` (and ``engine``) against; None: the PyTorch model.

    ``--reference-onnx`` names it; ``--ckpt`` asks for PyTorch; a reduced-precision graph is judged
    against the FP32 graph it records; an engine, where PyTorch is not installed, against ``onnx_path``
    itself (the FP32 ONNX it was built from: "engine vs its ONNX").
    """
    if reference_onnx and ckpt:
        raise ToolkitError(
            "--ckpt (the PyTorch model) and --reference-onnx (an FP32 graph) name two references; pass one"
        )
    if reference_onnx:
        return Path(reference_onnx)
    if ckpt:
        return None
    meta = read_metadata(onnx_path)
    if meta.precision != FP32:
        return recorded_fp32_graph(onnx_path, meta)
    if engine is not None and missing_torch_package():
        return Path(onnx_path)
    return None
