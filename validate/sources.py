"""What a check compares against, found from what an artefact records: no PyTorch needed to find it.

* the checkpoint an export records (file name and sha256 in its metadata), for the PyTorch reference;
* the FP32 graph a reduced-precision graph (FP16 mixed, INT8 / FP8 Q/DQ) was made from (file name
  and sha256 in its metadata), for the ONNX reference of :mod:`validate.reduced`.

Each is found by :func:`idlevit.fileio.find_recorded_file` (beside the artefact, then in the working
directory) and used only when its sha256 is the recorded one, so a check never compares an artefact
with another model than its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.plan import FP32
from idlevit.bundled import DEMO_CHECKPOINT, resolve_checkpoint_path
from idlevit.errors import CheckpointError, ToolkitError, missing_torch_package
from idlevit.fileio import find_recorded_file, sha256_file
from idlevit.metadata import ExportMetadata, read_metadata


def recorded_checkpoint(meta: ExportMetadata, onnx_path: str | os.PathLike[str]) -> Path:
    """The checkpoint ``onnx_path`` was exported from, as its metadata records it (file name and sha256).

    The bundled demo stands for itself; a file is looked up by its name beside the graph, then in the
    working directory, and used only when its sha256 is the recorded one, so a check never compares a
    graph with another model than its own.
    """
    where = os.fspath(onnx_path)
    if meta.checkpoint == "random-init":
        raise CheckpointError(f"{where} was exported from random weights (--random-init); pass --ckpt to compare it")
    if meta.checkpoint == "demo":
        return DEMO_CHECKPOINT
    if not meta.checkpoint_sha256:
        raise CheckpointError(f"{where} records no sha256 of its checkpoint {meta.checkpoint!r}; pass --ckpt")
    lookup = find_recorded_file(meta.checkpoint, meta.checkpoint_sha256, [Path(onnx_path).parent, Path(".")])
    if lookup.found is not None:
        return lookup.found
    if lookup.changed is not None:
        raise CheckpointError(
            f"{os.fspath(lookup.changed)} changed since {where} was exported from it (sha256 differs from the "
            f"recorded {meta.checkpoint_sha256[:12]}...); pass --ckpt"
        )
    raise CheckpointError(
        f"the checkpoint {where} was exported from ({meta.checkpoint}) is neither beside it nor in the working "
        "directory; pass --ckpt"
    )


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
    """The FP32 graph a reduced-precision graph was made from, as its metadata records it (file name and sha256).

    Looked up by its name beside the reduced graph, then in the working directory (graphs written before
    names were recorded: at the recorded path first); used only when its sha256 is the recorded one.
    """
    meta = meta or read_metadata(onnx_path)
    where = os.fspath(onnx_path)
    recorded, digest = meta.extra.get("source_onnx"), meta.extra.get("source_onnx_sha256")
    if not isinstance(recorded, str) or not isinstance(digest, str) or not recorded or not digest:
        raise ToolkitError(f"{where} does not record the FP32 graph it was made from; {fix}")
    lookup = find_recorded_file(recorded, digest, [Path(onnx_path).parent, Path(".")])
    if lookup.found is not None:
        return lookup.found
    if lookup.changed is not None:
        raise ToolkitError(
            f"{os.fspath(lookup.changed)} changed since {where} was made from it (sha256 differs from the recorded "
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
