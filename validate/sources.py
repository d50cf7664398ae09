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

from idlevit.bundled import DEMO_CHECKPOINT, resolve_checkpoint_path
from idlevit.errors import CheckpointError
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


