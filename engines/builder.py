"""Build a TensorRT engine from an exported IdleViT graph and its precision plan.

Polygraphy's loaders do the work (:mod:`engines.tensorrt`): parse the ONNX (errors reported one
by one), configure the builder (batch optimization profile, workspace, builder optimization
level, TF32 off, timing cache where the runtime has one, plugin libraries, FP16 flag and
per-layer FP32 for weakly typed targets, target compute capabilities for TensorRT-RTX) and
build; Ctrl-C or SIGTERM cancels the build. The engine and its JSON sidecar
(:mod:`idlevit.sidecar`) are then written together: both or neither.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import idlevit
from idlevit.chatter import captured
from idlevit.configs import MAX_BATCH
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write, refuse_overwriting_inputs, sha256_file, signals_deferred
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import IMAGES
from idlevit.sidecar import EngineSidecar, sidecar_path

from .compatibility import current_gpu
from .plan import Method, PrecisionPlan
from .target import RTX_DEFAULT_COMPUTE_CAPABILITIES, TENSORRT_RTX, Target


@dataclass
class BuildOptions:
    """Builder settings, as the CLI flags name them."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int | None = None  # None: TensorRT's default (the GPU's memory)
    optimization_level: int | None = None  # 0..5; None: TensorRT's default (3)
    timing_cache: str | None = None  # file read before and written after the build (TensorRT only)
    plugins: list[str] = field(default_factory=list)
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX only; [] = its defaults

    def validate(self, meta: ExportMetadata) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch <= MAX_BATCH:
            raise ToolkitError(
                f"batch profile needs 1 <= --min-batch <= --opt-batch <= --max-batch <= {MAX_BATCH}, got "
                f"{self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )
        if meta.batch and not self.min_batch == self.opt_batch == self.max_batch == meta.batch:
            raise ToolkitError(
                f"the graph has a static batch of {meta.batch}; pass --min-batch/--opt-batch/--max-batch {meta.batch} "
                "or export with a dynamic batch"
            )
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ToolkitError(f"--opt-level {self.optimization_level} must be 0..5")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ToolkitError(f"--workspace {self.workspace_mib} MiB must be >= 1")

    def profile(self, meta: ExportMetadata) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """The one optimization profile: the image input at min/opt/max batch."""
        chw = (3, meta.img_size, meta.img_size)
        return {IMAGES: ((self.min_batch, *chw), (self.opt_batch, *chw), (self.max_batch, *chw))}


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def command_line(
    target: Target,
    onnx_path: str | os.PathLike[str],
    engine: str | os.PathLike[str],
    plan: PrecisionPlan,
    options: BuildOptions,
    meta: ExportMetadata,
) -> str:
    """The equivalent ``trtexec`` (TensorRT) or ``tensorrt_rtx`` (TensorRT-RTX) command line."""
    low, opt, high = options.profile(meta)[IMAGES]
    args = [
        "tensorrt_rtx" if target.runtime == TENSORRT_RTX else "trtexec",
        f"--onnx={os.fspath(onnx_path)}",
        f"--saveEngine={os.fspath(engine)}",
        f"--minShapes={IMAGES}:{_dims(low)}",
        f"--optShapes={IMAGES}:{_dims(opt)}",
        f"--maxShapes={IMAGES}:{_dims(high)}",
    ]
    if options.workspace_mib:
        args.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    if options.optimization_level is not None:
        args.append(f"--builderOptimizationLevel={options.optimization_level}")
    if target.runtime != TENSORRT_RTX:
        args.append("--noTF32")
        if plan.strongly_typed:
            args.append("--stronglyTyped")
        elif plan.method is Method.BUILDER_FLAGS:
            args += ["--fp16", "--precisionConstraints=obey"]
            args.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in plan.fp32_nodes))
        if options.timing_cache and target.has_timing_cache:
            args.append(f"--timingCacheFile={options.timing_cache}")
        args += [f"--dynamicPlugins={p}" for p in options.plugins]
        args += [f"--setPluginsToSerialize={p}" for p in options.plugins]
    elif options.compute_capabilities:
        args.append("--computeCapabilities=" + ",".join(options.compute_capabilities))
    return " ".join(shlex.quote(arg) for arg in args)


