"""The DeepStream ``nvinfer`` config of a package: a primary (full-frame) classifier.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels, with one factor
for all channels. A graph exported with ``--fold-normalization`` takes those pixels as they are
(its metadata says ``folded_normalization``), so the config is exact: factor 1, offsets 0. For
any other graph timm's ``(x / 255 - mean[c]) / std[c]`` is matched exactly only when the three
stds are equal; otherwise the mean std stands in for all three and :class:`Preprocessing` says
how far off each channel is.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from idlevit.errors import ToolkitError
from idlevit.metadata import ExportMetadata
from idlevit.names import LOGITS

from ..plan import FP16, FP32
from .layout import KIND_ONNX, LOADTIME_PLUGIN_LIB, Layout
from .source import DeploySource

INT8, FP8 = "int8", "fp8"
#: Below any logit: the graph outputs logits, and nvinfer's default classifier parser reports the
#: arg-max class whose value passes the threshold.
CLASSIFIER_THRESHOLD = "-1e9"
#: Relative differences below this are rounding, not an approximation.
EXACT = 1e-9


@dataclass(frozen=True)
class NetworkMode:
    """nvinfer's ``network-mode`` for a precision; ``None`` where nvinfer has none (``why`` says so)."""

    value: int | None
    why: str = ""


#: nvinfer ``network-mode`` per precision (0 FP32, 1 INT8, 2 FP16). A new precision is one entry.
NETWORK_MODES: dict[str, NetworkMode] = {
    FP32: NetworkMode(0),
    INT8: NetworkMode(1),
    FP16: NetworkMode(2),
    FP8: NetworkMode(None, "nvinfer has no FP8 network-mode (it knows 0 FP32, 1 INT8 and 2 FP16)"),
}


def network_mode(precision: str) -> NetworkMode:
    try:
        return NETWORK_MODES[precision]
    except KeyError:
        raise ToolkitError(
            f"precision {precision!r} has no DeepStream network-mode entry; known: {', '.join(NETWORK_MODES)}"
        ) from None


@dataclass(frozen=True)
class Preprocessing:
    """nvinfer's preprocessing for a graph and how close it comes to the graph's own."""

    net_scale_factor: float
    offsets: list[float]
    folded: bool  # the graph takes 0..255 pixels (normalisation folded into it)
    std: list[float]
    channel_errors: list[float]  # nvinfer's input / the graph's expected input - 1, per channel

    @property
    def max_error(self) -> float:
        return max(abs(e) for e in self.channel_errors)

    @property
    def exact(self) -> bool:
        return self.max_error < EXACT

    def note(self) -> str:
        """One sentence for DEPLOY.md and the command's output."""
        if self.folded:
            return (
                "DeepStream input is exact: the graph takes RGB pixels 0..255 (its normalisation was folded in by "
                "`python -m export.onnx --fold-normalization`), so net-scale-factor is 1 and the offsets are 0."
            )
        if self.exact:
            return (
                f"DeepStream input is exact: one std ({self.std[0]:.4g}) for all channels, so nvinfer's single "
                "net-scale-factor and per-channel offsets reproduce the normalisation."
            )
        mean_std = sum(self.std) / len(self.std)
        per_channel = ", ".join(f"{c} {e:+.1%}" for c, e in zip("RGB", self.channel_errors))
        return (
            f"DeepStream input is approximate: nvinfer has one net-scale-factor for all channels, so the "
            f"per-channel std ({', '.join(f'{s:.4g}' for s in self.std)}) is replaced by its mean {mean_std:.4g} "
            f"and the network input is off by up to {self.max_error:.1%} per channel ({per_channel}); export "
            "with `python -m export.onnx --fold-normalization` for an exact DeepStream input."
        )


def preprocessing(meta: ExportMetadata) -> Preprocessing:
    """``net-scale-factor`` and ``offsets`` for the graph, and the error of the single factor per channel."""
    if meta.folded_normalization:
        return Preprocessing(1.0, [0.0, 0.0, 0.0], True, list(meta.std), [0.0] * len(meta.std))
    mean_std = sum(meta.std) / len(meta.std)
    errors = [s / mean_std - 1.0 for s in meta.std]
    return Preprocessing(1.0 / (255.0 * mean_std), [255.0 * m for m in meta.mean], False, list(meta.std), errors)


def model_entry(source: DeploySource, layout: Layout) -> tuple[str, str]:
    """(key, path relative to the config) of the model nvinfer loads.

    An FP32 ONNX is built by nvinfer itself (``onnx-file``); at any other precision nvinfer's own
    build would have no per-layer FP32, so FP16 rounding could change the kept tokens: it loads
    the engine built with the guide's trtexec line (``model-engine-file``), as for an engine package.
    """
    if layout.deepstream_config is None:
        raise ValueError(f"a {layout.kind} package has no DeepStream config")
    folder = posixpath.dirname(layout.deepstream_config)
    if source.kind == KIND_ONNX and source.precision == FP32:
        return "onnx-file", posixpath.relpath(layout.onnx, folder)
    return "model-engine-file", posixpath.relpath(layout.device_engine, folder)


def label_line(labels: list[str]) -> str:
    """nvinfer's classifier label file: one line, classes separated by ``;``."""
    for i, name in enumerate(labels):
        if ";" in name:
            raise ToolkitError(
                f"class name {i} ({name!r}) contains ';', which separates classes in nvinfer's label file; "
                "rename it in the labels file"
            )
    return ";".join(labels) + "\n"


def deepstream_config(source: DeploySource, layout: Layout, plugin_lib: str | None = None, batch_size: int = 1) -> str:
    """nvinfer ``[property]`` group for a primary classifier, paths relative to the config's folder."""
    mode = network_mode(source.precision)
    if mode.value is None:
        raise ToolkitError(f"no DeepStream config for a {source.precision} model: {mode.why}")
    if layout.deepstream_config is None or layout.deepstream_labels is None:
        raise ValueError(f"a {layout.kind} package has no DeepStream config")
    folder = posixpath.dirname(layout.deepstream_config)
    pre = preprocessing(source.meta)
    key, model_path = model_entry(source, layout)
    meta = source.meta
    lines = [
        f"# nvinfer config for {source.model.name}: {meta.arch} IdleViT, idle layers {meta.idle_layers}, "
        f"{meta.img_size} px, {meta.num_classes} classes, {source.precision}",
        "# written by `python -m engines.package`; DEPLOY.md (one folder up) says how to run it",
    ]
    if key == "model-engine-file" and source.kind == KIND_ONNX:
        lines.append(f"# build {layout.device_engine} first with the trtexec line in DEPLOY.md")
    if not pre.exact:
        lines.append(f"# net-scale-factor uses the mean std: input off by up to {pre.max_error:.1%} per channel")
    lines += [
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={pre.net_scale_factor:.10g}",
        "offsets=" + ";".join(f"{o:.6g}" for o in pre.offsets),
        "model-color-format=0",
        f"{key}={model_path}",
        f"labelfile-path={posixpath.relpath(layout.deepstream_labels, folder)}",
        f"batch-size={batch_size}",
        f"network-mode={mode.value}",
        "network-type=1",
        "process-mode=1",
        "gie-unique-id=1",
        f"classifier-threshold={CLASSIFIER_THRESHOLD}",
        f"output-blob-names={LOGITS}",
        "maintain-aspect-ratio=0",
    ]
    if source.uses_plugin:
        lines.append(f"custom-lib-path={plugin_lib or posixpath.relpath(LOADTIME_PLUGIN_LIB, folder)}")
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
