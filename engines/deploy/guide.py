"""DEPLOY.md: how to run the package, written for its kind (ONNX, TensorRT engine, TensorRT-RTX engine).

Every path the guide names is a file or folder of the package, or one that a command in the
guide creates (the engine ``trtexec --saveEngine`` writes, the plugin's ``build`` folder); the
tests check it. What the guide says about precision and preprocessing comes from the same
functions that write the configs, so the two cannot disagree.
"""

from __future__ import annotations

import math
import posixpath

from idlevit.metadata import load_onnx
from idlevit.names import IMAGES, LOGITS

from ..builder import BuildOptions, command_line
from ..plan import FP16, FP32, PRECISIONS
from ..precision import plan_precision
from ..target import Target
from .deepstream import model_entry, network_mode, preprocessing
from .layout import (
    KIND_ONNX,
    KIND_RTX,
    KIND_TENSORRT,
    LOADTIME_PLUGIN_LIB,
    PLUGIN_BUILD,
    PLUGIN_SOURCES,
    TRTEXEC_PLUGIN_LIB,
    Layout,
)
from .source import DeploySource

#: TensorRT line of current JetPack releases (JetPack 6.x ships TensorRT 10.3): weakly typed, so
#: FP16 engines there come from the FP16 builder flag with the scoring path pinned to FP32.
JETPACK_TENSORRT = Target("tensorrt", (10, 3))
TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
RUNTIME_NAMES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}


def device_build_command(source: DeploySource, layout: Layout) -> str:
    """The ``trtexec`` line that builds the engine on a JetPack device (TensorRT 10.x) from the package's ONNX."""
    model = load_onnx(source.graph, load_external_data=False)
    plan = plan_precision(model, source.precision, JETPACK_TENSORRT)
    max_batch = source.max_batch or source.meta.batch
    options = BuildOptions(
        min_batch=1 if source.max_batch else max_batch,
        opt_batch=source.opt_batch,
        max_batch=max_batch,
        plugins=[TRTEXEC_PLUGIN_LIB] if source.uses_plugin else [],
    )
    return command_line(JETPACK_TENSORRT, layout.onnx, layout.device_engine, plan, options, source.meta)


def _summary(source: DeploySource) -> str:
    meta = source.meta
    batch = f"dynamic, up to {source.max_batch}" if source.max_batch else f"static {meta.batch}"
    return (
        f"{meta.arch} IdleViT ({meta.img_size} px, {meta.num_classes} classes), idle layers {meta.idle_layers} "
        f"keeping {meta.keep_tokens} of {meta.num_tokens} image tokens; precision {source.precision}; batch {batch}."
    )


def _input_note(source: DeploySource) -> str:
    meta = source.meta
    resize = math.floor(meta.img_size / meta.crop_pct)
    crop = f"resize the short side to {resize} px ({meta.interpolation}), center crop {meta.img_size} px"
    if meta.folded_normalization:
        return (
            f"Input `{IMAGES}`: NCHW RGB pixels 0..255 as floats after {crop}; the normalisation is folded "
            f"into the graph. Output `{LOGITS}`."
        )
    return (
        f"Input `{IMAGES}`: NCHW, already normalised: {crop}, then mean {meta.mean} and std {meta.std}. "
        f"Output `{LOGITS}`."
    )


def _plugin_build(source: DeploySource, layout: Layout) -> str:
    if not source.uses_plugin:
        return ""
    op = source.meta.plugin or "idlevit::IdleScatter"
    return f"""The graph uses the fused `{op}` plugin. Build it on the device first from its sources in
`{layout.plugin_sources}` (JetPack has CUDA and the TensorRT headers; Orin is SM 8.7, Xavier SM 7.2):

```bash
cmake -S {PLUGIN_SOURCES} -B {PLUGIN_BUILD} -DCMAKE_CUDA_ARCHITECTURES=87
cmake --build {PLUGIN_BUILD} -j
```

`{TRTEXEC_PLUGIN_LIB}` is for trtexec (`--dynamicPlugins`); Triton and nvinfer only load a library,
so they take `{LOADTIME_PLUGIN_LIB}`, which registers its creator when loaded (`{PLUGIN_SOURCES}/README.md`).
"""


