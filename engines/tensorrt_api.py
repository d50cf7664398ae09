"""The one module that calls TensorRT; the builder and the runtime both go through it.

``tensorrt`` (TensorRT 10.x / 11.x) and ``tensorrt_rtx`` (TensorRT for RTX) share one Python
API, so the same calls drive both. The module is imported lazily by :func:`use_runtime`, which
binds it to the module-level name ``trt``: one TensorRT flavour per process. For type checking
``trt`` *is* the ``tensorrt`` module (``tensorrt-stubs``), so mypy checks every call made here.

Nothing outside ``engines/`` (and ``plugins/``) may import TensorRT; everything else asks this
module what is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idlevit.errors import BuildError, MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write

if TYPE_CHECKING:
    import tensorrt as trt
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
#: Parser messages that only say this machine has no usable CUDA driver (harmless for an AOT build).
_NO_DRIVER_NOISE = ("CUDA driver version is insufficient", "cudaError 35", "no CUDA-capable device")

_bound: RuntimeInfo | None = None


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
    """Import ``name`` (default: the first installed runtime) and bind it for this process."""
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
    try:
        module = importlib.import_module(RUNTIME_MODULES[name])
    except (ImportError, OSError) as err:
        raise MissingDependencyError(f"{name} is installed but does not load ({err}); reinstall it") from None
    trt = module
    _bound = RuntimeInfo(name, str(module.__version__))
    return _bound


def bound_runtime() -> RuntimeInfo:
    """The runtime :func:`use_runtime` bound in this process."""
    if _bound is None:
        raise ToolkitError("no TensorRT runtime is bound; call engines.tensorrt_api.use_runtime() first")
    return _bound


# ---- logging -----------------------------------------------------------------------------------
def _make_logger(echo: Callable[[str], None] | None) -> Any:
    """A TensorRT logger that keeps errors and warnings (to show with a failure) and echoes them."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= trt.ILogger.Severity.WARNING and not any(s in msg for s in _NO_DRIVER_NOISE):
                self.messages.append(msg)
                if echo is not None and severity <= trt.ILogger.Severity.ERROR:
                    echo(msg)

    return Logger()


# ---- parsing -----------------------------------------------------------------------------------
@dataclass
class ParserIssue:
    """One ONNX parser error: the node it names and the parser's own description."""

    node_index: int
    node_name: str
    operator: str
    description: str

    def __str__(self) -> str:
        lines = [line for line in self.description.splitlines() if not any(s in line for s in _NO_DRIVER_NOISE)]
        where = f"node {self.node_index} {self.node_name!r} ({self.operator})" if self.node_index >= 0 else "graph"
        return f"{where}: " + " | ".join(line.strip() for line in lines if line.strip())


@dataclass
class Network:
    """A parsed ONNX graph: the TensorRT builder, network and parser (kept alive together)."""

    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser
    logger: Any
    strongly_typed: bool
    issues: list[ParserIssue] = field(default_factory=list)


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (-1 for a dynamic dimension)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def load_plugin_libraries(libraries: Sequence[str | os.PathLike[str]], registry: Any = None) -> None:
    """Load plugin shared libraries into TensorRT's plugin registry (``getCreators`` entry point)."""
    if not libraries:
        return
    registry = registry if registry is not None else trt.get_plugin_registry()
    for path in libraries:
        if not Path(path).is_file():
            raise ToolkitError(f"plugin library {os.fspath(path)!r} does not exist; build it (see plugins/README.md)")
        if registry.load_library(os.fspath(path)) is None:
            raise BuildError(
                f"TensorRT could not load plugin library {os.fspath(path)!r}; check it matches this TensorRT"
            )


