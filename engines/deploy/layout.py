"""Where every file of a package goes, per package kind, as paths relative to the package folder.

Three kinds, one per thing that can be packaged:

* ``onnx``: an exported ONNX. Triton serves it with ONNX Runtime; DeepStream and Jetson run a
  TensorRT engine built from it on the device.
* ``tensorrt``: an engine built by TensorRT. Triton (``tensorrt_plan``) and DeepStream
  (``model-engine-file``) load it where its TensorRT version and GPU are; elsewhere it is rebuilt
  on the device from the ONNX the package carries.
* ``tensorrt-rtx``: an engine built by TensorRT-RTX, which only the TensorRT-RTX runtime loads
  (RTX GPUs). No Triton entry and no DeepStream config: those need a TensorRT engine built from
  the ONNX on the device.

Plain data, no onnx import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from idlevit.errors import ToolkitError
from idlevit.names import plan_name

KIND_ONNX, KIND_TENSORRT, KIND_RTX = "onnx", "tensorrt", "tensorrt-rtx"
KINDS = (KIND_ONNX, KIND_TENSORRT, KIND_RTX)
#: What an earlier package wrote here (paths and sha256), so that a new one replaces only those.
MANIFEST = ".idlevit-package.json"
GUIDE = "DEPLOY.md"
LABELS = "labels.txt"
DEEPSTREAM_CONFIG = "deepstream/config_infer_idlevit.txt"
#: The plugin's sources (CMake, CUDA, C++), copied into a package whose graph uses the plugin.
PLUGIN_SOURCES = "plugins"
#: What ``cmake --build build`` makes from them: trtexec loads the first (``--dynamicPlugins``);
#: Triton's TensorRT backend and nvinfer only ``dlopen`` a library, so they need the second,
#: which registers its creator when loaded (plugins/README.md).
PLUGIN_BUILD = "build"
TRTEXEC_PLUGIN_LIB = f"{PLUGIN_BUILD}/libidlevit_plugins.so"
LOADTIME_PLUGIN_LIB = f"{PLUGIN_BUILD}/libidlevit_plugins_static.so"

_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
#: Longest model name: it names a folder and files (``<name>_fp16.plan`` and their temporary names), which
#: must stay below the file systems' 255-byte limit.
MAX_NAME = 128


def check_name(name: str) -> str:
    """A Triton model name, also a folder name: letters, digits, ``-``, ``_``, ``.``; not ``.`` or ``..``;
    at most :data:`MAX_NAME` characters."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ToolkitError(
            f"--name {name[:60]!r} is not a plain model name; use letters, digits, '-', '_' and '.' only "
            "(no path separators, not '.' or '..')"
        )
    if len(name) > MAX_NAME:
        raise ToolkitError(f"--name is {len(name)} characters long; use at most {MAX_NAME}")
    return name


def default_name(stem: str) -> str:
    """A model name from a file name: runs of other characters become ``_``; cut to :data:`MAX_NAME`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.")[:MAX_NAME].strip("_.") or "idlevit"


@dataclass(frozen=True)
class Layout:
    """Paths (relative, ``/``-separated) of one package. ``None``: this kind has no such file."""

    kind: str
    name: str
    precision: str
    onnx: str  # the ONNX in the package that device engines are built from
    device_engine: str  # where the guide's trtexec line writes the engine built on the device
    triton_config: str | None = None
    triton_model: str | None = None
    triton_labels: str | None = None
    deepstream_config: str | None = None
    deepstream_labels: str | None = None
    engine: str | None = None  # a TensorRT-RTX engine, as built
    engine_sidecar: str | None = None
    built_from: str | None = None  # the graph the engine was built from, when not ``onnx`` (FP16: mixed precision)
    labels: str | None = None  # class names beside the engine (TensorRT-RTX)
    plugin_sources: str | None = None

    @property
    def triton_repository(self) -> str | None:
        return self.triton_config.split("/", 1)[0] if self.triton_config else None

    @property
    def triton_entry(self) -> str | None:
        return self.triton_config.rsplit("/", 1)[0] if self.triton_config else None


def package_layout(
    kind: str,
    name: str,
    precision: str,
    onnx_name: str,
    engine_name: str | None = None,
    plugin: bool = False,
    deepstream: bool = True,
    built_from_name: str | None = None,
) -> Layout:
    """The layout of a package of ``kind`` for model ``name``.

    ``onnx_name`` is the file name of the graph (copied to the package root for engines),
    ``engine_name`` the engine's (TensorRT-RTX: copied as is, with its sidecar), ``built_from_name``
    the file name of the graph a TensorRT-RTX engine was built from when it is not that graph
    (copied beside it: ``engines.infer`` runs it where the engine cannot run).
    """
    check_name(name)
    plugins = PLUGIN_SOURCES if plugin else None
    own_engine = plan_name(name, precision)  # demo_int8 builds demo_int8.plan, not demo_int8_int8.plan
    if kind == KIND_RTX:
        if not engine_name:
            raise ValueError("a TensorRT-RTX package needs the engine's file name")
        return Layout(
            kind,
            name,
            precision,
            onnx=onnx_name,
            device_engine=own_engine,
            engine=engine_name,
            engine_sidecar=engine_name + ".json",
            built_from=built_from_name if built_from_name != onnx_name else None,
            labels=LABELS,
        )
    entry = f"triton/{name}"
    model = f"{entry}/1/model.{'onnx' if kind == KIND_ONNX else 'plan'}"
    common = dict(
        triton_config=f"{entry}/config.pbtxt",
        triton_model=model,
        triton_labels=f"{entry}/{LABELS}",
        deepstream_config=DEEPSTREAM_CONFIG if deepstream else None,
        deepstream_labels=f"deepstream/{LABELS}" if deepstream else None,
        plugin_sources=plugins,
    )
    if kind == KIND_ONNX:
        return Layout(kind, name, precision, onnx=model, device_engine=own_engine, **common)
    if kind == KIND_TENSORRT:
        # the engine rebuilt on the device replaces the packaged one, which both configs read
        return Layout(kind, name, precision, onnx=onnx_name, device_engine=model, **common)
    raise ValueError(f"unknown package kind {kind!r}")
