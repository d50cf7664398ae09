"""From an exported ONNX to a TensorRT engine that keeps the token selection: checks, plan, graph, build.

The steps of ``python -m export.trt``, as a library: static checks of the graph for the target
(:mod:`engines.lint`), the precision plan (:mod:`engines.precision`), the reduced-precision
graph and its check against the FP32 graph (:mod:`validate.reduced`, the one judge), the
equivalent ``trtexec`` / ``tensorrt_rtx`` command line, and the build with its sidecar
(:mod:`engines.builder`). Without the target's TensorRT every step but the build runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from engines import lint
from engines import tensorrt as api
from engines.builder import BuildOptions, build_engine, command_line
from engines.plan import FP32
from engines.precision import mixed_onnx_path, plan_precision, write_mixed_onnx
from engines.target import PLAN_VERSIONS, TENSORRT, Target
from idlevit.errors import CheckFailed, MissingDependencyError, ToolkitError
from idlevit.metadata import load_onnx, read_metadata
from idlevit.sidecar import sidecar_path
from idlevit.state import last_export, state_file
from validate.inputs import InputSpec
from validate.reduced import check_reduced_precision

PLUGIN_DOMAIN = "idlevit"


def resolve_onnx(path: str | os.PathLike[str] | None) -> Path:
    """``path``, else the ONNX ``python -m export.onnx`` wrote last in this folder."""
    if path:
        return Path(path)
    found = last_export()
    if found is None:
        raise ToolkitError(
            f"no --onnx given and no ONNX recorded in {state_file()}; run `python -m export.onnx` here first "
            "or pass --onnx"
        )
    return found


def uses_plugin(model: onnx.ModelProto, plugin: str) -> bool:
    return bool(plugin) or any(node.domain == PLUGIN_DOMAIN for node in model.graph.node)


def resolve_target(runtime: str | None, trt_version: str | None) -> tuple[Target, bool]:
    """The target and whether its runtime is installed here (an installed one reports its version)."""
    installed = api.installed_runtimes()
    name = runtime or (installed[0] if installed else TENSORRT)
    if name in installed:
        info = api.use_runtime(name)
        return Target(name, info.version_tuple), True
    return Target.parse(f"{name}-{trt_version or PLAN_VERSIONS[name]}"), False


def default_engine_path(source: Path, precision: str, target: Target) -> Path:
    """``model.onnx`` -> ``model_<precision>[_rtx].engine`` beside it."""
    return source.with_name(f"{source.stem}_{precision}{'_rtx' if target.is_rtx else ''}.engine")


def export_engine(
    onnx_path: str | os.PathLike[str] | None,
    *,
    precision: str = FP32,
    runtime: str | None = None,
    trt_version: str | None = None,
    options: BuildOptions | None = None,
    out: str | os.PathLike[str] | None = None,
    check_inputs: InputSpec | None = InputSpec(data=None, num_images=16, random_batches=2, batch_sizes=(8,)),
    check_device: str = "cpu",
    trtcheck: bool = True,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> Path:
    """Check, plan and build; returns the engine path. ``check_inputs=None`` skips the reduced-precision check.

    Raises :class:`MissingDependencyError` after every other step when the target's TensorRT is
    not installed here (nothing is built then).
    """
    options = options or BuildOptions()
    source = resolve_onnx(onnx_path)
    meta = read_metadata(source)
    model = load_onnx(source, load_external_data=False)
    target, installed = resolve_target(runtime, trt_version)
    if target.is_rtx and uses_plugin(model, meta.plugin):
        raise ToolkitError(
            f"{source} uses the fused {meta.plugin or 'idlevit::IdleScatter'} plugin op and TensorRT-RTX takes no "
            "plugins; export without --plugin for TensorRT-RTX (or use --runtime tensorrt)"
        )
    options.validate(meta)
    if options.compute_capabilities and not target.is_rtx:
        raise ToolkitError("--compute-capabilities is for --runtime tensorrt-rtx; TensorRT builds for its own GPU")
    echo(
        f"{source} ({meta.arch}, {meta.img_size} px, idle layers {meta.idle_layers}) -> {target.label}"
        + ("" if installed else " (not installed here: checks and plan only)")
    )
    _report_findings(lint.static_checks(model, target, trtcheck), verbose, echo)
    plan = plan_precision(model, precision, target)
    echo(f"precision plan: {plan.summary()}")

    out_dir = Path(out).parent if out else None
    build_onnx = source
    if plan.needs_mixed_onnx:
        started = time.perf_counter()
        build_onnx = write_mixed_onnx(source, plan, mixed_onnx_path(source, precision, out_dir))
        echo(f"wrote {build_onnx} (mixed precision) in {time.perf_counter() - started:.1f} s")
        _report_findings(lint.static_checks(load_onnx(build_onnx), target, False), verbose, echo)
        if check_inputs is not None:
            _check_reduced(source, build_onnx, check_inputs, check_device, echo)

    engine = Path(out) if out else default_engine_path(source, precision, target)
    echo("equivalent command: " + command_line(target, build_onnx, engine, plan, options, meta))
    if not installed:
        if runtime is None:
            raise MissingDependencyError(api.MISSING_TENSORRT)
        raise MissingDependencyError(
            f"{target.runtime} is not installed, so no engine was built; {api.INSTALL_HINTS[target.runtime]}"
        )
    started = time.perf_counter()
    sidecar = build_engine(build_onnx, source, plan, options, engine, echo, verbose)
    size = engine.stat().st_size / 2**20
    echo(
        f"wrote {engine} ({size:.1f} MiB, {sidecar.runtime} {sidecar.runtime_version}, runs on compute capability "
        f"{', '.join(sidecar.compute_capabilities) or 'of this GPU'}) and {sidecar_path(engine).name} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return engine


def _report_findings(findings: list[lint.Finding], verbose: bool, echo: Callable[[str], None]) -> None:
    for finding in findings:
        if verbose or finding.severity != lint.INFO:
            echo(f"  {finding}")
    lint.raise_on_errors(findings)


def _check_reduced(source: Path, reduced: Path, inputs: InputSpec, device: str, echo: Callable[[str], None]) -> None:
    started = time.perf_counter()
    report = check_reduced_precision(source, reduced, inputs=inputs, device=device)
    echo(
        f"reduced-precision ONNX vs FP32 ONNX (ONNX Runtime, {device.upper()}, {time.perf_counter() - started:.1f} s):"
    )
    for line in report.summary_lines():
        echo(f"  {line}")
    if not report.passed:
        raise CheckFailed(
            f"the reduced-precision ONNX drifts from the FP32 graph: {report.failures[0]}; "
            f"{reduced} is kept for inspection"
        )
