"""Names in the artefact contract: the exported graph's inputs and outputs, the bundled dataset, and the
one naming rule of every file the commands write.

The rule (the README's "What each command writes" table states it for users): a model has a stem
(``my`` for ``my.pth``); every artefact made from it is ``<stem>`` plus what it is.

* export: ``<stem>[_indices][_plugin][_pixels][_ort].onnx`` (:func:`export_name`);
* reduced-precision graph: ``<stem>_fp16_mixed.onnx``, ``<stem>_int8.onnx``, ``<stem>_fp8.onnx``
  (:func:`reduced_graph_name`);
* engine: ``<stem>_<precision>.engine`` for every runtime, TensorRT and TensorRT-RTX alike
  (:func:`engine_name`); the engine a package's ``trtexec`` line builds: ``<stem>_<precision>.plan``
  (:func:`plan_name`). A reduced graph's own stem gives its FP32 source's names (``my_int8.onnx`` and
  ``my_fp16_mixed.onnx`` build ``my_int8.engine`` and ``my_fp16.engine``, never ``my_int8_int8``);
* package folder: ``<model file stem>_deploy`` beside the model (:func:`package_dir_name`).
"""

from __future__ import annotations

from collections.abc import Iterable

IMAGES = "images"
LOGITS = "logits"
#: The bundled dataset: scikit-learn's 8x8 digits, as `--data digits` names it (see idlevit.data).
DIGITS = "digits"

#: What an export's name says about its graph, in the order the tags are joined.
GRAPH_TAGS = ("indices", "plugin", "pixels", "ort")
#: Precisions whose reduced graph is a mixed-precision graph (FP32 scoring path, the rest in that precision).
MIXED = ("fp16",)
#: Precisions whose reduced graph is a Q/DQ graph.
QUANTIZED = ("int8", "fp8")


def kept_indices_name(layer: int) -> str:
    """Name of the graph output carrying the kept token positions of idle block ``layer``."""
    return f"kept_indices_{layer}"


def token_scores_name(layer: int) -> str:
    """Reference-only output: the (B, N) CLS scores of the image tokens in idle block ``layer``."""
    return f"token_scores_{layer}"


def export_name(stem: str, tags: Iterable[str] = ()) -> str:
    """``<stem>[_indices][_plugin][_pixels][_ort].onnx``: the tags (of :data:`GRAPH_TAGS`) in that order."""
    wanted = list(tags)
    unknown = [tag for tag in wanted if tag not in GRAPH_TAGS]
    if unknown:
        raise ValueError(f"graph tags are {GRAPH_TAGS}, not {unknown}")
    return "_".join([stem, *(tag for tag in GRAPH_TAGS if tag in wanted)]) + ".onnx"


def _reduced_suffix(precision: str) -> str:
    if precision in MIXED:
        return f"_{precision}_mixed"
    if precision in QUANTIZED:
        return f"_{precision}"
    raise ValueError(f"a reduced-precision graph is one of {MIXED + QUANTIZED}, not {precision!r}")


def reduced_graph_name(stem: str, precision: str) -> str:
    """``<stem>_fp16_mixed.onnx`` (mixed precision) or ``<stem>_int8.onnx`` / ``<stem>_fp8.onnx`` (Q/DQ)."""
    return f"{stem}{_reduced_suffix(precision)}.onnx"


def model_stem(stem: str, precision: str) -> str:
    """The stem of the model a file of ``precision`` was made from: ``my_fp16_mixed``, ``my_int8`` and
    ``my_fp16`` (an engine's, ``my_fp32`` too) of their precision give ``my``; any other stem is its own."""
    for suffix in (f"_{precision}_mixed", f"_{precision}"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def engine_name(stem: str, precision: str) -> str:
    """``<stem>_<precision>.engine``, whatever the runtime; a reduced graph's stem gives its source's."""
    return f"{model_stem(stem, precision)}_{precision}.engine"


def plan_name(stem: str, precision: str) -> str:
    """``<stem>_<precision>.plan``: the engine a package's ``trtexec`` line builds on the device."""
    return f"{model_stem(stem, precision)}_{precision}.plan"


def package_dir_name(file_stem: str) -> str:
    """``<model file stem>_deploy``: the package folder of ``my.onnx`` is ``my_deploy``, of ``my_fp16.engine``
    ``my_fp16_deploy``."""
    return f"{file_stem}_deploy"