def _precision_note(source: DeploySource) -> str:
    if source.precision == FP16:
        return (
            "FP16 on JetPack's TensorRT 10.x takes the builder-flag path: `--fp16` with "
            "`--precisionConstraints=obey` and the scoring path (norm1, CLS query, scores, TopK) pinned to FP32 "
            "by `--layerPrecisions`, so FP16 rounding cannot change which tokens are kept."
        )
    if source.precision == FP32:
        how = (
            "package the ONNX with `--precision fp16`"
            if source.kind == KIND_ONNX
            else "package the ONNX with `python -m engines.package` and `--precision fp16`"
        )
        return (
            f"This builds FP32. For FP16, {how}: the line then pins the scoring path to FP32 (JetPack's "
            "TensorRT 10.x takes the FP16 builder flag plus per-layer FP32, not a strongly typed graph)."
        )
    return ""


def _device_build(source: DeploySource, layout: Layout, why: str) -> str:
    if source.precision not in PRECISIONS:
        return (
            f"{why}. The precision plan cannot build {source.precision} yet (it knows {', '.join(PRECISIONS)}), "
            "so there is no trtexec line for it here."
        )
    parts = [
        f"{why} with JetPack's `trtexec` (`{TRTEXEC}`), from the package folder:",
        _plugin_build(source, layout).strip("\n"),
        f"```bash\n{device_build_command(source, layout)}\n```",
        _precision_note(source),
    ]
    return "\n\n".join(part for part in parts if part)


def _triton(source: DeploySource, layout: Layout) -> str:
    plugins = f" --backend-config=tensorrt,plugins=$PWD/{LOADTIME_PLUGIN_LIB}" if source.uses_plugin else ""
    if source.kind == KIND_ONNX:
        what = (
            f"`{layout.triton_entry}/` is a model repository entry for Triton's ONNX Runtime backend "
            f"(`onnxruntime_onnx`): `{layout.triton_config}`, the model `{layout.triton_model}` and the class "
            f"names `{layout.triton_labels}`. It runs the ONNX as it is. A TensorRT engine needs a "
            "`tensorrt_plan` entry: build the engine with `python -m export.trt` where Triton's TensorRT and "
            "GPU are, and package that engine with `python -m engines.package`."
        )
    else:
        what = (
            f"`{layout.triton_entry}/` is a model repository entry for Triton's TensorRT backend (`tensorrt_plan`): "
            f"`{layout.triton_config}`, the engine `{layout.triton_model}` and the class names "
            f"`{layout.triton_labels}`. Triton's TensorRT must be the version that built the engine."
        )
    return f"""## Triton Inference Server

{what}

```bash
tritonserver --model-repository=$PWD/{layout.triton_repository}{plugins}
```

{_input_note(source)} Ask for `class_count` to get labelled top-k from Triton's classification extension.
"""


def _deepstream(source: DeploySource, layout: Layout) -> str:
    mode = network_mode(source.precision)
    if layout.deepstream_config is None:
        return f"## DeepStream\n\nNo nvinfer config: {mode.why}.\n"
    key, path = model_entry(source, layout)
    folder = posixpath.dirname(layout.deepstream_config)
    target = posixpath.normpath(posixpath.join(folder, path))
    if key == "onnx-file":
        model = (
            f"nvinfer builds the FP32 engine itself from `{target}` (`onnx-file`) on its first start, which "
            "takes a while."
        )
    elif source.kind == KIND_ONNX:
        model = (
            f"`model-engine-file` names `{target}`: build it first with the trtexec line above. nvinfer must "
            f"not build this engine itself from the ONNX: its {source.precision} build has no per-layer FP32, "
            "so rounding could change which tokens are kept."
        )
    else:
        model = f"`model-engine-file` names the engine `{target}`."
    pre = preprocessing(source.meta)
    return f"""## DeepStream

`{layout.deepstream_config}` is a primary classifier for `nvinfer` (`network-type=1`,
`network-mode={mode.value}` for {source.precision}; class names in `{layout.deepstream_labels}`). {model}

```bash
VIDEO=your_video.mp4   # any H.264 MP4
gst-launch-1.0 filesrc location="$VIDEO" ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 \\
  nvstreammux name=m batch-size=1 width=1280 height=720 ! \\
  nvinfer config-file-path={layout.deepstream_config} ! nvvideoconvert ! nvdsosd ! nv3dsink
```

{pre.note()} nvinfer also scales the whole frame to {source.meta.img_size} x {source.meta.img_size}
(no resize-then-center-crop). `classifier-threshold` is below any logit, so nvinfer reports the
arg-max class of the logits.
"""


