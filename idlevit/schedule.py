"""Idle schedules: which blocks idle tokens, and how many image tokens each keeps.

Checkpoints store no schedule, so it always comes from the user (or the published default)
and is recorded in every exported artefact.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .configs import ArchConfig, published_keep_ratios
from .errors import ScheduleError

DEFAULT_KEEP_RATE = 0.7


@dataclass(frozen=True)
class Schedule:
    """Idle layers (block indices) and the keep ratio of each; ``k = int(N * ratio)``."""

    idle_layers: tuple[int, ...]
    keep_ratios: tuple[float, ...]

    def keep_tokens(self, num_tokens: int) -> tuple[int, ...]:
        """Static number of image tokens each idle layer keeps, as the reference computes it."""
        return tuple(int(num_tokens * ratio) for ratio in self.keep_ratios)

    def validate(self, depth: int, num_tokens: int) -> Schedule:
        """Raise :class:`ScheduleError` naming the first problem; return self when valid."""
        layers, ratios = self.idle_layers, self.keep_ratios
        if len(layers) != len(ratios):
            raise ScheduleError(
                f"{len(layers)} idle layers but {len(ratios)} keep ratios; give one ratio per idle layer"
            )
        bad_layers = [layer for layer in layers if not 0 <= layer < depth]
        if bad_layers:
            raise ScheduleError(f"idle layers {_shown(bad_layers)} are outside the model's blocks 0..{depth - 1}")
        if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
            raise ScheduleError(f"idle layers {_shown(list(layers), 12)} must be strictly increasing")
        bad_ratios = [r for r in ratios if not (0.0 < r <= 1.0) or math.isnan(r)]
        if bad_ratios:
            raise ScheduleError(f"keep ratios {_shown(bad_ratios)} are outside (0, 1]")
        for layer, ratio, k in zip(layers, ratios, self.keep_tokens(num_tokens)):
            if k < 1:
                raise ScheduleError(
                    f"keep ratio {ratio:g} at layer {layer} keeps {k} of {num_tokens} tokens; "
                    f"use a ratio >= {1 / num_tokens:.4f} so every idle layer keeps at least one token"
                )
        return self

    def to_dict(self) -> dict[str, list]:
        return {"idle_layers": list(self.idle_layers), "keep_ratios": list(self.keep_ratios)}

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        return cls(tuple(int(x) for x in data["idle_layers"]), tuple(float(x) for x in data["keep_ratios"]))


def resolve_schedule(
    cfg: ArchConfig,
    keep_rate: float | None = None,
    idle_layers: Sequence[int] | None = None,
    keep_ratios: Sequence[float] | None = None,
) -> Schedule:
    """Build and validate a schedule: explicit lists win, the rest is the published default.

    ``keep_rate`` (default 0.7) fills the ratios with the published r, r², r³ pattern over the
    default idle layers; explicit ``idle_layers``/``keep_ratios`` replace either list.
    """
    rate = DEFAULT_KEEP_RATE if keep_rate is None else float(keep_rate)
    if not 0.0 < rate <= 1.0:
        raise ScheduleError(f"keep rate {rate:g} is outside (0, 1]; the published rates are 0.5 to 0.9")
    layers = tuple(int(x) for x in idle_layers) if idle_layers is not None else cfg.idle_layers
    if keep_ratios is not None:
        ratios = tuple(float(x) for x in keep_ratios)
    else:
        ratios = published_keep_ratios(rate, len(layers))
    return Schedule(layers, ratios).validate(cfg.depth, cfg.num_tokens)


#: Most idle layers a command line may name: far above any registered depth (LV-ViT-M has 20 blocks),
#: low enough that a mistyped range (``0..100000000``) is refused before it is expanded.
MAX_LAYERS = 1000


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _shown(values: Sequence[object], limit: int = 6) -> str:
    """A list for an error line: the first few items and how many more."""
    items = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:limit])
    return f"[{items}{f', ... ({len(values) - limit} more)' if len(values) > limit else ''}]"


def parse_layers(text: str) -> list[int]:
    """Parse ``"3..11"`` (inclusive range) or ``"3,4,5"`` (or a mix) into block indices.

    Empty text, a descending range (``5..3``) and more than :data:`MAX_LAYERS` layers are refused
    (ranges are measured before they are expanded)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ScheduleError(
            f"no idle layers in {_quoted(text)}; write e.g. '3..11' or '3,4,5' (omit --idle-layers for the default)"
        )
    spans: list[tuple[int, int]] = []
    try:
        for part in parts:
            lo, hi = part.split("..") if ".." in part else (part, part)
            spans.append((int(lo), int(hi)))
    except ValueError:
        raise ScheduleError(f"cannot read idle layers {_quoted(text)}; write e.g. '3..11' or '3,4,5'") from None
    for lo, hi in spans:
        if hi < lo:
            raise ScheduleError(f"idle layer range {lo}..{hi} runs backwards; write it low..high, e.g. {hi}..{lo}")
    count = sum(hi - lo + 1 for lo, hi in spans)
    if count > MAX_LAYERS:
        raise ScheduleError(
            f"idle layers {_quoted(text)} name {count} blocks, more than any model has (at most {MAX_LAYERS}); "
            "give layers inside the model's depth, e.g. '3..11'"
        )
    return [layer for lo, hi in spans for layer in range(lo, hi + 1)]


def parse_ratios(text: str) -> list[float]:
    """Parse ``"0.7,0.7,0.49"`` into keep ratios; empty text is refused."""
    try:
        ratios = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ScheduleError(f"cannot read keep ratios {_quoted(text)}; write e.g. '0.7,0.7,0.49'") from None
    if not ratios:
        raise ScheduleError(
            f"no keep ratios in {_quoted(text)}; write e.g. '0.7,0.7,0.49' (omit --keep-ratios for the default)"
        )
    return ratios


def add_schedule_arguments(group: argparse._ArgumentGroup) -> None:
    """``--keep-rate``, ``--idle-layers`` and ``--keep-ratios``: the schedule flags of every command."""
    group.add_argument(
        "--keep-rate",
        type=float,
        default=None,
        help="base keep rate r; idle layers keep r, r², r³ in three groups (default 0.7, the published schedules)",
    )
    group.add_argument(
        "--idle-layers",
        type=parse_layers,
        default=None,
        help="idle blocks, e.g. '3..11' or '3,4,5' (default: the arch's published layers)",
    )
    group.add_argument(
        "--keep-ratios",
        type=parse_ratios,
        default=None,
        help="one keep ratio per idle layer, e.g. '0.7,0.7,0.7,0.49,...'",
    )


def schedule_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_schedule_arguments` as ``create_model``/``load_checkpoint`` keywords."""
    return {"keep_rate": args.keep_rate, "idle_layers": args.idle_layers, "keep_ratios": args.keep_ratios}
