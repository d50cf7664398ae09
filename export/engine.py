"""From an exported ONNX to a TensorRT engine that keeps the token selection: checks, plan, graph, build.

The steps of ``python -m export.trt``, as a library: static checks of the graph for the target
(:mod:`engines.lint`), the precision plan (:mod:`engines.precision`), the reduced-precision
graph (FP16 mixed precision, or INT8 / FP8 Q/DQ from :mod:`engines.quantize`) and its check
against the FP32 graph (:mod:`validate.reduced`, the one judge), the equivalent ``trtexec`` /
``tensorrt_rtx`` command line, and the build with its sidecar (:mod:`engines.builder`). Without
the target's TensorRT every step but the build runs.
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
from engines.compatibility import current_gpu
from engines.plan import FP8, FP32, PrecisionPlan, QuantOptions
from engines.precision import mixed_onnx_path, plan_precision, write_mixed_onnx
from engines.quantize import (
    calibration_images,
    quantize_onnx,
    quantize_summary,
    quantized_onnx_path,
    recorded_quantization,
    require_modelopt,
    write_quantized_onnx,
)
from engines.target import FP8_MIN_COMPUTE_CAPABILITY, PLAN_VERSIONS, TENSORRT, Target, has_fp8
from idlevit.chatter import captured
from idlevit.errors import CheckFailed, MissingDependencyError, ToolkitError
from idlevit.fileio import refuse_overwriting_inputs
from idlevit.metadata import load_onnx, read_metadata
from idlevit.names import engine_name
from idlevit.sidecar import sidecar_path
from idlevit.state import given_or_last_export
from validate.inputs import InputSpec
from validate.reduced import check_reduced_precision, cpu_runs_fp8
from validate.sources import recorded_fp32_graph

PLUGIN_DOMAIN = "idlevit"


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


def default_engine_path(source: Path, precision: str) -> Path:
    """``model.onnx`` -> ``model_<precision>.engine`` beside it, for every runtime (:func:`idlevit.names.engine_name`:
    a reduced graph's own ``model_int8.onnx`` / ``model_fp16_mixed.onnx`` give their FP32 source's name)."""
    return source.with_name(engine_name(source.stem, precision))


def given_precision(source: Path, graph_precision: str, asked: str | None) -> str:
    """The precision to build: the flag's, else the graph's own; a reduced graph builds only in its own."""
    if graph_precision == FP32 or asked in (None, graph_precision):
        return asked or graph_precision
    raise ToolkitError(
        f"{source} is already an {graph_precision.upper()} graph and cannot be built as {asked.upper()}; "
        f"build it as it is (--{graph_precision} or no precision flag), or pass the FP32 graph it was made from"
    )


def export_engine(
    onnx_path: str | os.PathLike[str] | None,
    *,
    precision: str | None = None,
    runtime: str | None = None,
    trt_version: str | None = None,
    options: BuildOptions | None = None,
    out: str | os.PathLike[str] | None = None,
    check_inputs: InputSpec | None = InputSpec(data=None, num_images=16, random_batches=2, batch_sizes=(8,)),
    check_device: str = "cpu",
    trtcheck: bool = True,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
    quantization: QuantOptions | None = None,
) -> Path:
    """Check, plan and build; returns the engine path. ``check_inputs=None`` skips the reduced-precision check.

    ``precision`` None builds the graph's own precision (FP32 for an export). A reduced-precision
    graph written earlier (FP16 mixed, INT8 / FP8 Q/DQ, e.g. on a workstation with ModelOpt) is
    built as it is, without converting or quantizing it again, after the same check against the
    FP32 graph it records it was made from. ``quantization`` is the plan and calibration of
    ``int8`` / ``fp8`` (default: :class:`QuantOptions`). Raises :class:`MissingDependencyError`
    after every other step when the target's TensorRT is not installed here (nothing is built then).
    """
    options = options or BuildOptions()
    source = given_or_last_export(onnx_path, "--onnx")
    meta = read_metadata(source)
    if meta.optimized_for:
        raise ToolkitError(
            f"{source} is optimised for {meta.optimized_for} only (its own fused ops, which TensorRT cannot parse); "
            "build engines from the plain export (python -m export.onnx without --optimize)"
        )
    precision = given_precision(source, meta.precision, precision)
    reduced_given = meta.precision != FP32
    model = load_onnx(source, load_external_data=False)
    lint.check_schedule_matches(model, meta, os.fspath(source))
    target, installed = resolve_target(runtime, trt_version)
    if target.is_rtx and uses_plugin(model, meta.plugin):
        raise ToolkitError(
            f"{source} uses the fused {meta.plugin or 'idlevit::IdleScatter'} plugin op and TensorRT-RTX takes no "
            "plugins; export without --plugin for TensorRT-RTX (or use --runtime tensorrt)"
        )
    options.validate(meta)
    if options.compute_capabilities and not target.is_rtx:
        raise ToolkitError("--compute-capabilities is for --runtime tensorrt-rtx; TensorRT builds for its own GPU")
    if precision == FP8:
        refuse_fp8_target(target, installed, options.compute_capabilities)
    echo(
        f"{source} ({meta.arch}, {meta.img_size} px, idle layers {meta.idle_layers}) -> {target.label}"
        + ("" if installed else " (not installed here: checks and plan only)")
    )
    _report_findings(lint.static_checks(model, target, trtcheck), verbose, echo)
    plan = plan_precision(model, precision, target)
    if reduced_given:
        recorded = recorded_quantization(meta)
        plan.quantization = recorded.to_dict() if recorded else None
        plan.converter = str(meta.extra.get("converter") or (recorded.quantizer if recorded else plan.converter))
    elif plan.needs_qdq_onnx:
        require_modelopt()
        quantization = quantization or QuantOptions()
        plan.quantization = {"plan": quantization.plan}
    echo(f"precision plan: {plan.summary()}")

    out_dir = Path(out).parent if out else None
    build_onnx, built_from = source, source
    if reduced_given:
        echo(f"{source} is already an {precision.upper()} graph: built as it is")
        if check_inputs is not None:
            built_from = recorded_fp32_graph(
                source, meta, "put that FP32 graph beside it to check against, or pass --no-check to build unchecked"
            )
            if precision == FP8 and check_device == "cpu" and not cpu_runs_fp8():
                echo("ONNX Runtime cannot run FP8 Q/DQ on the CPU here, so the FP8 graph is not compared")
            else:
                _check_reduced(built_from, source, check_inputs, check_device, echo)
    elif plan.needs_mixed_onnx:
        started = time.perf_counter()
        build_onnx = write_mixed_onnx(source, plan, mixed_onnx_path(source, precision, out_dir))
        echo(f"wrote {build_onnx} (mixed precision) in {time.perf_counter() - started:.1f} s")
        _report_findings(lint.static_checks(load_onnx(build_onnx), target, False), verbose, echo)
        if check_inputs is not None:
            _check_reduced(source, build_onnx, check_inputs, check_device, echo)
    elif plan.needs_qdq_onnx:
        build_onnx = _quantize(source, precision, quantization or QuantOptions(), out_dir, plan, echo)
        _report_findings(lint.static_checks(load_onnx(build_onnx), target, False), verbose, echo)
        if check_inputs is not None and precision == FP8 and check_device == "cpu" and not cpu_runs_fp8():
            echo(
                "ONNX Runtime cannot run FP8 Q/DQ on the CPU here, so the FP8 graph is not compared with the FP32 "
                "graph; checked: the scoring path carries no Q/DQ, and the static checks"
            )
        elif check_inputs is not None:
            _check_reduced(source, build_onnx, check_inputs, check_device, echo)

    engine = Path(out) if out else default_engine_path(source, precision)
    echo("equivalent command: " + command_line(target, build_onnx, engine, plan, options, meta))
    if not installed:
        if runtime is None:
            raise MissingDependencyError(api.MISSING_TENSORRT)
        raise MissingDependencyError(
            f"{target.runtime} is not installed, so no engine was built; {api.INSTALL_HINTS[target.runtime]}"
        )
    started = time.perf_counter()
    sidecar = build_engine(build_onnx, built_from, plan, options, engine, echo, verbose)
    size = engine.stat().st_size / 2**20
    echo(
        f"wrote {engine} ({size:.1f} MiB, {sidecar.runtime} {sidecar.runtime_version}, runs on compute capability "
        f"{', '.join(sidecar.compute_capabilities) or 'of this GPU'}) and {sidecar_path(engine).name} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return engine


def refuse_fp8_target(target: Target, installed: bool, compute_capabilities: list[str]) -> None:
    """FP8 needs FP8 tensor cores (compute capability 8.9+); refuse any other target before the work starts.

    TensorRT-RTX must be told its targets (``--compute-capabilities 8.9`` or ``12.0``): its default
    set includes 8.0 and 8.6, which have no FP8. Full TensorRT builds for the GPU it runs on.
    """
    floor = ".".join(map(str, FP8_MIN_COMPUTE_CAPABILITY))
    if target.is_rtx:
        lacking = [cc for cc in compute_capabilities if not has_fp8(cc)]
        if not compute_capabilities or lacking:
            which = ", ".join(lacking) if lacking else "TensorRT-RTX's default set (8.0, 8.6, 8.9, 12.0)"
            raise ToolkitError(
                f"--fp8 needs FP8 tensor cores (compute capability {floor}+), which {which} lacks; "
                "pass --compute-capabilities 8.9 and/or 12.0, or use --int8"
            )
        return
    gpu = current_gpu() if installed else None
    if gpu and not has_fp8(gpu["compute_capability"]):
        raise ToolkitError(
            f"--fp8 needs FP8 tensor cores (compute capability {floor}+) and this GPU ({gpu['name']}) is "
            f"{gpu['compute_capability']}; use --int8 (Jetson Orin, 8.7, has INT8 only)"
        )


def _quantize(
    source: Path,
    precision: str,
    quant: QuantOptions,
    out_dir: Path | None,
    plan: PrecisionPlan,
    echo: Callable[[str], None],
) -> Path:
    """Calibrate and write ``<stem>_int8.onnx`` / ``<stem>_fp8.onnx``; the plan records what was done."""
    target = quantized_onnx_path(source, precision, out_dir)
    refuse_overwriting_inputs([target], [source])
    started = time.perf_counter()
    images, where = calibration_images(read_metadata(source), quant.data, quant.images, quant.seed)
    model, record = quantize_onnx(source, precision, quant.plan, images=images, calibration=where, method=quant.method)
    write_quantized_onnx(model, target)
    plan.quantization = record.to_dict()
    echo(f"wrote {target}: {quantize_summary(record, precision, time.perf_counter() - started)}")
    return target


def _report_findings(findings: list[lint.Finding], verbose: bool, echo: Callable[[str], None]) -> None:
    for finding in findings:
        if verbose or finding.severity != lint.INFO:
            echo(f"  {finding}")
    lint.raise_on_errors(findings)


def _check_reduced(source: Path, reduced: Path, inputs: InputSpec, device: str, echo: Callable[[str], None]) -> None:
    started = time.perf_counter()
    with captured(step="the reduced-precision check"):
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