def _built_by(source: DeploySource) -> str:
    """``built by TensorRT 10.3.0 on Orin (compute capability 8.7)``, from the sidecar."""
    engine = source.engine
    assert engine is not None
    runtime = RUNTIME_NAMES.get(engine.runtime, engine.runtime)
    if engine.gpu:
        where = (
            f" on {engine.gpu.get('name', 'a GPU')} (compute capability {engine.gpu.get('compute_capability', '?')})"
        )
    elif engine.compute_capabilities:
        where = f" for compute capabilities {', '.join(engine.compute_capabilities)}"
    else:
        where = ""
    return f"built by {runtime} {engine.runtime_version}{where}"


def _onnx_package(source: DeploySource, layout: Layout) -> list[str]:
    if source.precision == FP32:
        use = (
            "Triton below runs the ONNX as it is and nvinfer builds its FP32 engine itself; a TensorRT "
            "application of your own needs the engine."
        )
    else:
        use = f"DeepStream below loads this {source.precision} engine; build it before starting the pipeline."
    why = (
        f"## TensorRT engine on the device (Jetson)\n\n{use} An engine runs only on the GPU and TensorRT "
        f"version that built it, so build it on the device from `{layout.onnx}`"
    )
    return [_device_build(source, layout, why), _triton(source, layout), _deepstream(source, layout)]


def _tensorrt_package(source: DeploySource, layout: Layout) -> list[str]:
    why = (
        f"## The engine\n\n`{layout.triton_model}` is the engine, {_built_by(source)}. It runs only "
        "with that TensorRT version on a GPU of that compute capability, and both configs read it. Anywhere "
        f"else (a Jetson, another GPU or TensorRT) rebuild it on the device from `{layout.onnx}` into the same file"
    )
    return [_device_build(source, layout, why), _triton(source, layout), _deepstream(source, layout)]


def _rtx_package(source: DeploySource, layout: Layout) -> list[str]:
    engine = source.engine
    assert engine is not None
    runs = f"""## Running the TensorRT-RTX engine

`{layout.engine}` is a TensorRT-RTX engine, {_built_by(source)}. Only the TensorRT-RTX runtime loads
it, on an RTX GPU. With this toolkit and TensorRT-RTX installed (the toolkit's `rtx` extra), from the
package folder:

```bash
python -m engines.infer --engine {layout.engine} --labels {layout.labels} photo.jpg
```

Keep `{layout.engine_sidecar}` (its sidecar) beside it; without a usable GPU `engines.infer` runs
`{layout.built_from or layout.onnx}`, the graph the engine was built from, in ONNX Runtime instead
and says so.
"""
    why = (
        "## Triton, DeepStream and Jetson\n\nTriton (`tensorrt_plan`), DeepStream (nvinfer) and Jetson load "
        "TensorRT engines, and a TensorRT-RTX engine is not one: they need a TensorRT engine built from "
        f"`{layout.onnx}` on the device. Build it"
    )
    packaged = (
        "\n\nFor a Triton entry and a DeepStream config, package the ONNX: "
        f"`python -m engines.package --onnx {layout.onnx}` writes them, with this line."
    )
    return [runs, _device_build(source, layout, why) + packaged]


def deploy_markdown(source: DeploySource, layout: Layout, labels_note: str = "") -> str:
    """The DEPLOY.md text of a package."""
    if source.kind == KIND_ONNX:
        sections = _onnx_package(source, layout)
    elif source.kind == KIND_TENSORRT:
        sections = _tensorrt_package(source, layout)
    elif source.kind == KIND_RTX:
        sections = _rtx_package(source, layout)
    else:
        raise ValueError(f"unknown package kind {source.kind!r}")
    head = f"# Deploying {layout.name}\n\n{_summary(source)}"
    if labels_note:
        head += f"\n{labels_note}"
    return "\n\n".join([head, *(s.strip("\n") for s in sections)]) + "\n"
