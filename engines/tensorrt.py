"""TensorRT through Polygraphy: the one module that touches TensorRT (``tensorrt`` or ``tensorrt_rtx``).

Parsing, configuring, building and running are Polygraphy's: ``NetworkFromOnnxPath``,
``CreateConfig`` (TensorRT) / ``CreateConfigRTX`` (TensorRT-RTX), ``EngineBytesFromNetwork``,
``EngineFromBytes`` and ``TrtRunner``. Polygraphy drives TensorRT-RTX when
``polygraphy.config.USE_TENSORRT_RTX`` is true as its TensorRT backend is first imported, so
:func:`use_runtime` sets it and then imports that backend: one TensorRT flavour per process.

What Polygraphy lacks stays here, each with its reason at the place: parser errors one by one,
the layers the parser made from the plan's FP32 nodes and their output types, plugin libraries
that register through ``getCreators``, plugins serialized into the plan, TF32 off for
TensorRT-RTX, a build that a signal cancels, and a quiet log. For type checking ``trt`` *is*
the ``tensorrt`` module (``tensorrt-stubs``), so mypy checks every TensorRT call made here;
Polygraphy's loaders are untyped.

Nothing outside ``engines/`` (and ``plugins/``) may import TensorRT; everything else asks this
module what is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idlevit.cli import Terminated
from idlevit.errors import BuildError, MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write

from .plan import Method, PrecisionPlan

if TYPE_CHECKING:
    import tensorrt as trt

    from .builder import BuildOptions
else:
    trt = None  # bound by use_runtime()

#: ``--runtime`` names and the Python module each one imports, in order of preference.
RUNTIME_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
#: How to install each runtime (the pyproject extras ``trt`` and ``rtx``).
INSTALL_HINTS = {
    "tensorrt": "pip install -e '.[trt]' (TensorRT 10/11, on a machine with an NVIDIA GPU and driver)",
    "tensorrt-rtx": "pip install -e '.[rtx]' (TensorRT for RTX, tensorrt-rtx-cu13; builds on any machine)",
}
MISSING_TENSORRT = (
    "TensorRT is not installed (neither the tensorrt nor the tensorrt_rtx module imports); install one: "
    + "; or ".join(INSTALL_HINTS.values())
)
#: Messages that only say this machine has no usable CUDA driver (harmless for an ahead-of-time build).
_NO_DRIVER_NOISE = ("CUDA driver version is insufficient", "cudaError 35", "no CUDA-capable device")

_bound: RuntimeInfo | None = None
_loaded_plugins: set[str] = set()


@dataclass(frozen=True)
class RuntimeInfo:
    """The TensorRT flavour this process uses."""

    name: str  # "tensorrt" or "tensorrt-rtx"
    version: str  # the module's __version__, e.g. "10.13.0.35" or "1.7.1.116"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split(".") if part.isdigit())


def is_installed(name: str) -> bool:
    """Whether ``name``'s module can be imported for real.

    ``tensorrt-stubs`` installs a ``tensorrt/`` folder holding only ``.pyi`` files, which imports
    as an empty namespace package; a spec without an origin is such a folder, not TensorRT.
    """
    try:
        spec = importlib.util.find_spec(RUNTIME_MODULES[name])
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def installed_runtimes() -> list[str]:
    """Runtimes importable here, ``tensorrt`` first."""
    return [name for name in RUNTIME_MODULES if is_installed(name)]


def use_runtime(name: str | None = None) -> RuntimeInfo:
    """Import ``name`` (default: the first installed runtime) and Polygraphy's backend for it, for this process."""
    global trt, _bound
    if name is None:
        installed = installed_runtimes()
        if not installed:
            raise MissingDependencyError(MISSING_TENSORRT)
        name = installed[0]
    if name not in RUNTIME_MODULES:
        raise ToolkitError(f"unknown TensorRT runtime {name!r}; choose one of: {', '.join(RUNTIME_MODULES)}")
    if not is_installed(name):
        raise MissingDependencyError(f"{name} is not installed; {INSTALL_HINTS[name]}")
    if _bound is not None:
        if _bound.name != name:
            raise ToolkitError(
                f"this process already uses {_bound.name}; run {name} in a separate process (one TensorRT per process)"
            )
        return _bound
    from polygraphy import config  # lazy: Polygraphy's TensorRT flavour is chosen before its backend imports

    rtx = name == "tensorrt-rtx"
    if "polygraphy.backend.trt" in sys.modules and config.USE_TENSORRT_RTX != rtx:
        other = "tensorrt-rtx" if config.USE_TENSORRT_RTX else "tensorrt"
        raise ToolkitError(
            f"Polygraphy's TensorRT backend is already loaded for {other} in this process; run {name} in a separate "
            "process (one TensorRT per process)"
        )
    config.USE_TENSORRT_RTX = rtx
    try:
        module = importlib.import_module(RUNTIME_MODULES[name])
        importlib.import_module("polygraphy.backend.trt")
    except (ImportError, OSError) as err:
        raise MissingDependencyError(f"{name} is installed but does not load ({err}); reinstall it") from None
    trt = module
    _bound = RuntimeInfo(name, str(module.__version__))
    return _bound


