"""What a TensorRT target line can do, as plain facts (no TensorRT import).

The precision plan, the static checks and the builder all branch on these facts, never on a
version number directly, so adding a TensorRT line is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from idlevit.errors import ToolkitError

TENSORRT = "tensorrt"
TENSORRT_RTX = "tensorrt-rtx"
RUNTIMES = (TENSORRT, TENSORRT_RTX)
#: Version planned for when a runtime is named but not installed (``--trt-version`` overrides it).
PLAN_VERSIONS = {TENSORRT: "10.13", TENSORRT_RTX: "1.7"}

#: TopK's largest K in TensorRT (onnx-tensorrt operators.md: K must be at most 3840).
TOPK_MAX_K = 3840
#: Newest ONNX opset each parser line documents (oldest supported: 9), newest line first.
_MAX_OPSET = (((11, 5), 25), ((11, 0), 24), ((10, 8), 22), ((10, 0), 20), ((8, 6), 17))
_RTX_MAX_OPSET = 22
MIN_OPSET = 9
#: Compute capabilities a TensorRT-RTX engine built with no explicit target runs on (its docs).
RTX_DEFAULT_COMPUTE_CAPABILITIES = ("8.0", "8.6", "8.9", "12.0")
#: FP8 (E4M3) tensor cores start with Ada (8.9): Hopper 9.0, Blackwell 10.x/12.x and Jetson Thor 11.0 have them;
#: Ampere (8.0, 8.6) and Jetson Orin (8.7) do not. TensorRT-RTX compiles FP8 only for 8.9 and 12.x and refuses
#: other targets ("the model contains HW-specific datatypes: fp8_e4m3").
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)
#: Jetson modules, their compute capability and JetPack's TensorRT (INT8 Q/DQ graphs build on both; FP8 on Thor only).
JETSON = {"orin": ("8.7", "10.3"), "thor": ("11.0", "10.13")}


def parse_compute_capability(text: str) -> tuple[int, int]:
    """``"8.9"`` -> ``(8, 9)``; anything else is one line naming the bad value."""
    major, _, minor = text.strip().partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ToolkitError(f"compute capability {text!r} is not MAJOR.MINOR, e.g. 8.9 or 12.0")
    return int(major), int(minor)


def has_fp8(compute_capability: str) -> bool:
    """Whether GPUs of this compute capability have FP8 tensor cores (8.9 and newer)."""
    return parse_compute_capability(compute_capability) >= FP8_MIN_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class Target:
    """A TensorRT runtime line and version, e.g. ``Target("tensorrt", (10, 3))``."""

    runtime: str
    version: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ToolkitError(f"unknown TensorRT runtime {self.runtime!r}; choose one of: {', '.join(RUNTIMES)}")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``"tensorrt-rtx"``, ``"tensorrt-10.3"``, ``"tensorrt-rtx-1.7"``: runtime with an optional version."""
        for runtime in sorted(RUNTIMES, key=len, reverse=True):
            if text == runtime or text.startswith(runtime + "-"):
                rest = text[len(runtime) + 1 :]
                default = tuple(int(p) for p in PLAN_VERSIONS[runtime].split("."))
                try:
                    version = tuple(int(p) for p in rest.split(".")) if rest else default
                except ValueError:
                    break
                return cls(runtime, version)
        raise ToolkitError(f"cannot read target {text!r}; write e.g. tensorrt-10.3, tensorrt-11.0 or tensorrt-rtx")

    @property
    def label(self) -> str:
        return f"{self.runtime} {'.'.join(map(str, self.version))}"

    @property
    def is_rtx(self) -> bool:
        return self.runtime == TENSORRT_RTX

    @property
    def strongly_typed(self) -> bool:
        """Reduced precision is expressed in the graph's types (TensorRT 10.12+, 11.x, RTX).

        TensorRT 11 removed the FP16 builder flag and precision constraints; 10.12 onwards
        builds strongly typed networks well enough to prefer them; RTX knows nothing else.
        """
        return self.is_rtx or self.version[:2] >= (10, 12)

    @property
    def builds_strongly_typed(self) -> bool:
        """Can build a strongly typed network at all (TensorRT 10.0+, RTX): what a Q/DQ graph is built as."""
        return self.is_rtx or self.version[:1] >= (10,)

    @property
    def max_opset(self) -> int:
        if self.is_rtx:
            return _RTX_MAX_OPSET
        for since, opset in _MAX_OPSET:
            if self.version[:2] >= since:
                return opset
        return 13

    @property
    def takes_plugins(self) -> bool:
        """TensorRT-RTX has no plugin layers (and its parser aborts the process on a plugin node)."""
        return not self.is_rtx

    @property
    def needs_plugin_namespace_attr(self) -> bool:
        """Before 10.10 the parser finds a custom op's plugin only through a ``plugin_namespace`` attribute."""
        return not self.is_rtx and self.version[:2] < (10, 10)

    @property
    def has_timing_cache(self) -> bool:
        return not self.is_rtx
