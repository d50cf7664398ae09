"""Thresholds of the one judge, by the precision a graph or engine computes in.

Every "does this artefact still compute the model?" question (parity against PyTorch, the
reduced-precision check against the FP32 graph, the export's own check) is judged by one of
these presets, with user overrides on top. Plain data: the commands list them in ``--help``
without importing anything heavy.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

from idlevit.errors import ToolkitError

#: The values each threshold can take: (low, high, high included). Every one is a finite number >= low;
#: a NaN would make every comparison false (a check silently dropped), a negative tolerance or a
#: fraction above 1 a check that cannot pass.
THRESHOLD_RANGES: dict[str, tuple[float, float, bool]] = {
    "atol": (0.0, math.inf, False),
    "rtol": (0.0, math.inf, False),
    "min_cosine": (-1.0, 1.0, True),
    "min_top1": (0.0, 1.0, True),
    "max_mismatch": (0.0, 1.0, True),
    "tie_rtol": (0.0, 1.0, False),
}


def _range_text(name: str) -> str:
    low, high, closed = THRESHOLD_RANGES[name]
    if math.isinf(high):
        return f"a finite number >= {low:g}"
    return f"a number in [{low:g}, {high:g}{']' if closed else ')'}"


def check_threshold(name: str, value: float) -> float:
    """``value`` when it is a valid ``name`` threshold (:data:`THRESHOLD_RANGES`), else a one-line ToolkitError."""
    low, high, closed = THRESHOLD_RANGES[name]
    number = float(value)
    if not (math.isfinite(number) and low <= number and (number <= high if closed else number < high)):
        flag = "--" + name.replace("_", "-")
        raise ToolkitError(f"{flag} {value!r} is not {_range_text(name)}; see the presets in --help")
    return number


def threshold_flag(name: str) -> Callable[[str], float]:
    """An argparse ``type=`` for the ``name`` threshold: a bad value is a usage error (exit 2) naming its range."""

    def parse(text: str) -> float:
        try:
            return check_threshold(name, float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {_range_text(name)}") from None
        except ToolkitError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_range_text(name)}") from None

    parse.__name__ = name  # argparse names the type in its own messages
    return parse


@dataclass(frozen=True)
class Thresholds:
    """What a backend must reach against the reference, per group of inputs (kind x batch size)."""

    atol: float  # max abs logit error; a batch fails only when it exceeds atol AND rtol (Polygraphy's rule)
    rtol: float  # max relative logit error, |a - b| / |b|
    min_cosine: float  # cosine similarity of the batch's logits
    min_top1: float  # fraction of samples with the reference's arg-max class, near-ties counted as agreeing
    max_mismatch: float  # fraction of samples, per idle layer, whose kept set differs beyond a near-tie
    tie_rtol: float  # near-tie tolerance on the reference's token scores and logits, relative to the row's max |value|

    def __post_init__(self) -> None:
        for name in THRESHOLD_RANGES:
            check_threshold(name, getattr(self, name))

    def with_overrides(self, **changes: float | None) -> Thresholds:
        """A copy with the given thresholds replaced (``None``: keep the preset's), each checked."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: Defaults by the precision a graph or engine computes in (FP32 strict, reduced precisions looser).
PRESETS: dict[str, Thresholds] = {
    "fp32": Thresholds(atol=1e-3, rtol=1e-3, min_cosine=0.99999, min_top1=1.0, max_mismatch=0.0, tie_rtol=1e-4),
    "tf32": Thresholds(atol=2e-2, rtol=2e-2, min_cosine=0.9995, min_top1=0.98, max_mismatch=0.02, tie_rtol=5e-3),
    "fp16": Thresholds(atol=5e-2, rtol=5e-2, min_cosine=0.999, min_top1=0.98, max_mismatch=0.02, tie_rtol=1e-2),
    "bf16": Thresholds(atol=1e-1, rtol=1e-1, min_cosine=0.998, min_top1=0.97, max_mismatch=0.04, tie_rtol=2e-2),
    # INT8 / FP8 Q/DQ graphs against the FP32 graph, set from the bundled demo on the digits test split
    # (450 images, batches of 8; `python -m benchmarks.quantization`): INT8 plans that keep the selection
    # (GEMMs only) reach max abs logit error <= 0.39, cosine >= 0.9991, mismatches beyond 2% ties <= 1.6%
    # per idle layer; plans that quantize the attention core or the residual stream reach 1.4-1.6, <= 0.9893
    # and >= 29%. FP8 (3 mantissa bits) rounds more but flips less: GEMM plans <= 0.63, >= 0.994, <= 4.2%;
    # attention core or residual stream quantized 0.65-0.80, >= 0.995 (cosine does not tell them apart), >= 7.6%.
    "int8": Thresholds(atol=5e-1, rtol=5e-1, min_cosine=0.998, min_top1=0.98, max_mismatch=0.05, tie_rtol=2e-2),
    "fp8": Thresholds(atol=1.0, rtol=5e-1, min_cosine=0.99, min_top1=0.98, max_mismatch=0.06, tie_rtol=2e-2),
}
THRESHOLD_FIELDS = tuple(f.name for f in fields(Thresholds))


def preset(precision: str) -> Thresholds:
    """The default thresholds of a precision name (as recorded in the ONNX metadata)."""
    try:
        return PRESETS[precision.lower()]
    except KeyError:
        raise ToolkitError(
            f"no default thresholds for precision {precision!r}; pass --precision one of {', '.join(PRESETS)}"
        ) from None