def bound_runtime() -> RuntimeInfo:
    """The runtime :func:`use_runtime` bound in this process."""
    if _bound is None:
        raise ToolkitError("no TensorRT runtime is bound; call engines.tensorrt.use_runtime() first")
    return _bound


def has_timing_cache() -> bool:
    """TensorRT has a timing cache; TensorRT-RTX keeps the call but made it a no-op."""
    return bound_runtime().name == "tensorrt"


# ---- Polygraphy's log ------------------------------------------------------------------------------
@contextlib.contextmanager
def polygraphy_log(verbose: bool = False, echo: Callable[[str], None] = print) -> Iterator[list[str]]:
    """Keep Polygraphy's log (TensorRT's messages come through it) off the terminal; yield its errors.

    Our one-line errors explain failures, with TensorRT's last errors as the detail; ``verbose``
    echoes Polygraphy's and TensorRT's messages (info and up) as they come.
    """
    from polygraphy.logger import G_LOGGER  # lazy: Polygraphy loads with TensorRT

    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if verbose:
                echo(text)
            # TensorRT's errors (Polygraphy's own critical ones come back as its exception)
            if record.levelno == G_LOGGER.ERROR and not any(s in text for s in _NO_DRIVER_NOISE):
                errors.append(re.sub(r"^\[.\] ", "", text))

    python_logger = logging.getLogger("Polygraphy")
    saved = (G_LOGGER.module_severity, G_LOGGER.colors, G_LOGGER.use_python_logging_system, python_logger.propagate)
    handler = Collect()
    python_logger.addHandler(handler)
    python_logger.propagate = False
    G_LOGGER.colors = False
    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR
    try:
        yield errors
    finally:
        python_logger.removeHandler(handler)
        G_LOGGER.module_severity, G_LOGGER.colors, G_LOGGER.use_python_logging_system, python_logger.propagate = saved


def _detail(errors: list[str], fallback: str) -> str:
    return "; ".join(" ".join(e.split()) for e in errors[-3:]) or fallback


# ---- signals during a build --------------------------------------------------------------------------
@contextlib.contextmanager
def cancel_on_signals() -> Iterator[list[int]]:
    """Turn SIGINT and SIGTERM into a flag while TensorRT works, and raise them once it has returned.

    A Python exception cannot cross TensorRT's callbacks (Polygraphy's log callback turns a
    KeyboardInterrupt into SIGTERM), so the handlers only record the signal; the progress monitor
    of :func:`progress_monitor` then cancels the build, and on the way out the signal becomes
    KeyboardInterrupt (exit 130) or :class:`idlevit.cli.Terminated` (exit 143). Main thread only.
    """
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: arrived.append(signum)) for signum in held}
    try:
        yield arrived
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            raise KeyboardInterrupt if arrived[0] == signal.SIGINT else Terminated(arrived[0])