def parse_onnx(
    onnx_path: str | os.PathLike[str],
    strongly_typed: bool,
    plugins: Sequence[str | os.PathLike[str]] = (),
    echo: Callable[[str], None] | None = None,
) -> Network:
    """Parse an ONNX file into a network; parser errors come back one by one in ``issues``.

    ``strongly_typed`` asks for a strongly typed network (tensor types from the ONNX, no
    precision flags); TensorRT-RTX networks always are.
    """
    logger = _make_logger(echo)
    builder = trt.Builder(logger)
    load_plugin_libraries(plugins, builder.get_plugin_registry())
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(os.fspath(onnx_path))
    typed = _network_strongly_typed(network, strongly_typed)
    issues = [_parser_issue(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok and not issues:
        issues = [ParserIssue(-1, "", "", "; ".join(logger.messages[-3:]) or "the parser failed without a message")]
    return Network(builder, network, parser, logger, typed, issues)


def _network_strongly_typed(network: trt.INetworkDefinition, requested: bool) -> bool:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return bool(network.get_flag(flag)) if flag is not None else requested


def _parser_issue(error: trt.ParserError) -> ParserIssue:
    return ParserIssue(int(error.node()), str(error.node_name()), str(error.node_operator()), str(error.desc()))


# ---- per-layer precision (weakly typed TensorRT 10.x) --------------------------------------------
def layer_names(network: trt.INetworkDefinition) -> Iterator[str]:
    for i in range(network.num_layers):
        yield network.get_layer(i).name


def pin_layers_fp32(network: trt.INetworkDefinition, node_names: Iterable[str]) -> list[str]:
    """Set FP32 precision and output types on the layers the parser made from ``node_names``.

    The parser names a node's main layer after the node and helper layers with the node name
    plus a suffix; both are pinned. Returns the names of the pinned layers.
    """
    wanted = set(node_names)
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if _layer_node(layer.name, wanted) is None:
            continue
        if _is_float(layer.precision):
            layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if _is_float(layer.get_output_type(j)):
                layer.set_output_type(j, trt.float32)
        pinned.append(layer.name)
    return pinned


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
class BuildSettings:
    """What :func:`build_serialized` configures (all plain values; see ``engines.builder``)."""

    profiles: list[dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    fp16_flag: bool = False  # weakly typed FP16 (TensorRT 10.x): BuilderFlag.FP16 + precision constraints
    fp32_nodes: list[str] = field(default_factory=list)
    timing_cache: str | None = None
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX targets, e.g. ["8.6"]
    plugins: list[str] = field(default_factory=list)


def has_timing_cache() -> bool:
    """TensorRT has a timing cache; TensorRT-RTX keeps the call but made it a no-op."""
    return bound_runtime().name == "tensorrt"


def build_serialized(net: Network, settings: BuildSettings) -> tuple[bytes, list[str]]:
    """Build and serialize an engine; returns its bytes and the layers pinned to FP32."""
    config = net.builder.create_builder_config()
    if settings.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if settings.optimization_level is not None:
        config.builder_optimization_level = settings.optimization_level
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers stay IEEE FP32 (TF32 would round the scores)
    pinned: list[str] = []
    if settings.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = pin_layers_fp32(net.network, settings.fp32_nodes)
    for shapes in settings.profiles:
        profile = net.builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
        config.add_optimization_profile(profile)
    if settings.compute_capabilities:
        _set_compute_capabilities(config, settings.compute_capabilities)
    cache = _load_timing_cache(config, settings.timing_cache) if has_timing_cache() else None
    if settings.plugins and bound_runtime().name == "tensorrt":
        config.plugins_to_serialize = [os.fspath(p) for p in settings.plugins]
    serialized = net.builder.build_serialized_network(net.network, config)
    if serialized is None:
        detail = "; ".join(net.logger.messages[-3:]) or "no message from TensorRT"
        raise BuildError(f"TensorRT built no engine ({detail}); rerun with --verbose for the builder log")
    if cache is not None and settings.timing_cache:
        _save_timing_cache(config, settings.timing_cache)
    return bytes(memoryview(serialized)), pinned


def _set_compute_capabilities(config: Any, capabilities: Sequence[str]) -> None:
    """TensorRT-RTX: build ahead of time for these compute capabilities (e.g. "8.6", "12.0")."""
    enum = getattr(trt, "ComputeCapability", None)
    if enum is None:
        raise ToolkitError("--compute-capabilities is a TensorRT-RTX option; this TensorRT builds for its own GPU")
    values = []
    for cc in capabilities:
        member = getattr(enum, "SM" + cc.replace(".", ""), None)
        if member is None:
            known = [m.replace("SM", "")[:-1] + "." + m[-1] for m in dir(enum) if m.startswith("SM")]
            raise ToolkitError(f"compute capability {cc} is not one TensorRT-RTX builds for; choose from {known}")
        values.append(member)
    config.num_compute_capabilities = len(values)
    for i, member in enumerate(values):
        config.set_compute_capability(member, i)


def _load_timing_cache(config: trt.IBuilderConfig, path: str | None) -> trt.ITimingCache | None:
    data = Path(path).read_bytes() if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config: trt.IBuilderConfig, path: str) -> None:

    cache = config.get_timing_cache()
    with atomic_write(path) as handle:
        handle.write(memoryview(cache.serialize()))


# ---- running -------------------------------------------------------------------------------------
@dataclass
class IOTensor:
    name: str
    is_input: bool
    dtype: Any  # numpy dtype
    shape: tuple[int, ...]  # -1 for dynamic dimensions


@dataclass
class LoadedEngine:
    """A deserialized engine and the runtime that owns it."""

    runtime: trt.Runtime
    engine: trt.ICudaEngine
    logger: Any

    @property
    def io_tensors(self) -> list[IOTensor]:
        tensors = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            tensors.append(
                IOTensor(
                    name,
                    self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    trt.nptype(self.engine.get_tensor_dtype(name)),
                    dims_tuple(self.engine.get_tensor_shape(name)),
                )
            )
        return tensors

    def profile_shape(self, name: str, profile: int = 0) -> list[tuple[int, ...]]:
        """(min, opt, max) shapes of input ``name`` in optimization profile ``profile``."""
        return [dims_tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, profile)]

    def create_context(self) -> trt.IExecutionContext:
        context = self.engine.create_execution_context()
        if context is None:
            raise BuildError("TensorRT could not create an execution context (out of GPU memory?)")
        return context


def deserialize(engine_bytes: bytes, plugins: Sequence[str | os.PathLike[str]] = ()) -> LoadedEngine:
    logger = _make_logger(None)
    runtime = trt.Runtime(logger)
    load_plugin_libraries(plugins, runtime.get_plugin_registry())
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        detail = "; ".join(logger.messages[-2:]) or "no message from TensorRT"
        raise BuildError(f"TensorRT could not load the engine ({detail})")
    return LoadedEngine(runtime, engine, logger)


def execute(context: trt.IExecutionContext, addresses: dict[str, int], stream_handle: int) -> None:
    """Bind every I/O tensor's device address and enqueue with ``execute_async_v3`` on the stream.

    Input shapes must be set first (:func:`output_shapes`), so the outputs can be sized.
    """
    for name, address in addresses.items():
        context.set_tensor_address(name, address)
    if not context.execute_async_v3(stream_handle):
        raise BuildError("TensorRT execute_async_v3 failed; see the TensorRT messages above")


def output_shapes(
    loaded: LoadedEngine, context: trt.IExecutionContext, input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Set the input shapes on ``context`` and return the resulting output shapes."""
    for name, shape in input_shapes.items():
        if not context.set_input_shape(name, shape):
            raise ToolkitError(f"input {name} shape {shape} is outside the engine's profile; rebuild with --max-batch")
    return {t.name: dims_tuple(context.get_tensor_shape(t.name)) for t in loaded.io_tensors if not t.is_input}
