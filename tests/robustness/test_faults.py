"""Fault injection: every command, fed bad input or hit by a fault, ends with the documented exit code,
one line on stderr and no traceback, leaves its inputs byte for byte as they were, and leaves no
temporary or partial file (see :mod:`.harness` for what each case asserts).

Faults are real where this machine allows and faked where it does not; each case that fakes one
says so (``fault=``, through ``faults/sitecustomize.py``):

* output is a folder, a missing parent under a file, a file-size limit (``RLIMIT_FSIZE``), a full
  device (``/dev/full``): real;
* read-only folder: real (``chmod``) when not root, faked as ``EROFS`` for root (root ignores modes);
* disk full while writing a regular file: faked (``ENOSPC`` from ``fsync``; a small full file
  system needs root to mount);
* signals: real ``SIGINT``/``SIGTERM``, sent by the process to itself in the middle of writing an
  output (an injected moment), or from outside while it works;
* an unexpected exception: injected (a library function made to raise).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from idlevit.checkpoint import DEMO_CHECKPOINT
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
)
from idlevit.fileio import sha256_file
from idlevit.metadata import read_metadata

from .harness import DROP, Assets, Case, command_env, fake_engine, one_line, param, run_case, run_signalled

EXPORT = ("--quiet", "--no-verify", "--exporter", "torchscript")  # the faster exporter: the faults are elsewhere
PARITY = ("--num-images", "0", "--random-batches", "1", "--batch-sizes", "1", "--ort", "cpu", "--quiet")
ACCURACY = ("--limit", "4", "--batch-size", "4", "--ort", "cpu", "--quiet")

Make = Callable[[Path, Assets], None]


# --- what cases put in their scratch folder ------------------------------------------------------


def steps(*makers: Make) -> Make:
    def make(scratch: Path, assets: Assets) -> None:
        for maker in makers:
            maker(scratch, assets)

    return make


def onnx_as(name: str) -> Make:
    return lambda scratch, assets: shutil.copyfile(assets.onnx, scratch / name)


def ckpt_as(name: str) -> Make:
    return lambda scratch, assets: shutil.copyfile(assets.ckpt, scratch / name)


def write_bytes(name: str, content: bytes) -> Make:
    return lambda scratch, assets: (scratch / name).write_bytes(content)


def truncated(name: str, source: str, keep: int) -> Make:
    def make(scratch: Path, assets: Assets) -> None:
        data = getattr(assets, source).read_bytes()
        (scratch / name).write_bytes(data[:keep])

    return make


def folder(name: str) -> Make:
    return lambda scratch, assets: (scratch / name).mkdir(parents=True)


def symlink(name: str, target: str) -> Make:
    return lambda scratch, assets: (scratch / name).symlink_to(target)


def moved(name: str, to: str) -> Make:
    return lambda scratch, assets: (scratch / name).rename(scratch / to)


def hardlink(name: str, target: str) -> Make:
    return lambda scratch, assets: os.link(scratch / target, scratch / name)


def ckpt_edited(name: str, edit: Callable[[dict], None]) -> Make:
    """The demo checkpoint with ``edit`` applied to its loaded dict, saved by torch.save."""

    def make(scratch: Path, assets: Assets) -> None:
        raw = torch.load(assets.ckpt, weights_only=True)
        raw["model"] = {k: v.clone() for k, v in raw["model"].items()}
        edit(raw)
        torch.save(raw, scratch / name)

    return make


def poison(key: str, value: float) -> Callable[[dict], None]:
    def edit(raw: dict) -> None:
        raw["model"][key].view(-1)[3] = value

    return edit


def set_tensor(**tensors: torch.Tensor) -> Callable[[dict], None]:
    return lambda raw: raw["model"].update({k.replace("__", "."): v for k, v in tensors.items()})


class _RunsCode:
    """Pickles to a call of os.system: what a malicious checkpoint does."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("touch pwned",))


def onnx_with_metadata(name: str, **fields: str | None) -> Make:
    """The demo ONNX with ``idlevit.<field>`` entries replaced by raw text (None: removed)."""

    def make(scratch: Path, assets: Assets) -> None:
        model = onnx.load(assets.onnx)
        props = {p.key: p.value for p in model.metadata_props}
        for key, value in fields.items():
            if value is None:
                props.pop("idlevit." + key, None)
            else:
                props["idlevit." + key] = value
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, scratch / name)

    return make


def relu_with_copied_metadata(name: str) -> Make:
    """A one-Relu graph carrying the demo export's ``idlevit.*`` metadata: not the graph it describes."""

    def make(scratch: Path, assets: Assets) -> None:
        source = onnx.load(assets.onnx)
        node = onnx.helper.make_node("Relu", ["images"], ["logits"], name="relu")
        value = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph(
            [node],
            "relu",
            [value("images", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32])],
            [value("logits", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32])],
        )
        model = onnx.helper.make_model(graph, opset_imports=list(source.opset_import))
        for prop in source.metadata_props:
            model.metadata_props.add(key=prop.key, value=prop.value)
        onnx.save(model, scratch / name)

    return make