def progress_monitor(cancelled: Callable[[], bool]) -> trt.IProgressMonitor:
    """A progress monitor that asks TensorRT to stop the build once ``cancelled()`` (TensorRT 10+, TensorRT-RTX)."""

    class Cancel(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            return not cancelled()

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Cancel()


# ---- plugins -------------------------------------------------------------------------------------------
def load_plugin_libraries(libraries: Sequence[str | os.PathLike[str]]) -> None:
    """Load plugin libraries into TensorRT's plugin registry, once per process.

    Polygraphy's ``LoadPlugins`` only dlopens a library; ``libidlevit_plugins.so`` registers its
    creators through ``getCreators``, which TensorRT calls from ``IPluginRegistry.load_library``.
    """
    for path in [os.fspath(p) for p in libraries]:
        if not Path(path).is_file():
            raise ToolkitError(f"plugin library {path!r} does not exist; build it (see plugins/README.md)")
        if path in _loaded_plugins:
            continue
        if trt.get_plugin_registry().load_library(path) is None:
            raise BuildError(f"TensorRT could not load plugin library {path!r}; check it matches this TensorRT")
        _loaded_plugins.add(path)


# ---- parsing -------------------------------------------------------------------------------------------
def parse_onnx(
    onnx_path: str | os.PathLike[str],
    strongly_typed: bool,
    plugins: Sequence[str | os.PathLike[str]] = (),
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> tuple[trt.Builder, trt.INetworkDefinition, trt.OnnxParser]:
    """Polygraphy's ``NetworkFromOnnxPath``; a rejected graph echoes each parser error, then is a BuildError.

    ``strongly_typed`` asks for a strongly typed network (tensor types from the ONNX, no
    precision flags); TensorRT-RTX networks always are.
    """
    from polygraphy.backend.trt import NetworkFromOnnxPath  # lazy: bound by use_runtime()
    from polygraphy.exception import PolygraphyException  # lazy: as above

    if strongly_typed and not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        runtime = bound_runtime()
        raise BuildError(f"{runtime.name} {runtime.version} cannot build strongly typed networks; use --trt-version")
    load_plugin_libraries(plugins)
    try:
        with polygraphy_log(verbose, echo) as errors:
            return NetworkFromOnnxPath(os.fspath(onnx_path), strongly_typed=strongly_typed)()
    except PolygraphyException:
        issues = _parser_errors(onnx_path, strongly_typed) or [_detail(errors, "the parser failed without a message")]
        for issue in issues:
            echo(f"  parser error: {issue}")
        raise BuildError(
            f"TensorRT's ONNX parser rejected {os.fspath(onnx_path)} with {len(issues)} error(s); first: {issues[0]}"
        ) from None


def _parser_errors(onnx_path: str | os.PathLike[str], strongly_typed: bool) -> list[str]:
    """Polygraphy logs the parser's errors as text and drops the parser: parse again to read them one by one."""
    from polygraphy.backend.trt import create_network, get_trt_logger  # lazy: bound by use_runtime()

    with polygraphy_log():
        _builder, network = create_network(strongly_typed=strongly_typed)
        parser = trt.OnnxParser(network, get_trt_logger())
        parser.parse_from_file(os.fspath(onnx_path))
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
    issues = []
    for error in errors:
        lines = [line.strip() for line in str(error.desc()).splitlines() if line.strip()]
        message = " | ".join(line for line in lines if not any(s in line for s in _NO_DRIVER_NOISE))
        issues.append(f"node {error.node()} {error.node_name()!r} ({error.node_operator()}): {message}")
    return issues


# ---- per-layer precision (weakly typed TensorRT 10.x) --------------------------------------------
def fp32_layers(network: trt.INetworkDefinition, node_names: Iterable[str]) -> list[str]:
    """The floating-point layers the parser made from ``node_names`` (a node's layer is named after it, its
    helper layers after it plus a suffix): what Polygraphy's ``SetLayerPrecisions`` is given."""
    wanted = set(node_names)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    return [layer.name for layer in layers if _layer_node(layer.name, wanted) and _is_float(layer.precision)]


def pin_output_types_fp32(network: trt.INetworkDefinition, names: Iterable[str]) -> None:
    """FP32 output types on the named layers (``SetLayerPrecisions`` sets their compute precision only)."""
    wanted = set(names)
    for layer in (network.get_layer(i) for i in range(network.num_layers)):
        for j in range(layer.num_outputs) if layer.name in wanted else ():
            if _is_float(layer.get_output_type(j)):
                layer.set_output_type(j, trt.float32)


def _layer_node(layer_name: str, node_names: set[str]) -> str | None:
    if layer_name in node_names:
        return layer_name
    for sep in ("_", " ", "["):
        head = layer_name.split(sep, 1)[0] if sep != "_" else layer_name.rsplit("_", 1)[0]
        if head in node_names:
            return head
    return None


def _is_float(dtype: trt.DataType) -> bool:
    return dtype in (trt.float32, trt.float16, trt.bfloat16)


# ---- building ------------------------------------------------------------------------------------
@dataclass
class Built:
    """A serialized engine and what the sidecar says about its network."""

    engine: bytes
    strongly_typed: bool
    outputs: list[str]
    layers_pinned_fp32: list[str]


def build_serialized(
    onnx_path: str | os.PathLike[str],
    plan: PrecisionPlan,
    options: BuildOptions,
    profile: Mapping[str, Sequence[tuple[int, ...]]],
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> Built:
    """Parse, configure and build with Polygraphy's loaders; SIGINT or SIGTERM cancels the build.

    The signal then ends the call as KeyboardInterrupt / Terminated (:func:`cancel_on_signals`).
    """
    from polygraphy.backend.trt import EngineBytesFromNetwork, SetLayerPrecisions  # lazy: bound by use_runtime()
    from polygraphy.exception import PolygraphyException  # lazy: as above

    with cancel_on_signals() as arrived:
        builder, network, parser = parse_onnx(onnx_path, plan.strongly_typed, options.plugins, verbose, echo)
        pinned: list[str] = []
        if plan.method is Method.BUILDER_FLAGS:  # weakly typed FP16: the plan's FP32 nodes, layer by layer
            pinned = fp32_layers(network, plan.fp32_nodes)
            with polygraphy_log(verbose, echo):
                SetLayerPrecisions((builder, network, parser), {name: trt.float32 for name in pinned})()
            pin_output_types_fp32(network, pinned)
        try:
            with contextlib.ExitStack() as files, polygraphy_log(verbose, echo) as errors:
                load_cache = save_cache = None
                if options.timing_cache and has_timing_cache():
                    # file objects, not paths: Polygraphy locks a path through a `<path>.lock` file it leaves
                    # behind; the updated cache replaces the file only once the build succeeded
                    if Path(options.timing_cache).is_file():
                        load_cache = files.enter_context(open(options.timing_cache, "rb"))
                    save_cache = files.enter_context(atomic_write(options.timing_cache, "w+b"))
                config = _create_config(plan, options, profile, progress_monitor(lambda: bool(arrived)), load_cache)
                serialized = EngineBytesFromNetwork((builder, network, parser), config, save_timing_cache=save_cache)()
        except PolygraphyException:
            raise BuildError(
                f"TensorRT built no engine ({_detail(errors, 'no message from TensorRT')}); "
                "rerun with --verbose for the builder log"
            ) from None
        engine = bytes(memoryview(serialized))
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 10.0+
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return Built(engine, typed is not None and bool(network.get_flag(typed)), outputs, pinned)


def _create_config(
    plan: PrecisionPlan,
    options: BuildOptions,
    profile: Mapping[str, Sequence[tuple[int, ...]]],
    monitor: trt.IProgressMonitor | None = None,
    timing_cache: Any = None,
) -> Any:
    """Polygraphy's config loader for the bound runtime (TF32 off, TensorRT's own profiling verbosity)."""
    from polygraphy.backend.trt import CreateConfig, PostprocessConfig, Profile  # lazy: bound by use_runtime()
    from polygraphy.exception import PolygraphyException  # lazy: as above

    shapes = Profile()
    for name, (low, opt, high) in profile.items():
        shapes.add(name, min=low, opt=opt, max=high)
    common: dict[str, Any] = {
        "profiles": [shapes],
        "memory_pool_limits": (
            {trt.MemoryPoolType.WORKSPACE: options.workspace_mib << 20} if options.workspace_mib else None
        ),
        "builder_optimization_level": options.optimization_level,
        "progress_monitor": monitor,
        "load_timing_cache": timing_cache,
        # Polygraphy defaults to DETAILED; TensorRT's own default builds the engines trtexec builds
        "profiling_verbosity": trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
    }
    if bound_runtime().name == "tensorrt-rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX  # lazy: bound by use_runtime()

        try:
            capabilities = [tuple(int(p) for p in cc.split(".", 1)) for cc in options.compute_capabilities]
            config = CreateConfigRTX(compute_capabilities=capabilities or None, **common)
        except (ValueError, PolygraphyException) as err:
            members = dir(getattr(trt, "ComputeCapability"))  # TensorRT-RTX only: not in tensorrt-stubs
            known = [m[2:-1] + "." + m[-1] for m in members if m.startswith("SM") and m[2:].isdigit()]
            raise ToolkitError(f"{err}; --compute-capabilities takes MAJOR.MINOR among {', '.join(known)}") from None
        # CreateConfigRTX has no tf32 option and TensorRT-RTX turns TF32 on: FP32 layers must stay IEEE FP32
        return PostprocessConfig(config, _without_tf32)
    if options.compute_capabilities:
        raise ToolkitError("--compute-capabilities is a TensorRT-RTX option; this TensorRT builds for its own GPU")
    weak_fp16 = plan.method is Method.BUILDER_FLAGS
    config = CreateConfig(tf32=False, fp16=weak_fp16, precision_constraints="obey" if weak_fp16 else None, **common)
    if options.plugins:  # Polygraphy's CreateConfig has no plugins_to_serialize
        return PostprocessConfig(config, _serializing_plugins(options.plugins))
    return config


def _without_tf32(_builder: trt.Builder, _network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> None:
    config.clear_flag(trt.BuilderFlag.TF32)


def _serializing_plugins(plugins: Sequence[str]) -> Callable[[Any, Any, trt.IBuilderConfig], None]:
    def serialize(_builder: Any, _network: Any, config: trt.IBuilderConfig) -> None:
        config.plugins_to_serialize = [os.fspath(p) for p in plugins]

    return serialize


# ---- running -------------------------------------------------------------------------------------
def engine_runner(engine: bytes, plugins: Sequence[str | os.PathLike[str]] = (), name: str | None = None) -> Any:
    """Polygraphy's ``TrtRunner`` over a serialized engine, activated (its plugins loaded first)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner  # lazy: bound by use_runtime()
    from polygraphy.exception import PolygraphyException  # lazy: as above

    load_plugin_libraries(plugins)
    runner = TrtRunner(EngineFromBytes(engine), name=name)
    try:
        with cancel_on_signals(), polygraphy_log() as errors:
            runner.activate()
    except PolygraphyException as err:
        raise BuildError(f"TensorRT could not load the engine ({_detail(errors, str(err))})") from None
    return runner
