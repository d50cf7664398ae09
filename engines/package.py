"""``python -m engines.package MODEL``: what an edge deployment needs, written next to the model.

From an exported ONNX (``python -m export.onnx``) or an engine with its sidecar
(``python -m export.trt``) it writes ``<model>_deploy/``:

* ``triton/<name>/config.pbtxt`` and ``triton/<name>/1/model.{onnx,plan}``: a Triton Inference
  Server model repository entry (``onnxruntime_onnx`` or ``tensorrt_plan``, dynamic batching,
  I/O names, types and dims read from the graph, class labels for Triton's classification);
* ``deepstream/config_infer_idlevit.txt`` and ``labels.txt``: a DeepStream ``nvinfer`` classifier
  config (network-mode from the precision, preprocessing from the metadata's mean/std,
  ``custom-lib-path`` when the graph uses the IdleScatter plugin);
* ``DEPLOY.md``: running it on Jetson, rebuilding the engine there with ``trtexec``.

Examples::

    python -m engines.package idlevit_deit_small_random.onnx
    python -m engines.package model_fp16.engine --labels imagenet_classes.txt --max-batch 16
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from idlevit.cli import cli_parser, run_cli
from idlevit.errors import EXIT_BAD_INPUT, EXIT_OK, ToolkitError
from idlevit.fileio import atomic_write
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import IMAGES, LOGITS, kept_indices_name
from idlevit.sidecar import EngineSidecar, sidecar_path

from .builder import BuildOptions, command_line
from .labels import read_labels
from .plan import FP16, FP32
from .precision import plan_precision
from .target import Target

#: TensorRT line of current JetPack releases (JetPack 6.x ships TensorRT 10.3): weakly typed, so
#: FP16 engines there come from the FP16 builder flag with the scoring path pinned to FP32.
JETPACK_TENSORRT = Target("tensorrt", (10, 3))
#: nvinfer loads ``custom-lib-path`` with dlopen only, so it needs the plugin library that
#: registers its creator at load time (plugins/README.md), not the getCreators one.
DEEPSTREAM_PLUGIN_LIB = "libidlevit_plugins_static.so"
TRITON_PLATFORM = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}
TRITON_MODEL_FILE = {"onnx": "model.onnx", "engine": "model.plan"}
#: ONNX element type -> Triton data type.
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}
#: DeepStream network-mode per precision (0 FP32, 1 INT8, 2 FP16).
NETWORK_MODE = {FP32: 0, FP16: 2}


@dataclass
class TensorSpec:
    """One graph input or output: name, ONNX element type, dims without the batch axis."""

    name: str
    elem_type: int
    dims: list[int]


@dataclass
class DeploySource:
    """The model being packaged and every fact the generated files need."""

    model: Path  # the file Triton and DeepStream load (.onnx or .engine)
    kind: str  # "onnx" or "engine"
    graph: Path  # the ONNX whose inputs and outputs are described
    meta: ExportMetadata
    precision: str  # "fp32" or "fp16"
    max_batch: int  # 0: the graph has a static batch (meta.batch)
    opt_batch: int
    plugins: list[Path] = field(default_factory=list)  # plugin libraries the engine was built with
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    @property
    def uses_plugin(self) -> bool:
        return bool(self.meta.plugin or self.plugins)


def graph_io(onnx_path: str | os.PathLike[str]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of a graph (weights are not loaded); the leading batch axis is dropped."""
    graph = onnx.load(os.fspath(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return TensorSpec(value.name, tensor.elem_type, dims[1:])

    inputs = [spec(v) for v in graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in graph.output]


def read_source(
    model: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str] | None = None,
    max_batch: int = 32,
    precision: str | None = None,
) -> DeploySource:
    """Facts about an ONNX file, or an engine (from its sidecar and the ONNX it was built from).

    ``precision`` is the one the device engine will be built with (an ONNX's default: its own);
    an engine's is fixed.
    """
    path = Path(model)
    if not path.is_file():
        raise ToolkitError(f"{os.fspath(path)!r} does not exist; pass an exported .onnx or a built .engine")
    if path.suffix == ".onnx":
        meta = read_metadata(path)
        batch = 0 if meta.batch else max_batch
        source = DeploySource(path, "onnx", path, meta, meta.precision, batch, min(8, batch) or meta.batch)
    else:
        sidecar = EngineSidecar.read(sidecar_path(path))
        graph = Path(onnx_path or sidecar.source_onnx)
        if not graph.is_absolute() and not graph.is_file():
            graph = path.parent / graph.name
        if not graph.is_file():
            raise ToolkitError(
                f"the ONNX {path.name} was built from ({sidecar.source_onnx}) is not here; pass it with --onnx"
            )
        meta = ExportMetadata(**sidecar.idlevit)
        profile = sidecar.profiles[0][IMAGES]
        max_b, opt_b = (0, meta.batch) if meta.batch else (profile["max"][0], profile["opt"][0])
        plugins = [path.parent / p["file"] for p in sidecar.plugins]
        source = DeploySource(
            path, "engine", graph, meta, str(sidecar.precision_plan["precision"]), max_b, opt_b, plugins
        )
    if source.kind == "onnx" and not meta.batch and max_batch < 1:
        raise ToolkitError(f"--max-batch {max_batch} must be >= 1")
    if precision and precision != source.precision:
        if source.kind == "engine":
            raise ToolkitError(f"{path.name} is a {source.precision} engine; drop --precision or rebuild it")
        source.precision = precision
    source.inputs, source.outputs = graph_io(source.graph)
    # the exporter declares the kept-index outputs with a symbolic width; TopK's static k fixes it
    widths = {kept_indices_name(layer): k + 1 for layer, k in zip(meta.idle_layers, meta.keep_tokens)}
    for spec in source.outputs:
        if spec.name in widths and spec.dims[-1:] == [-1]:
            spec.dims[-1] = widths[spec.name]
    return source


def model_name(source: DeploySource) -> str:
    """A Triton model name from the file name (letters, digits, ``_`` and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", source.model.stem).strip("_") or "idlevit"


# ---- Triton -----------------------------------------------------------------------------------
def triton_config(source: DeploySource, name: str, queue_delay_us: int = 100) -> str:
    """``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    if source.kind == "onnx" and source.uses_plugin:
        raise ToolkitError(
            f"{source.model.name} uses the {source.meta.plugin} plugin op, which Triton's ONNX Runtime backend "
            "cannot run; package the engine built from it, or an export without --plugin"
        )
    lines = [
        f'name: "{name}"',
        f'platform: "{TRITON_PLATFORM[source.kind]}"',
        f"max_batch_size: {source.max_batch}",
    ]
    static = source.max_batch == 0  # then dims carry the batch axis too

    def tensor(kind: str, spec: TensorSpec, extra: str = "") -> list[str]:
        dims = ([source.meta.batch] if static else []) + spec.dims
        if spec.elem_type not in TRITON_TYPES:
            raise ToolkitError(
                f"graph {kind} {spec.name} has ONNX type {spec.elem_type}, which this package cannot map"
            )
        return [
            "  {",
            f'    name: "{spec.name}"',
            f"    data_type: {TRITON_TYPES[spec.elem_type]}",
            f"    dims: [ {', '.join(map(str, dims))} ]",
            *([extra] if extra else []),
            "  },",
        ]

    lines.append("input [")
    for spec in source.inputs:
        lines += tensor("input", spec, "    format: FORMAT_NCHW")
    lines[-1] = "  }"
    lines += ["]", "output ["]
    for spec in source.outputs:
        lines += tensor("output", spec, '    label_filename: "labels.txt"' if spec.name == LOGITS else "")
    lines[-1] = "  }"
    lines.append("]")
    if not static:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {source.opt_batch} ]",
            f"  max_queue_delay_microseconds: {queue_delay_us}",
            "}",
        ]
    kind = "KIND_GPU" if source.kind == "engine" else "KIND_AUTO"
    lines += ["instance_group [", "  {", "    count: 1", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


# ---- DeepStream -------------------------------------------------------------------------------
def deepstream_preprocessing(meta: ExportMetadata) -> tuple[float, list[float], float]:
    """``net-scale-factor``, ``offsets`` and the largest relative error of the single scale.

    nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels, one factor
    for all channels; timm computes ``(x / 255 - mean[c]) / std[c]``. The offsets are exact
    (255 * mean); the factor uses the mean std, off by at most the returned fraction per channel.
    """
    std = sum(meta.std) / len(meta.std)
    error = max(abs(s / std - 1.0) for s in meta.std)
    return 1.0 / (255.0 * std), [255.0 * m for m in meta.mean], error


def deepstream_config(
    source: DeploySource,
    model_file: str,
    labels_file: str = "labels.txt",
    plugin_lib: str | None = None,
    batch_size: int = 1,
) -> str:
    """nvinfer ``[property]`` group for a primary (full-frame) classifier.

    ``classifier-threshold`` is far below any logit: the graph outputs logits, not
    probabilities, and nvinfer's default classifier parser reports the arg-max class whose
    value passes the threshold.
    """
    precision = source.precision
    if precision not in NETWORK_MODE:
        raise ToolkitError(f"precision {precision!r} has no DeepStream network-mode here; use an fp32 or fp16 model")
    scale, offsets, _ = deepstream_preprocessing(source.meta)
    model_key = "onnx-file" if source.kind == "onnx" else "model-engine-file"
    lines = [
        f"# nvinfer config for {source.model.name}: {source.meta.arch} IdleViT, idle layers "
        f"{source.meta.idle_layers}, {source.meta.img_size} px, {source.meta.num_classes} classes",
        "# generated by `python -m engines.package`; see DEPLOY.md beside it",
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={scale:.10g}",
        "offsets=" + ";".join(f"{o:.6g}" for o in offsets),
        "model-color-format=0",
        f"{model_key}={model_file}",
        f"labelfile-path={labels_file}",
        f"batch-size={batch_size}",
        f"network-mode={NETWORK_MODE[precision]}",
        "network-type=1",
        "process-mode=1",
        "gie-unique-id=1",
        "classifier-threshold=-1e9",
        f"output-blob-names={LOGITS}",
        "maintain-aspect-ratio=0",
    ]
    if source.uses_plugin:
        lines.append(f"custom-lib-path={plugin_lib or DEEPSTREAM_PLUGIN_LIB}")
    return "\n".join(lines) + "\n"


def read_deepstream_config(text: str) -> dict[str, str]:
    """The ``[property]`` keys of an nvinfer config (GKeyFile syntax: ``key=value``, ``#`` comments)."""
    props: dict[str, str] = {}
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
        elif "=" in line and group == "property":
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


# ---- DEPLOY.md --------------------------------------------------------------------------------
def rebuild_command(source: DeploySource, onnx_name: str, engine_name: str, plugin_lib: str | None) -> str:
    """The ``trtexec`` line that rebuilds the engine on a JetPack device (TensorRT 10.x)."""
    model = onnx.load(os.fspath(source.graph), load_external_data=False)
    plan = plan_precision(model, source.precision if source.precision in NETWORK_MODE else FP32, JETPACK_TENSORRT)
    max_batch = source.max_batch or source.meta.batch
    options = BuildOptions(
        min_batch=1 if source.max_batch else max_batch,
        opt_batch=source.opt_batch,
        max_batch=max_batch,
        plugins=[plugin_lib] if plugin_lib else [],
    )
    return command_line(JETPACK_TENSORRT, onnx_name, engine_name, plan, options, source.meta)


def deploy_markdown(source: DeploySource, name: str, labels_note: str, plugin_lib: str | None) -> str:
    meta = source.meta
    _, _, scale_error = deepstream_preprocessing(meta)
    onnx_name = source.graph.name
    triton_plugins = (
        f" --backend-config=tensorrt,plugins=$PWD/build/{DEEPSTREAM_PLUGIN_LIB}" if source.uses_plugin else ""
    )
    trtexec = rebuild_command(source, onnx_name, "model.plan", plugin_lib)
    plugin_build = (
        "\n".join(
            [
                "",
                "The graph uses the fused `idlevit::IdleScatter` plugin. Build it on the device first",
                "(JetPack has CUDA and the TensorRT headers; Orin is SM 8.7, Xavier SM 7.2):",
                "",
                "```bash",
                "cmake -S plugins -B build -DCMAKE_CUDA_ARCHITECTURES=87 -DTENSORRT_DIR=/usr",
                "cmake --build build -j",
                "```",
                "",
                f"`libidlevit_plugins.so` serves `trtexec` and Triton; nvinfer needs `{DEEPSTREAM_PLUGIN_LIB}`",
                "(it registers its creator when loaded). See plugins/README.md.",
            ]
        )
        if source.uses_plugin
        else ""
    )
    precision_note = (
        "FP16 on JetPack's TensorRT 10.x uses the builder-flag path: `--fp16` with "
        "`--precisionConstraints=obey` and the scoring path (norm1 -> CLS query -> scores -> TopK) "
        "pinned to FP32 by `--layerPrecisions`, so FP16 rounding cannot change which tokens are kept."
        if source.precision == FP16
        else "This package is FP32. For FP16 run `python -m export.trt --fp16 --trt-version 10.3` "
        "to get the command with the scoring path pinned to FP32 (JetPack's TensorRT 10.x uses "
        "the FP16 builder flag plus per-layer FP32, not a strongly typed graph)."
    )
    return f"""# Deploying {source.model.name} on Jetson

{meta.arch} IdleViT ({meta.img_size} px, {meta.num_classes} classes), idle layers {meta.idle_layers}
keeping {meta.keep_tokens} of {meta.num_tokens} tokens; precision {source.precision}; batch
{"dynamic, up to " + str(source.max_batch) if source.max_batch else "static " + str(meta.batch)}.
{labels_note}

## 1. Rebuild the engine on the device

An engine runs only on the GPU and TensorRT version that built it, so build it on the Jetson
from the ONNX (`{onnx_name}`, copy it along) with JetPack's `trtexec`
(`/usr/src/tensorrt/bin/trtexec`).{plugin_build}

```bash
{trtexec}
```

{precision_note}
Put the engine where the configs expect it: `triton/{name}/1/model.plan` and, for DeepStream,
`model-engine-file` in `deepstream/config_infer_idlevit.txt`.

## 2. Triton Inference Server

`triton/{name}/` is a model repository entry (`config.pbtxt`, version `1/`). With the Jetson
release of Triton:

```bash
tritonserver --model-repository=$PWD/triton{triton_plugins}
```

Input `{IMAGES}`: float32 NCHW, already normalised (resize, center crop
{meta.crop_pct:.3f}, {meta.interpolation}, mean {meta.mean}, std {meta.std}). Output `{LOGITS}`;
ask for `class_count` to get labelled top-k from Triton's classification extension.

## 3. DeepStream

`deepstream/config_infer_idlevit.txt` is a primary classifier for `nvinfer`
(`network-type=1`, `network-mode` 0 = FP32, 2 = FP16):

```bash
gst-launch-1.0 filesrc location=video.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 \\
  nvstreammux name=m batch-size=1 width=1280 height=720 ! \\
  nvinfer config-file-path=deepstream/config_infer_idlevit.txt ! nvvideoconvert ! nvdsosd ! nv3dsink
```

Preprocessing differs from timm's in two documented ways: nvinfer scales the whole frame to
{meta.img_size} x {meta.img_size} (no resize-then-center-crop), and it has one
`net-scale-factor` for all channels, so the per-channel std is replaced by its mean (at most
{scale_error:.1%} off per channel). `classifier-threshold` is set below any logit so nvinfer
reports the arg-max class of the logits.
"""


# ---- the package ------------------------------------------------------------------------------
def default_package_dir(model: Path) -> Path:
    return model.with_name(f"{model.stem}_deploy")


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as reader, atomic_write(dst) as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def write_package(
    source: DeploySource,
    out_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    labels: list[str] | None = None,
    plugin_lib: str | None = None,
    ds_batch_size: int = 1,
) -> list[Path]:
    """Write the Triton entry, the DeepStream config and DEPLOY.md; returns the files written."""
    out = Path(out_dir) if out_dir else default_package_dir(source.model)
    name = name or model_name(source)
    if labels is not None and len(labels) != source.meta.num_classes:
        raise ToolkitError(
            f"the labels file has {len(labels)} names but the model has {source.meta.num_classes} classes"
        )
    names = labels or [f"class_{i}" for i in range(source.meta.num_classes)]
    labels_note = "" if labels else "Class names are placeholders (`class_<i>`); pass --labels FILE for real ones."
    triton = out / "triton" / name
    model_file = triton / "1" / TRITON_MODEL_FILE[source.kind]
    deepstream = out / "deepstream"
    written = []
    with atomic_write(triton / "config.pbtxt", "w") as handle:
        handle.write(triton_config(source, name))
    written.append(triton / "config.pbtxt")
    _copy(source.model, model_file)
    written.append(model_file)
    for labels_path, sep in ((triton / "labels.txt", "\n"), (deepstream / "labels.txt", ";")):
        # Triton: one class per line; nvinfer classifiers: one line, classes separated by ';'
        with atomic_write(labels_path, "w") as handle:
            handle.write(sep.join(names) + "\n")
        written.append(labels_path)
    ds_model = os.path.relpath(model_file, deepstream)
    with atomic_write(deepstream / "config_infer_idlevit.txt", "w") as handle:
        handle.write(deepstream_config(source, ds_model, "labels.txt", plugin_lib, ds_batch_size))
    written.append(deepstream / "config_infer_idlevit.txt")
    if source.kind == "engine":  # the ONNX travels along: engines are rebuilt on the device
        _copy(source.graph, out / source.graph.name)
        written.append(out / source.graph.name)
    with atomic_write(out / "DEPLOY.md", "w") as handle:
        handle.write(deploy_markdown(source, name, labels_note, plugin_lib))
    written.append(out / "DEPLOY.md")
    return written


# ---- CLI --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "python -m engines.package",
        __doc__,
        f"exit codes: {EXIT_OK} written; {EXIT_BAD_INPUT} missing or unsuitable model, labels or flag.",
    )
    parser.add_argument("model", help="an exported .onnx, or an .engine with its .engine.json sidecar")
    parser.add_argument(
        "--onnx", default=None, help="for an engine: the ONNX it was built from (default: its sidecar's)"
    )
    parser.add_argument("--out", default=None, help="package folder (default: <model>_deploy beside the model)")
    parser.add_argument("--name", default=None, help="Triton model name (default: from the file name)")
    parser.add_argument(
        "--labels", default=None, help="class names, one per line (default: placeholders class_0, class_1, ...)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="for an ONNX: Triton's max_batch_size (default 32); an engine uses its profile's max",
    )
    parser.add_argument(
        "--precision",
        choices=list(NETWORK_MODE),
        default=None,
        help="for an ONNX: precision of the engine built on the device (DeepStream network-mode, trtexec "
        "flags; default: the ONNX's own); an engine keeps its own",
    )
    parser.add_argument("--ds-batch-size", type=int, default=1, help="DeepStream batch-size (default 1)")
    parser.add_argument(
        "--plugin-lib",
        default=None,
        help=f"plugin library path for DeepStream's custom-lib-path (default {DEEPSTREAM_PLUGIN_LIB})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = read_labels(args.labels)
    if args.ds_batch_size < 1:
        raise ToolkitError(f"--ds-batch-size {args.ds_batch_size} must be >= 1")
    source = read_source(args.model, args.onnx, args.max_batch, args.precision)
    written = write_package(source, args.out, args.name, labels, args.plugin_lib, args.ds_batch_size)
    root = Path(args.out) if args.out else default_package_dir(source.model)
    print(f"wrote {root}/ ({len(written)} files):")
    for path in written:
        print(f"  {os.path.relpath(path, root)}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