def build_engine(
    onnx_path: str | os.PathLike[str],
    source_onnx: str | os.PathLike[str],
    plan: PrecisionPlan,
    options: BuildOptions,
    engine_path: str | os.PathLike[str],
    echo: Callable[[str], None] = print,
    verbose: bool = False,
) -> EngineSidecar:
    """Parse ``onnx_path``, build, write ``engine_path`` and its sidecar together; returns the sidecar.

    ``onnx_path`` is what TensorRT parses (the mixed-precision graph for strongly typed FP16);
    ``source_onnx`` is the exported FP32 graph it came from. TensorRT must already be bound
    (:func:`engines.tensorrt.use_runtime`). Ctrl-C or SIGTERM cancels the build and leaves no file;
    ``verbose`` echoes Polygraphy's and TensorRT's messages.
    """
    from . import tensorrt as api  # lazy: TensorRT is optional

    runtime = api.bound_runtime()
    meta = read_metadata(onnx_path)
    options.validate(meta)
    engine_path = Path(engine_path)
    refuse_overwriting_inputs(
        [engine_path, sidecar_path(engine_path)], [onnx_path, source_onnx, options.timing_cache, *options.plugins]
    )
    started = time.perf_counter()
    with captured(show=verbose, step="TensorRT's build"):
        built = api.build_serialized(onnx_path, plan, options, options.profile(meta), verbose, echo)
    gpu = None if runtime.name == TENSORRT_RTX else current_gpu()
    if runtime.name == TENSORRT_RTX:
        capabilities = list(options.compute_capabilities or RTX_DEFAULT_COMPUTE_CAPABILITIES)
    else:
        capabilities = [gpu["compute_capability"]] if gpu else []
    low, opt, high = options.profile(meta)[IMAGES]
    sidecar = EngineSidecar(
        engine=engine_path.name,
        engine_sha256=hashlib.sha256(built.engine).hexdigest(),
        runtime=runtime.name,
        runtime_version=runtime.version,
        gpu=gpu,
        compute_capabilities=capabilities,
        precision_plan=plan.to_dict(),
        profiles=[{IMAGES: {"min": list(low), "opt": list(opt), "max": list(high)}}],
        builder={
            "optimization_level": options.optimization_level,
            "workspace_mib": options.workspace_mib,
            "timing_cache": options.timing_cache if api.has_timing_cache() else None,
            "strongly_typed": built.strongly_typed,
            "layers_pinned_fp32": len(built.layers_pinned_fp32),
            "build_seconds": round(time.perf_counter() - started, 2),
        },
        plugins=[{"file": Path(p).name, "sha256": sha256_file(p)} for p in options.plugins],
        onnx=os.fspath(onnx_path),
        onnx_sha256=sha256_file(onnx_path),
        source_onnx=os.fspath(source_onnx),
        source_onnx_sha256=sha256_file(source_onnx),
        idlevit=asdict(meta),
        outputs=built.outputs,
        toolkit_version=idlevit.__version__,
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_engine(engine_path, built.engine, sidecar)
    return sidecar


def write_engine(engine_path: Path, engine: bytes, sidecar: EngineSidecar) -> None:
    """Write the engine and its sidecar to temporary names, then rename both with SIGINT/SIGTERM held.

    The engine lands first and its sidecar (which names the engine's sha256) last, so the two
    appear together or not at all; a failure or a signal before the renames leaves neither.
    """
    with contextlib.ExitStack() as files:
        described = files.enter_context(atomic_write(sidecar_path(engine_path), "w"))
        files.enter_context(atomic_write(engine_path)).write(engine)
        json.dump(sidecar.to_dict(), described, indent=2)
        described.write("\n")
        with signals_deferred():
            files.close()  # the renames: the engine, then its sidecar