def onnx_external(name: str, location: str | None = None, keep_data: bool = True) -> Make:
    """The demo ONNX with its weights in an external data file ``<name>.data``; ``location`` rewrites where
    the graph says the file is, ``keep_data=False`` leaves the file out."""

    def make(scratch: Path, assets: Assets) -> None:
        model = onnx.load(assets.onnx)
        data = name + ".data"
        onnx.save(model, scratch / name, save_as_external_data=True, location=data, size_threshold=1024)
        if location is not None:
            model = onnx.load(scratch / name, load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
            onnx.save(model, scratch / name)
        if not keep_data:
            (scratch / data).unlink()

    return make


def onnx_input_renamed(name: str, new: str) -> Make:
    """The demo ONNX whose input ``images`` is called ``new`` (every node that reads it follows)."""

    def make(scratch: Path, assets: Assets) -> None:
        model = onnx.load(assets.onnx)
        model.graph.input[0].name = new
        for node in model.graph.node:
            node.input[:] = [new if value == "images" else value for value in node.input]
        onnx.save(model, scratch / name)

    return make


def onnx_without_metadata(name: str) -> Make:
    def make(scratch: Path, assets: Assets) -> None:
        model = onnx.load(assets.onnx)
        del model.metadata_props[:]
        onnx.save(model, scratch / name)

    return make


def _resign(engine: Path) -> None:
    """Record the engine file's current sha256 in its sidecar (a sidecar that tells the truth about it)."""
    sidecar = engine.with_name(engine.name + ".json")
    data = json.loads(sidecar.read_text())
    data["engine_sha256"] = sha256_file(engine)
    sidecar.write_text(json.dumps(data))


def fake_engine_meta(name: str, **changes: object) -> Make:
    def make(scratch: Path, assets: Assets) -> None:
        meta = asdict(read_metadata(assets.onnx)) | changes
        fake_engine(name, idlevit=meta)(scratch, assets)

    return make


def image_file(name: str, encode: Callable[[np.ndarray], Image.Image], **save: object) -> Make:
    """The real digit, encoded by ``encode`` from its 8-bit grey pixels, saved as ``name``."""
    return lambda scratch, assets: encode(assets.digit).save(scratch / name, **save)


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _grey_palette(grey: np.ndarray) -> Image.Image:
    image = Image.fromarray(grey, "P")
    image.putpalette([level for index in range(256) for level in (index, index, index)])
    return image


ENCODINGS: dict[str, tuple[str, Callable[[np.ndarray], Image.Image], dict]] = {
    "16-bit-grey-png": ("digit16.png", lambda g: Image.fromarray(g.astype(np.uint16) * 257), {}),
    "float-tiff": ("digitf.tif", lambda g: Image.fromarray(g.astype(np.float32) / 255, "F"), {}),
    "palette-png": ("digitp.png", _grey_palette, {}),
    "rgba-png": ("digita.png", lambda g: Image.fromarray(np.dstack([rgb(g), np.full_like(g, 255)]), "RGBA"), {}),
    "grey-alpha-png": ("digitla.png", lambda g: Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA"), {}),
    "cmyk-jpeg": ("digitc.jpg", lambda g: Image.fromarray(rgb(g)).convert("CMYK"), {"quality": 100}),
}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (no real pixel data: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_folder(*corrupt_first: str) -> Make:
    """``data/val/<digit>/*.png``: real digits in the model's 10 class folders, with a truncated PNG named
    ``corrupt_first`` sorted first."""

    def make(scratch: Path, assets: Assets) -> None:
        for label in map(str, range(10)):
            target = scratch / "data" / "val" / label
            target.mkdir(parents=True)
            for index in range(3):
                Image.fromarray(rgb(assets.digit)).save(target / f"img{index}.png")
        for name in corrupt_first:
            good = (scratch / "data" / "val" / "0" / "img0.png").read_bytes()
            (scratch / "data" / "val" / "0" / name).write_bytes(good[:70])

    return make


# --- the cases, by category -----------------------------------------------------------------------

INPUTS_OVERWRITTEN = [
    Case(
        "parity-report-is-the-onnx",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "m.onnx", *PARITY),
        EXIT_BAD_INPUT,
        "is the input",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-report-is-a-symlink-to-the-onnx",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "is the input",
        steps(onnx_as("m.onnx"), symlink("r.json", "m.onnx")),
    ),
    Case(
        "parity-report-is-a-hard-link-to-the-onnx",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "is the input",
        steps(onnx_as("m.onnx"), hardlink("r.json", "m.onnx")),
    ),
    Case(
        "parity-markdown-beside-the-report-is-the-onnx",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "r.md", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "'r.md' is the input",
        onnx_as("r.md"),
    ),
    Case(
        "parity-report-is-a-symlink-to-the-bundled-demo",  # a rename would replace the link, never the demo
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "is the input",
        steps(onnx_as("m.onnx"), symlink("r.json", os.fspath(DEMO_CHECKPOINT))),
    ),
    Case(
        "parity-report-is-the-engine-sidecar",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "demo.onnx", "--engine", "e.engine", "--report", "e.engine.json", *PARITY),
        EXIT_BAD_INPUT,
        "is the input",
        fake_engine("e.engine"),
    ),
    Case(
        "parity-report-named-md-is-both-reports",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.md", *PARITY),
        EXIT_BAD_INPUT,
        "in one file",
        onnx_as("m.onnx"),
    ),
    Case(
        "accuracy-markdown-beside-the-report-is-the-checkpoint",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--ckpt", "r.md", "--report", "r.json", *ACCURACY),
        EXIT_BAD_INPUT,
        "'r.md' is the input",
        steps(onnx_as("m.onnx"), ckpt_as("r.md")),
    ),
    Case(
        "accuracy-report-is-a-symlink-to-the-checkpoint",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--ckpt", "c.pth", "--report", "r.json", *ACCURACY),
        EXIT_BAD_INPUT,
        "is the input",
        steps(onnx_as("m.onnx"), ckpt_as("c.pth"), symlink("r.json", "c.pth")),
    ),
    Case(
        "export-onnx-out-is-the-checkpoint",
        "export.onnx",
        ("--ckpt", "c.pth", "--out", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "is the input",
        ckpt_as("c.pth"),
    ),
    Case(
        "export-onnx-default-output-would-be-the-checkpoint",  # a checkpoint named .onnx: the graph is c_export.onnx
        "export.onnx",
        ("--ckpt", "c.onnx", *EXPORT),
        EXIT_OK,
        make=ckpt_as("c.onnx"),
        outputs=("c_export.onnx", ".idlevit", ".idlevit/last_export.json"),
        stderr_lines=0,
    ),
    Case(
        "export-trt-out-is-the-onnx",
        "export.trt",
        ("--onnx", "m.onnx", "--out", "m.onnx", "--runtime", "tensorrt-rtx", "--no-check", "--no-trtcheck"),
        EXIT_BAD_INPUT,
        "is the input",
        onnx_as("m.onnx"),
    ),
]

CORRUPT_FILES = [
    Case(
        "checkpoint-truncated",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "truncated",
        truncated("c.pth", "ckpt", 100_000),
    ),
    Case(
        "checkpoint-random-bytes",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "c.pth is not a PyTorch checkpoint",
        write_bytes("c.pth", np.random.default_rng(0).bytes(5000)),
    ),
    Case(
        "checkpoint-is-a-folder",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "is a folder",
        folder("c.pth"),
    ),
    Case(
        "onnx-truncated",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "not an ONNX model",
        steps(truncated("m.onnx", "onnx", 300_000), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "onnx-is-a-checkpoint",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "c.onnx", *PARITY),
        EXIT_BAD_INPUT,
        "c.onnx",
        ckpt_as("c.onnx"),
    ),
    Case(
        "onnx-foreign-graph-with-copied-metadata",
        "export.trt",
        ("--onnx", "m.onnx", "--no-trtcheck"),
        EXIT_BAD_INPUT,
        "does not match its idlevit.* metadata",
        relu_with_copied_metadata("m.onnx"),
    ),
    Case(
        "onnx-is-a-folder",
        "validate.accuracy",
        ("--onnx", "m.onnx", *ACCURACY),
        EXIT_BAD_INPUT,
        "is a folder",
        folder("m.onnx"),
    ),
    Case(
        "sidecar-not-json",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "is not JSON",
        steps(fake_engine("e.engine", raw='{"engine": "e.engine", '), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-missing",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "is missing",
        steps(write_bytes("e.engine", b"serialized engine"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "last-export-record-corrupt",
        "engines.infer",
        ("x.png",),
        EXIT_BAD_INPUT,
        "last-export record",
        steps(
            folder(".idlevit"),
            write_bytes(".idlevit/last_export.json", b"[1, 2]"),
            image_file("x.png", Image.fromarray),
        ),
    ),
]

# issue 21: what a graph's file says and what its graph is (external data, I/O), checked where it is read
CORRUPT_FILES += [
    Case(
        "onnx-external-data-missing",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "keeps its weights in 'm.onnx.data', which is not beside it",
        steps(onnx_external("m.onnx", keep_data=False), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "onnx-external-data-escapes-its-folder",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "in/m.onnx", *PARITY),
        EXIT_BAD_INPUT,
        "which is not a file inside the model's folder",
        steps(folder("in"), onnx_external("m.onnx", location="../m.onnx.data"), moved("m.onnx", "in/m.onnx")),
    ),
    Case(
        "onnx-external-data-truncated",
        "validate.accuracy",
        ("--onnx", "m.onnx", *ACCURACY),
        EXIT_BAD_INPUT,
        "is truncated or belongs to another export",
        steps(onnx_external("m.onnx"), lambda s, a: os.truncate(s / "m.onnx.data", 1000)),
    ),
]

BAD_FIELDS = [
    Case(
        "metadata-img-size-not-the-graphs",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "images has shape (batch, 3, 32, 32), but the metadata (img_size 64",
        steps(onnx_with_metadata("m.onnx", img_size="64"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "metadata-num-classes-not-the-graphs",
        "validate.accuracy",
        ("--onnx", "m.onnx", *ACCURACY),
        EXIT_BAD_INPUT,
        "logits has shape (batch, 10), but the metadata",
        onnx_with_metadata("m.onnx", num_classes="9"),
    ),
    Case(
        "onnx-input-renamed",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "its inputs are ['pixels'], not 'images'",
        steps(onnx_input_renamed("m.onnx", "pixels"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "last-export-record-with-a-50mb-path",
        "engines.infer",
        ("x.png",),
        EXIT_BAD_INPUT,
        "last-export record",
        steps(
            folder(".idlevit"),
            write_bytes(".idlevit/last_export.json", b'{"onnx": "' + b"a" * 50_000_000 + b'"}'),
            image_file("x.png", Image.fromarray),
        ),
    ),
    Case(
        "last-export-record-with-an-overlong-name",  # no such file can exist: nothing recorded
        "engines.infer",
        ("x.png",),
        EXIT_BAD_INPUT,
        "no --onnx or --engine given and no ONNX exported here yet",
        steps(
            folder(".idlevit"),
            write_bytes(".idlevit/last_export.json", b'{"onnx": "' + b"a" * 1000 + b'.onnx"}'),
            image_file("x.png", Image.fromarray),
        ),
    ),
    Case(
        "metadata-not-json",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "metadata field idlevit.keep_tokens is not JSON",
        steps(onnx_with_metadata("m.onnx", keep_tokens="[44, 44"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "metadata-wrong-type",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "field img_size is '32', not an integer",
        steps(onnx_with_metadata("m.onnx", img_size='"32"'), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "metadata-std-zero",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "data_config std is [0, 0, 0]",
        steps(onnx_with_metadata("m.onnx", std="[0, 0, 0]"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "metadata-absent",
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_BAD_INPUT,
        "carries no IdleViT metadata",
        steps(onnx_without_metadata("m.onnx"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-idlevit-is-text",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "field idlevit is 'abc', not an object",
        steps(fake_engine("e.engine", idlevit="abc"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-idlevit-field-mistyped",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "field keep_tokens is 'x', not a list of integers",
        steps(fake_engine_meta("e.engine", keep_tokens="x"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-profiles-text",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "field profiles is 'x', not a list of objects",
        steps(fake_engine("e.engine", profiles="x"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-field-missing",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "lacks the field(s) source_onnx",
        steps(fake_engine("e.engine", source_onnx=DROP), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-is-a-list",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "is a list, not an object",
        steps(fake_engine("e.engine", raw="[1, 2]"), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-other-format",
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "has format 2, not 1",
        steps(fake_engine("e.engine", format=2), image_file("x.png", Image.fromarray)),
    ),
    Case(
        "sidecar-built-from-another-onnx",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "other.onnx", "--engine", "e.engine", *PARITY),
        EXIT_BAD_INPUT,
        "engine e.engine was built from demo.onnx (sha256 ",
        steps(fake_engine("e.engine"), onnx_with_metadata("other.onnx", checkpoint='"other"')),
    ),
    Case(
        "sidecar-onnx-changed-since-the-build",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "demo.onnx", "--engine", "e.engine", *PARITY),
        EXIT_BAD_INPUT,
        "demo.onnx changed after engine e.engine was built from it: sha256 ",
        steps(fake_engine("e.engine", source_onnx_sha256="ab" * 32, onnx_sha256="cd" * 32)),
    ),
]

OUTPUT_ERRORS = [
    Case(
        "parity-report-is-a-folder",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "is a folder",
        steps(onnx_as("m.onnx"), folder("r.json")),
    ),
    Case(
        "accuracy-report-markdown-is-a-folder",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--report", "r.json", *ACCURACY),
        EXIT_BAD_INPUT,
        "'r.md' is a folder",
        steps(onnx_as("m.onnx"), folder("r.md")),
    ),
    Case(
        "export-onnx-out-is-a-folder",
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_BAD_INPUT,
        "'m.onnx' is a folder",
        folder("m.onnx"),
    ),
    Case(
        "export-onnx-out-under-a-file",
        "export.onnx",
        ("--out", "notes.txt/m.onnx", *EXPORT),
        EXIT_BAD_INPUT,
        "cannot write 'notes.txt/m.onnx'",
        write_bytes("notes.txt", b"a file, not a folder\n"),
    ),
    Case(
        "export-onnx-file-size-limit",  # real: RLIMIT_FSIZE of 1 MB against a 6 MB graph
        "export.onnx",
        ("--out", "new/m.onnx", *EXPORT),
        EXIT_BAD_INPUT,
        "File too large",
        fsize=1 << 20,
    ),
    Case(
        "parity-report-on-a-full-device",  # real: /dev/full answers every write with ENOSPC
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "r.json", *PARITY),
        EXIT_BAD_INPUT,
        "No space left on device",
        steps(onnx_as("m.onnx"), symlink("r.json", "/dev/full")),
    ),
    Case(
        "accuracy-report-disk-full",  # faked: ENOSPC while the temporary report is flushed
        "validate.accuracy",
        ("--onnx", "m.onnx", "--report", "r.json", *ACCURACY),
        EXIT_BAD_INPUT,
        "No space left on device",
        onnx_as("m.onnx"),
        fault={"oserror_at_fsync": "ENOSPC"},
    ),
    Case(
        "export-onnx-disk-full",  # faked: ENOSPC while the temporary graph is flushed
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_BAD_INPUT,
        "No space left on device",
        fault={"oserror_at_fsync": "ENOSPC"},
    ),
    Case(
        "state-folder-unwritable-after-the-export",  # real: .idlevit is a file, so no record can be made
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_OK,
        "m.onnx was written, but it could not be recorded as the last export",
        write_bytes(".idlevit", b"not a folder\n"),
        outputs=("m.onnx",),
    ),
]


def _read_only_case() -> Case:
    """Real when not root (chmod 0555); for root, whom modes do not stop, faked as EROFS."""
    root = os.geteuid() == 0

    def make(scratch: Path, assets: Assets) -> None:
        shutil.copyfile(assets.onnx, scratch / "m.onnx")
        (scratch / "ro").mkdir()
        if not root:
            (scratch / "ro").chmod(0o555)

    return Case(
        "parity-report-in-a-read-only-folder" + ("-faked" if root else ""),
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "ro/r.json", *PARITY),
        EXIT_BAD_INPUT,
        "Read-only file system" if root else "Permission denied",
        make,
        fault={"erofs_under": "{scratch}/ro"} if root else None,
    )


OUTPUT_ERRORS.append(_read_only_case())

# issue 21: no file at all may be written (ulimit -f 0: not even the test file that finds a temporary folder),
# and an empty state folder is the default one, not the working directory
OUTPUT_ERRORS += [
    Case(
        "export-onnx-no-file-may-be-written",  # real: RLIMIT_FSIZE 0
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_BAD_INPUT,
        "no usable temporary folder",
        fsize=0,
    ),
    Case(
        "infer-no-file-may-be-written",  # real: classifying reads only, so it needs no file written at all
        "engines.infer",
        ("--onnx", "m.onnx", "x.png"),
        EXIT_OK,
        make=steps(onnx_as("m.onnx"), image_file("x.png", Image.fromarray)),
        stderr_lines=0,
        fsize=0,
    ),
    Case(
        "state-dir-set-but-empty",
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_OK,
        outputs=("m.onnx", ".idlevit", ".idlevit/last_export.json"),
        stderr_lines=0,
        env={"IDLEVIT_STATE_DIR": ""},
    ),
]

BAD_IMAGES = [
    Case(
        "image-truncated",
        "engines.infer",
        ("--onnx", "m.onnx", "cut.png"),
        EXIT_BAD_INPUT,
        "cannot read image 'cut.png'",
        steps(
            onnx_as("m.onnx"),
            image_file("whole.png", Image.fromarray),
            lambda s, a: (s / "cut.png").write_bytes((s / "whole.png").read_bytes()[:80]),
        ),
    ),
    Case(
        "image-is-text",
        "engines.infer",
        ("--onnx", "m.onnx", "notes.png"),
        EXIT_BAD_INPUT,
        "cannot read image 'notes.png'",
        steps(onnx_as("m.onnx"), write_bytes("notes.png", b"not an image\n")),
    ),
    Case(
        "image-decompression-bomb",
        "engines.infer",
        ("--onnx", "m.onnx", "bomb.png"),
        EXIT_BAD_INPUT,
        "too large to decode safely",
        steps(onnx_as("m.onnx"), write_bytes("bomb.png", png_claiming(20000, 20000))),
    ),
    Case(
        "image-float-out-of-range",
        "engines.infer",
        ("--onnx", "m.onnx", "f.tif"),
        EXIT_BAD_INPUT,
        "has float pixels from 0 to ",
        steps(onnx_as("m.onnx"), image_file("f.tif", lambda g: Image.fromarray(g.astype(np.float32), "F"))),
    ),
    Case(
        "image-folder-with-a-corrupt-image",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--data", "data", *ACCURACY),
        EXIT_BAD_INPUT,
        "0_cut.png",
        steps(onnx_as("m.onnx"), image_folder("0_cut.png")),
    ),
    Case(
        "image-folder-with-a-corrupt-image-in-a-worker",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--data", "data", "--workers", "1", *ACCURACY),
        EXIT_BAD_INPUT,
        "0_cut.png",
        steps(onnx_as("m.onnx"), image_folder("0_cut.png")),
    ),
    Case(
        "parity-image-folder-with-a-corrupt-image",
        "validate.parity",
        (
            "--ckpt",
            "demo",
            "--onnx",
            "m.onnx",
            "--data",
            "data",
            "--num-images",
            "4",
            "--batch-sizes",
            "1",
            "--random-batches",
            "0",
            "--ort",
            "cpu",
            "--quiet",
        ),
        EXIT_BAD_INPUT,
        "0_cut.png",
        steps(onnx_as("m.onnx"), image_folder("0_cut.png")),
    ),
]

BAD_CHECKPOINTS = [
    Case(
        "nan-weights",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "tensor blocks.4.attn.qkv.weight holds 1 NaN or infinite value(s)",
        ckpt_edited("c.pth", poison("blocks.4.attn.qkv.weight", float("nan"))),
    ),
    Case(
        "scalar-cls-token",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "cls_token has shape (), not (1, 1, width)",
        ckpt_edited("c.pth", set_tensor(cls_token=torch.tensor(1.0))),
    ),
    Case(
        "zero-class-head",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "the classifier has no classes",
        ckpt_edited("c.pth", set_tensor(head__weight=torch.zeros(0, 96), head__bias=torch.zeros(0))),
    ),
    Case(
        "data-config-mean-text",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        "data_config mean is 'abc'",
        ckpt_edited("c.pth", lambda raw: raw["data_config"].update(mean="abc")),
    ),
    Case(
        "data-config-std-zero",
        "validate.parity",
        ("--ckpt", "c.pth", "--onnx", "m.onnx", *PARITY),
        EXIT_BAD_INPUT,
        "data_config std is [0, 0, 0]",
        steps(onnx_as("m.onnx"), ckpt_edited("c.pth", lambda raw: raw["data_config"].update(std=[0, 0, 0]))),
    ),
    Case(
        "wrong-arch",
        "export.onnx",
        ("--ckpt", "c.pth", "--arch", "deit_small", *EXPORT),
        EXIT_BAD_INPUT,
        "looks like deit_micro: pass --arch deit_micro",
        ckpt_as("c.pth"),
    ),
    Case(
        "code-running-pickle",
        "export.onnx",
        ("--ckpt", "c.pth", *EXPORT),
        EXIT_BAD_INPUT,
        f"it asks to run {os.system.__module__}.system, which is not on the allow-list",
        lambda scratch, assets: torch.save({"model": {"w": torch.zeros(1)}, "x": _RunsCode()}, scratch / "c.pth"),
    ),
]

BAD_FLAGS = [
    Case("idle-layers-empty", "export.onnx", ("--idle-layers", "", *EXPORT), EXIT_BAD_INPUT, "no idle layers"),
    Case("idle-layers-descending", "export.onnx", ("--idle-layers", "5..3", *EXPORT), EXIT_BAD_INPUT, "runs backwards"),
    Case(
        "idle-layers-runaway-range",
        "export.onnx",
        ("--idle-layers", "0..100000000", *EXPORT),
        EXIT_BAD_INPUT,
        "name 100000001 blocks",
        timeout=60,
    ),
    Case(
        "idle-layers-text",
        "export.onnx",
        ("--idle-layers", "three", *EXPORT),
        EXIT_BAD_INPUT,
        "cannot read idle layers",
    ),
    Case("keep-ratios-empty", "export.onnx", ("--keep-ratios", ",", *EXPORT), EXIT_BAD_INPUT, "no keep ratios"),
    Case(
        "keep-ratios-nan",
        "export.onnx",
        ("--idle-layers", "3,4", "--keep-ratios", "0.5,nan", *EXPORT),
        EXIT_BAD_INPUT,
        "--keep-ratios nan is not a finite number",
    ),
    Case("opset-unsupported", "export.onnx", ("--opset", "99", *EXPORT), EXIT_BAD_INPUT, "invalid choice"),
    Case(
        "unknown-flag",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--fast"),
        EXIT_BAD_INPUT,
        "unrecognized arguments",
        onnx_as("m.onnx"),
    ),
    Case(
        "batch-sizes-zero",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--batch-sizes", "0"),
        EXIT_BAD_INPUT,
        "is not a batch size from 1 to",
        onnx_as("m.onnx"),
    ),
    Case(
        "infer-top-zero",
        "engines.infer",
        ("--onnx", "m.onnx", "--top", "0", "x.png"),
        EXIT_BAD_INPUT,
        "--top and --batch-size must be >= 1",
        onnx_as("m.onnx"),
    ),
    Case(
        "package-name-escapes-the-folder",
        "engines.package",
        ("--onnx", "m.onnx", "--name", "../../escaped"),
        EXIT_BAD_INPUT,
        "--name",
        onnx_as("m.onnx"),
    ),
    Case(
        "package-over-an-existing-package",
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "--force",
        steps(onnx_as("m.onnx"), folder("pkg/triton"), write_bytes("pkg/DEPLOY.md", b"an earlier package\n")),
    ),
]

# issue 21: every flag value checked where it is read: finite, in range, consistent
BAD_FLAGS += [
    Case(
        "parity-thresholds-nan",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--atol", "nan", "--rtol", "nan", "--min-cosine", "nan", *PARITY),
        EXIT_BAD_INPUT,
        "argument --atol: 'nan' is not a finite number >= 0",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-atol-negative",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--atol", "-1", *PARITY),
        EXIT_BAD_INPUT,
        "argument --atol: '-1' is not a finite number >= 0",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-min-top1-above-one",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--min-top1", "2", *PARITY),
        EXIT_BAD_INPUT,
        "argument --min-top1: '2' is not a number in [0, 1]",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-tie-rtol-infinite",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--tie-rtol", "inf", *PARITY),
        EXIT_BAD_INPUT,
        "argument --tie-rtol",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-seed-beyond-numpy",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--seed", str(2**40), *PARITY),
        EXIT_BAD_INPUT,
        "--seed 1099511627776 is not a whole number from 0 to",
        onnx_as("m.onnx"),
    ),
    Case(
        "parity-batch-beyond-any-memory",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--num-images", "0", "--batch-sizes", "1,1000000000", "--ort", "cpu"),
        EXIT_BAD_INPUT,
        "1000000000 is not a batch size from 1 to",
        onnx_as("m.onnx"),
    ),
    Case(
        "export-img-size-zero",
        "export.onnx",
        ("--img-size", "0", *EXPORT),
        EXIT_BAD_INPUT,
        "--img-size 0 is not a size",
    ),
    Case(
        "export-img-size-negative",
        "export.onnx",
        ("--random-init", "--arch", "deit_micro", "--img-size", "-8", *EXPORT),
        EXIT_BAD_INPUT,
        "--img-size -8 is not a whole number from 0 to",
    ),
    Case(
        "export-img-size-not-whole-patches",
        "export.onnx",
        ("--random-init", "--arch", "deit_micro", "--img-size", "30", *EXPORT),
        EXIT_BAD_INPUT,
        "image size 30 px is not a multiple of the patch size 16 px",
    ),
    Case(
        "export-img-size-beyond-any-memory",
        "export.onnx",
        ("--random-init", "--arch", "deit_micro", "--img-size", "400000", *EXPORT),
        EXIT_BAD_INPUT,
        "--img-size 400000 is not a size in pixels from 1 to 4096",
    ),
    Case(
        "export-trt-max-batch-beyond-any-profile",  # refused before anything is built or written
        "export.trt",
        ("--onnx", "m.onnx", "--max-batch", "1000000000", "--no-trtcheck"),
        EXIT_BAD_INPUT,
        "--max-batch <= 65536, got 1, 8, 1000000000",
        onnx_as("m.onnx"),
    ),
    Case(
        "package-max-batch-beyond-any-profile",
        "engines.package",
        ("--onnx", "m.onnx", "--max-batch", "1000000000"),
        EXIT_BAD_INPUT,
        "--max-batch 1000000000 must be >= 1 and <= 65536",
        onnx_as("m.onnx"),
    ),
    Case(
        "export-batch-beyond-any-memory",
        "export.onnx",
        ("--static-batch", "1000000000", *EXPORT),
        EXIT_BAD_INPUT,
        "--static-batch 1000000000 is not a batch size from 1 to",
    ),
]

# issue 21: a training run refuses, before it trains, what would lose its input or train nothing
FINETUNE = ("--epochs", "1", "--quiet")
INPUTS_OVERWRITTEN += [
    Case(
        "finetune-out-is-the-teacher",
        "idlevit.finetune",
        ("--teacher", "t.pth", "--out", "t.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "is the input",
        ckpt_as("t.pth"),
    ),
    Case(
        "finetune-dense-out-is-the-init",
        "idlevit.finetune",
        ("--dense", "--init", "t.pth", "--out", "t.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "is the input",
        ckpt_as("t.pth"),
    ),
    Case(
        "finetune-out-is-a-link-to-the-teacher",
        "idlevit.finetune",
        ("--teacher", "t.pth", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "is the input",
        steps(ckpt_as("t.pth"), symlink("s.pth", "t.pth")),
    ),
]
BAD_FLAGS += [
    Case(
        "finetune-zero-epochs",
        "idlevit.finetune",
        ("--teacher", "t.pth", "--epochs", "0", "--out", "s.pth", "--quiet"),
        EXIT_BAD_INPUT,
        "--epochs 0 is not an integer from 1 to",
        ckpt_as("t.pth"),
    ),
    Case(
        "finetune-lr-nan",
        "idlevit.finetune",
        ("--teacher", "t.pth", "--lr", "nan", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "--lr nan is not a finite number",
        ckpt_as("t.pth"),
    ),
    Case(
        "finetune-batch-size-zero",
        "idlevit.finetune",
        ("--dense", "--batch-size", "0", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "--batch-size 0 is not a batch size from 1 to",
    ),
    Case(
        "finetune-weight-decay-infinite",
        "idlevit.finetune",
        ("--dense", "--weight-decay", "inf", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "--weight-decay inf is not a finite number",
    ),
    Case(
        "finetune-threads-zero",
        "idlevit.finetune",
        ("--dense", "--threads", "0", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "--threads 0 is not from 1 to",
    ),
    Case(
        "finetune-patch-size-not-dividing-the-image",
        "idlevit.finetune",
        ("--dense", "--patch-size", "5", "--out", "s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "image size 32 px is not a multiple of the patch size 5 px",
    ),
    Case(
        "finetune-out-under-a-file",
        "idlevit.finetune",
        ("--dense", "--out", "notes.txt/s.pth", *FINETUNE),
        EXIT_BAD_INPUT,
        "cannot write 'notes.txt/s.pth': 'notes.txt' is a file, not a folder",
        write_bytes("notes.txt", b"a file\n"),
    ),
]

# issue 21: a package vouches for what it carries (every digest, every profile, every path), carries the
# external data of its graphs, never follows a link out when it drops stale files, and appears whole or not
# at all (built beside its folder and renamed into place)
PROFILE = {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}


def earlier_package(out: str, *args: str) -> Make:
    """A package of ``m.onnx`` made by the library call, as an earlier run of the command left it."""

    def make(scratch: Path, assets: Assets) -> None:
        from engines.deploy.writer import make_package

        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            make_package("m.onnx", out=out, **dict(zip(args[::2], args[1::2])))
        finally:
            os.chdir(cwd)

    return make


def stale_entry_through_a_link(scratch: Path, assets: Assets) -> None:
    """``pkg/old`` links to ``outside/`` and the manifest lists ``old/victim.txt`` as the package's."""
    (scratch / "outside").mkdir()
    (scratch / "outside" / "victim.txt").write_text("not the package's\n")
    (scratch / "pkg" / "old").symlink_to("../outside", target_is_directory=True)
    manifest = json.loads((scratch / "pkg" / ".idlevit-package.json").read_text())
    manifest["files"]["old/victim.txt"] = sha256_file(scratch / "outside" / "victim.txt")
    (scratch / "pkg" / ".idlevit-package.json").write_text(json.dumps(manifest))


def digit_folders(count: int) -> Make:
    """``data/val/<0..count-1>/``, two real digits each."""

    def make(scratch: Path, assets: Assets) -> None:
        for label in range(count):
            target = scratch / "data" / "val" / str(label)
            target.mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rgb(assets.digit)).save(target / f"img{index}.png")

    return make


#: What a fallback or a score trusts is checked: the graph an engine was built from by its sha256, a
#: dataset's classes against the model's.
TRUSTED = [
    Case(
        "infer-fallback-to-a-replaced-graph",  # no GPU here: the fallback must check the graph's sha256
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "sha256",
        steps(
            fake_engine("e.engine"),
            onnx_with_metadata("demo.onnx", checkpoint='"replaced"'),
            image_file("x.png", Image.fromarray),
        ),
    ),
    Case(
        "infer-fallback-for-a-changed-engine",  # the engine is not the one its sidecar describes
        "engines.infer",
        ("--engine", "e.engine", "x.png"),
        EXIT_BAD_INPUT,
        "sha256",
        steps(
            fake_engine("e.engine"), write_bytes("e.engine", b"another engine"), image_file("x.png", Image.fromarray)
        ),
    ),
    Case(
        "accuracy-image-folder-with-other-classes",  # 9 class folders for a 10-class model: labels would shift
        "validate.accuracy",
        ("--onnx", "m.onnx", "--data", "data", *ACCURACY),
        EXIT_BAD_INPUT,
        "class",
        steps(onnx_as("m.onnx"), digit_folders(9)),
    ),
]

PACKAGES = [
    Case(
        "package-stale-removal-through-a-link",  # the same package; the link and the file outside kept
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg", "--force"),
        EXIT_OK,
        stderr_lines=0,
        make=steps(onnx_as("m.onnx"), earlier_package("pkg"), stale_entry_through_a_link),
        rewrites=("pkg/.idlevit-package.json",),  # no longer lists old/victim.txt: not the package's
    ),
    Case(
        "package-force-into-a-folder-that-holds-no-package",  # the working folder: refused, untouched
        "engines.package",
        ("--onnx", "m.onnx", "--out", ".", "--force"),
        EXIT_BAD_INPUT,
        "holds no package",
        steps(onnx_as("m.onnx"), folder("data"), write_bytes("data/notes.txt", b"mine\n")),
    ),
    Case(
        "package-sidecar-without-engine-sha256",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "field engine_sha256 is '', not a sha256",
        fake_engine("e.engine", engine_sha256=""),
    ),
    Case(
        "package-zero-byte-engine",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "is empty (0 bytes)",
        steps(fake_engine("e.engine"), write_bytes("e.engine", b""), lambda s, a: _resign(s / "e.engine")),
    ),
    Case(
        "package-profile-max-batch-1e30",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "or a batch above 65536",
        fake_engine("e.engine", profiles=[{"images": PROFILE | {"max": [10**30, 3, 32, 32]}}]),
    ),
    Case(
        "package-profile-min-above-opt-above-max",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "is not min <= opt <= max in every dim",
        fake_engine(
            "e.engine", profiles=[{"images": {"min": [32, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [1, 3, 32, 32]}}]
        ),
    ),
    Case(
        "package-profile-not-the-models-images",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "profile's min shape [1, 3, 64, 64] is not (batch, 3, 32, 32)",
        fake_engine("e.engine", profiles=[{"images": {k: [v[0], 3, 64, 64] for k, v in PROFILE.items()}}]),
    ),
    Case(
        "package-plugin-path-escapes",
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "plugin file '../../../lib.so' is not a plain file name",
        fake_engine("e.engine", plugins=[{"file": "../../../lib.so", "sha256": "0" * 64}]),
    ),
    Case(
        "package-built-from-graph-missing",  # the sidecar's onnx (what TensorRT parsed) is not the source and gone
        "engines.package",
        ("--engine", "e.engine", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "the graph TensorRT parsed for e.engine (gone_fp16_mixed.onnx, for fp32) is not here",
        fake_engine("e.engine", onnx="gone_fp16_mixed.onnx", onnx_sha256="ab" * 32),
    ),
    Case(
        "package-external-data-onnx",  # the data file travels with the graph, where the graph says it is
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg"),
        EXIT_OK,
        stderr_lines=0,
        make=onnx_external("m.onnx"),
        outputs=("pkg", "pkg/*"),
    ),
    Case(
        "package-external-data-missing",
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg"),
        EXIT_BAD_INPUT,
        "keeps its weights in 'm.onnx.data', which is not beside it",
        onnx_external("m.onnx", keep_data=False),
    ),
    Case(
        "package-sigterm-while-writing",  # real SIGTERM in the middle of a file: no pkg/, no hidden folder
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg"),
        EXIT_SIGTERM,
        "terminated (SIGTERM)",
        onnx_as("m.onnx"),
        fault={"signal_at_fsync": "SIGTERM"},
    ),
    Case(
        "package-ctrl-c-while-replacing",  # real SIGINT during a --force run: the earlier package as it was
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg", "--force", "--max-batch", "4"),
        EXIT_SIGINT,
        "interrupted (Ctrl-C)",
        steps(onnx_as("m.onnx"), earlier_package("pkg")),
        fault={"signal_at_fsync": "SIGINT"},
    ),
    Case(
        "package-disk-full-while-replacing",  # faked ENOSPC: the earlier package as it was
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg", "--force", "--max-batch", "4"),
        EXIT_BAD_INPUT,
        "No space left on device",
        steps(onnx_as("m.onnx"), earlier_package("pkg")),
        fault={"oserror_at_fsync": "ENOSPC"},
    ),
    Case(
        "package-file-size-limit",  # real: RLIMIT_FSIZE of 1 MB against a 6 MB graph
        "engines.package",
        ("--onnx", "m.onnx", "--out", "new/pkg"),
        EXIT_BAD_INPUT,
        "File too large",
        onnx_as("m.onnx"),
        fsize=1 << 20,
    ),
    Case(
        "package-name-too-long",
        "engines.package",
        ("--onnx", "m.onnx", "--out", "pkg", "--name", "n" * 300),
        EXIT_BAD_INPUT,
        "--name is 300 characters long",
        onnx_as("m.onnx"),
    ),
]

SIGNALS = [
    Case(
        "export-onnx-sigterm-while-writing",  # a real SIGTERM, sent while the graph's temporary file is written
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_SIGTERM,
        "terminated (SIGTERM)",
        fault={"signal_at_fsync": "SIGTERM"},
    ),
    Case(
        "export-onnx-ctrl-c-while-writing",  # a real SIGINT, at the same moment
        "export.onnx",
        ("--out", "m.onnx", *EXPORT),
        EXIT_SIGINT,
        "interrupted (Ctrl-C)",
        fault={"signal_at_fsync": "SIGINT"},
    ),
    Case(
        "parity-sigterm-while-writing-the-report",
        "validate.parity",
        ("--ckpt", "demo", "--onnx", "m.onnx", "--report", "out/r.json", *PARITY),
        EXIT_SIGTERM,
        "terminated (SIGTERM)",
        onnx_as("m.onnx"),
        fault={"signal_at_fsync": "SIGTERM"},
    ),
    Case(
        "accuracy-ctrl-c-while-writing-the-report",
        "validate.accuracy",
        ("--onnx", "m.onnx", "--report", "r.json", *ACCURACY),
        EXIT_SIGINT,
        "interrupted (Ctrl-C)",
        onnx_as("m.onnx"),
        fault={"signal_at_fsync": "SIGINT"},
    ),
]


@pytest.mark.parametrize("case", [param(c) for c in INPUTS_OVERWRITTEN])
def test_inputs_are_never_overwritten(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in CORRUPT_FILES])
def test_corrupt_truncated_and_foreign_files(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)
    assert not (scratch / "pwned").exists()


@pytest.mark.parametrize("case", [param(c) for c in BAD_FIELDS])
def test_bad_metadata_and_sidecar_fields(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in OUTPUT_ERRORS])
def test_output_oserrors(case: Case, scratch: Path, assets: Assets) -> None:
    result = run_case(case, scratch, assets)
    if case.code == EXIT_OK:  # the export itself succeeded: its graph is whole
        assert read_metadata(scratch / "m.onnx").arch == "deit_micro", result.stdout


@pytest.mark.parametrize("case", [param(c) for c in BAD_IMAGES])
def test_bad_images(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in BAD_CHECKPOINTS])
def test_bad_checkpoints(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)
    assert not (scratch / "pwned").exists()


@pytest.mark.parametrize("case", [param(c) for c in BAD_FLAGS])
def test_bad_schedules_and_flags(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in SIGNALS])
def test_signals_while_writing(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in TRUSTED])
def test_trusted_artefacts_and_data_checked_elsewhere(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)


@pytest.mark.parametrize("case", [param(c) for c in PACKAGES])
def test_packages(case: Case, scratch: Path, assets: Assets) -> None:
    run_case(case, scratch, assets)
    if case.name == "package-external-data-onnx":
        entry = scratch / "pkg" / "triton" / "m" / "1"
        assert sorted(p.name for p in entry.iterdir()) == ["m.onnx.data", "model.onnx"]
        assert read_metadata(entry / "model.onnx").arch == "deit_micro"  # its data found beside it


# --- images read by their real range: the same top-1 as the 8-bit file ---------------------------


def _top1(stdout: str) -> dict[str, tuple[str, float]]:
    """``engines.infer`` output -> image -> (best class, its probability in %)."""
    found, image = {}, None
    for line in stdout.splitlines():
        rank = re.match(r"\s+1\. (.+?)\s+([\d.]+)%$", line)
        if rank and image:
            found[image] = (rank.group(1), float(rank.group(2)))
        elif not line.startswith(" "):
            image = line.strip()
    return found


@pytest.fixture(scope="module")
def encodings_classified(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, float]]:
    """One ``engines.infer`` run over the 8-bit RGB file of a real digit and every other encoding of it:
    exit 0, nothing on stderr, nothing left behind; image -> (top-1 class, its probability in %)."""
    scratch = tmp_path_factory.mktemp("encodings")
    names = [name for name, _encode, _save in ENCODINGS.values()]
    makers = [image_file(name, encode, **save) for name, encode, save in ENCODINGS.values()]
    case = Case(
        "encodings",
        "engines.infer",
        ("--onnx", "m.onnx", "--top", "1", "rgb8.png", *names),
        EXIT_OK,
        stderr_lines=0,
        make=steps(onnx_as("m.onnx"), image_file("rgb8.png", lambda g: Image.fromarray(rgb(g))), *makers),
    )
    result = run_case(case, scratch, assets)
    top = _top1(result.stdout)
    assert set(top) == {"rgb8.png", *names}, result.stdout
    return top


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_other_encodings_classify_as_the_8bit_file(
    encoding: str, encodings_classified: dict[str, tuple[str, float]]
) -> None:
    """16-bit, float, palette, alpha and CMYK files of one digit: the top-1 of its 8-bit RGB file, and for the
    lossless encodings the same probability (16-bit clipped at 255, or a float read as zeros, would not be)."""
    name = ENCODINGS[encoding][0]
    reference, got = encodings_classified["rgb8.png"], encodings_classified[name]
    assert got[0] == reference[0], (encoding, got, reference)
    if not name.endswith(".jpg"):
        assert got[1] == pytest.approx(reference[1], abs=0.02), (encoding, got, reference)


# --- signals from outside, while a command works ---------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)], ids=["ctrl-c", "sigterm"]
)
def test_signal_from_outside_during_a_parity_run(signum: int, code: int, scratch: Path, assets: Assets) -> None:
    """A real signal from another process once the comparison runs (a long one): the documented code, one
    line, and no report (the reports are written only at the end, atomically)."""
    shutil.copyfile(assets.onnx, scratch / "m.onnx")
    marker = scratch.parent / "started"
    args = ["--ckpt", "demo", "--onnx", "m.onnx", "--num-images", "0", "--random-batches", "5000"]
    args += ["--batch-sizes", "8", "--ort", "cpu", "--quiet"]
    fault = {"mark_call": "validate.judge:run_parity", "marker": str(marker)}
    run_signalled("validate.parity", args, scratch, fault, marker, signum, code)


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_while_the_command_is_still_importing(signum: int, code: int, scratch: Path, assets: Assets) -> None:
    """A real signal once ``engines.infer`` has imported the toolkit's command runner, before its ``main`` runs
    (the import is held there): the documented code and one line, not a silent kill or a traceback."""
    shutil.copyfile(assets.onnx, scratch / "m.onnx")
    Image.fromarray(assets.digit).save(scratch / "x.png")
    marker = scratch.parent / "imported"
    fault = {"pause_after_import": "idlevit.cli", "marker": str(marker)}
    run_signalled("engines.infer", ["--onnx", "m.onnx", "x.png"], scratch, fault, marker, signum, code, settle=0)


def test_sigterm_during_a_tensorrt_build(scratch: Path, assets: Assets) -> None:
    """A real SIGTERM while TensorRT-RTX builds (on this CPU): exit 143, one line, no engine, sidecar or temp."""
    pytest.importorskip("tensorrt_rtx")
    shutil.copyfile(assets.onnx, scratch / "m.onnx")
    marker = scratch.parent / "building"
    args = ["--onnx", "m.onnx", "--runtime", "tensorrt-rtx", "--no-check", "--no-trtcheck", "--opt-level", "5"]
    fault = {"mark_call": "engines.tensorrt:build_serialized", "marker": str(marker)}
    run_signalled("export.trt", args, scratch, fault, marker, signal.SIGTERM, EXIT_SIGTERM)


# --- an unexpected exception ------------------------------------------------------------------------


def test_an_export_that_disagrees_with_pytorch_exits_1_and_keeps_the_file(scratch: Path, assets: Assets) -> None:
    """ONNX Runtime's logits shifted by 0.05: the FP32 judge fails the export in one line naming the metric
    and the file, which stays for inspection."""
    case = Case(
        "onnxruntime-disagrees",
        "export.onnx",
        ("--out", "m.onnx", "--quiet", "--exporter", "torchscript"),
        EXIT_CHECK_FAILED,
        "logits differ beyond both atol",
        outputs=("m.onnx", ".idlevit", ".idlevit/*"),
        fault={"perturb_outputs": "0.05"},
    )
    result = run_case(case, scratch, assets)
    assert (scratch / "m.onnx").is_file() and "m.onnx is kept for inspection" in result.stderr


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "IDLEVIT_DEBUG=1"])
def test_an_unexpected_exception_exits_70_in_one_line(debug: bool, scratch: Path, assets: Assets) -> None:
    """A bug (injected: the schedule parser raises RuntimeError) is exit 70 with one line that asks for a report;
    the traceback only with IDLEVIT_DEBUG=1, before that same line."""
    case = Case(
        "internal",
        "export.onnx",
        ("--idle-layers", "3..11", *EXPORT),
        EXIT_INTERNAL,
        "internal error: RuntimeError: injected fault in idlevit.schedule:parse_layers; please report it",
        fault={"raise_in": "idlevit.schedule:parse_layers"},
        env={"IDLEVIT_DEBUG": "1"} if debug else {},
    )
    if not debug:
        run_case(case, scratch, assets)
        return
    result = subprocess.run(
        [sys.executable, "-m", case.module, *case.args],
        cwd=scratch,
        env=command_env({k: v for k, v in (case.fault or {}).items()}, case.env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = one_line(result.stderr)
    assert result.returncode == EXIT_INTERNAL, result.stderr
    assert lines[0] == "Traceback (most recent call last):" and "RuntimeError: injected fault" in result.stderr
    assert lines[-1].startswith("error: internal error: RuntimeError: injected fault"), result.stderr
    assert not list(scratch.iterdir())
