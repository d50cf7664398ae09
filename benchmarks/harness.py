"""Side-by-side timing of IdleViT against the dense ViT, per backend and graph: models, interleaved runs, report.

Two ways in, one table out:

* **The toolkit's own models** (:func:`run_benchmark`, needs PyTorch): for one architecture and
  several keep rates plus the dense model (keep rate 1.0, same weights, no idle layers), every
  usable backend is timed at several batch sizes. ONNX Runtime times every graph asked for, dense
  and idle alike: the default export (``dynamo``), the TorchScript exporter's (``torchscript``)
  and the default export optimised for ONNX Runtime (``optimized``, :mod:`engines.optimize`).
  The FLOPs ratio counted with ``torch.utils.flop_counter`` is the ceiling of the speed-up.
* **Given files** (:func:`time_given`, no PyTorch): ONNX graphs on ONNX Runtime and engines on
  TensorRT, each as it is; a dense graph among them is the baseline of the others.

Every configuration runs once per round, in a shuffled order, and every session is made anew
in a shuffled order every few rounds (:func:`interleaved`), so machine noise and memory placement
hit all alike; every ratio is taken within a round and reported as the median over rounds
with its spread (min..max). A loaded machine (load average above the core count) or a spread above
10% is reported as a warning: such ratios are less trustworthy.

With quantized precisions (``int8``, ``fp8``) every ONNX Runtime backend also times the Q/DQ
graph of each keep rate (:mod:`engines.quantize`, calibrated on a few digits images), reported
against the same backend's FP32 dense model and FP32 IdleViT, measured in the same rounds.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner

from engines.plan import DEFAULT_QUANT_PLAN, FP8, FP32, INT8
from idlevit.cli import progress as progress_bar
from idlevit.errors import MissingDependencyError, ToolkitError
from idlevit.fileio import atomic_write
from idlevit.metadata import ExportMetadata, read_metadata
from idlevit.names import IMAGES, reduced_graph_name
from idlevit.sidecar import EngineSidecar, sidecar_path

from .backends import BACKENDS, ORT_BACKENDS, REFERENCE, default_threads, engine_runner
from .options import DEFAULT_GRAPHS, DEFAULT_KEEP_RATES, DYNAMO_GRAPH, GRAPH_NAMES, OPTIMIZED_GRAPH, TORCHSCRIPT_GRAPH

Key = tuple[str, float]  # (configuration label, keep rate)

DENSE = 1.0  # keep rate of the dense model: every token kept, i.e. no idle layer
#: Precisions the benchmark times: FP32 everywhere, plus Q/DQ graphs on the ONNX Runtime backends.
BENCH_PRECISIONS = (FP32, INT8, FP8)
#: Calibration images of a timed Q/DQ graph (timing does not depend on the ranges).
BENCH_CALIB_IMAGES = 32
#: A ratio whose per-round spread ((max - min) / median) is above this is flagged as noisy.
MAX_SPREAD = 0.10
#: Rounds between rebuilds of every session and engine (see :func:`interleaved`).
REBUILD_EVERY = 5
NO_TORCH_TO_EXPORT = (
    "benchmarks.latency exports its own models with PyTorch, which is not installed here; time given graphs "
    "instead (--onnx X.onnx, --engine X.engine) or install the PyTorch side: pip install -e '.[torch]'"
)


def graph_label(backend: str, graph: str) -> str:
    """``onnxruntime-cpu`` timing the default export is ``onnxruntime-cpu``; another graph (or a Q/DQ graph's
    precision) adds its name: ``onnxruntime-cpu optimized``, ``onnxruntime-cpu int8``."""
    return backend if graph == DYNAMO_GRAPH else f"{backend} {graph}"


# ---- models and FLOPs ---------------------------------------------------------------------
def build_models(
    arch: str | None, keep_rates: Sequence[float], ckpt: str | None = None, seed: int = 0, img_size: int | None = None
) -> dict[float, Any]:
    """One model per keep rate, all with the same weights; keep rate 1.0 is the dense ViT.

    With ``ckpt`` the arch is the checkpoint's (read off its shapes unless ``arch`` is given);
    without, ``arch`` (default deit_small) with seeded random weights.
    """
    import torch  # lazy: PyTorch only for the toolkit's own models

    import idlevit  # lazy: as above (the models)

    if ckpt:
        base = idlevit.load_checkpoint(idlevit.resolve_checkpoint_path(ckpt), arch=arch)
    else:
        torch.manual_seed(seed)
        base = idlevit.create_model(arch or "deit_small", **({"img_size": img_size} if img_size else {}))
    state = base.state_dict()
    models = {}
    for rate in sorted(set(keep_rates) | {DENSE}):
        schedule = {"idle_layers": []} if rate == DENSE else {"keep_rate": rate}
        model = idlevit.create_model(base.cfg, **schedule)
        model.load_state_dict(state)
        models[rate] = model.eval()
    return models


# ---- measurement --------------------------------------------------------------------------
@dataclass
class Timing:
    """Latencies (seconds) of one configuration at one batch size."""

    backend: str
    keep_rate: float
    batch: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.seconds) * 1e3)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.seconds, 90) * 1e3)

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch / float(np.median(self.seconds))


def interleaved(
    runners: dict[Key, BaseRunner],
    batch: int,
    img_size: int,
    warmup: int,
    repeats: int,
    progress: bool = True,
    settle_s: float = 0.0,
    rebuild_every: int = REBUILD_EVERY,
) -> dict[Key, Timing]:
    """Time every runner ``repeats`` times on the same batch, round-robin; the runners come inactive.

    Each repeat runs every configuration once, in an order shuffled anew each round (seeded), so
    no configuration always follows the same neighbour (caches, frequency, neighbours' threads):
    a rotation would keep each one's predecessor, and with it a bias of about 1% between two
    otherwise equal graphs. Every run starts after ``settle_s`` of sleep: each runtime keeps its own default threading
    (OpenMP's and ONNX Runtime's workers spin while they wait), and the pause lets the previous
    run's spinning threads go idle before the next run is timed.

    Every ``rebuild_every`` rounds (and first) all runners are deactivated and activated again in a
    new shuffled order, then warmed up ``warmup`` times each: ONNX Runtime sessions made earlier in
    a process ran 1-2% slower than copies of the same file made later (not so with transparent huge
    pages, which points at where their memory landed), a bias no shuffling of runs removes. All runners are
    inactive again on return, also when a run fails.
    """
    if rebuild_every < 1:
        raise ToolkitError(f"rebuild_every must be at least 1, not {rebuild_every}")
    images = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    feed = {IMAGES: images}
    keys = list(runners)
    timings = {key: Timing(key[0], key[1], batch) for key in keys}
    order = np.random.default_rng(batch)
    try:
        for done in progress_bar(range(repeats), enabled=progress, desc=f"batch {batch}", unit="round", leave=False):
            if done % rebuild_every == 0:
                _rebuild(runners, [keys[i] for i in order.permutation(len(keys))])
                for key in keys:
                    for _ in range(warmup):
                        time.sleep(settle_s)
                        runners[key].infer(feed, check_inputs=False)
            for index in order.permutation(len(keys)):
                key = keys[index]
                time.sleep(settle_s)
                start = time.perf_counter()
                runners[key].infer(feed, check_inputs=False)
                timings[key].seconds.append(time.perf_counter() - start)
    finally:
        _deactivate_all(runners)
    return timings


def _rebuild(runners: dict[Key, BaseRunner], order: list[Key]) -> None:
    """Deactivate every runner, then activate them in ``order`` (their sessions and engines made anew)."""
    _deactivate_all(runners)
    for key in order:
        runners[key].activate()


def _deactivate_all(runners: dict[Key, BaseRunner]) -> None:
    for runner in runners.values():
        if runner.is_active:
            runner.deactivate()


def round_ratios(num: Timing, den: Timing) -> np.ndarray:
    """num/den of every round (both measured in the same round, so noise common to both cancels)."""
    return np.asarray(num.seconds) / np.asarray(den.seconds)


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over rounds of num/den measured in the same round."""
    return float(np.median(round_ratios(num, den)))


def ratio_spread(num: Timing, den: Timing) -> tuple[float, float, float]:
    """(min, median, max) of the per-round ratios num/den."""
    ratios = round_ratios(num, den)
    return float(ratios.min()), float(np.median(ratios)), float(ratios.max())


# ---- what is timed --------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One timed configuration and the ones it is compared with (keys of the same run, or None)."""

    label: str  # the row's name: backend, plus the graph or file when there are several
    backend: str
    graph: str  # dynamo / torchscript / optimized / int8 / fp8, or the given file's name
    keep_rate: float
    dense: Key | None = None  # the same graph's dense model: the time ratio's denominator
    reference: Key | None = None  # PyTorch eager on the same model: the speed-up's numerator
    default: Key | None = None  # the default export on the same backend and model (other graphs only)
    fp32: tuple[Key, Key] | None = None  # a Q/DQ graph's FP32 (dense, IdleViT) on the same backend

    @property
    def key(self) -> Key:
        return self.label, self.keep_rate


@dataclass
class BenchResult:
    """Everything one run measured; written as JSON and drawn as PNG."""

    arch: str
    keep_rates: list[float]
    batch_sizes: list[int]
    threads: int
    warmup: int
    repeats: int
    backends: list[str]  # configuration labels, in table order
    skipped: dict[str, str]  # backend or graph -> why it did not run
    flops: dict[str, int]  # keep rate -> reference-forward FLOPs per image ({} for given files)
    graph_flops: dict[str, int]  # keep rate -> export-forward (ONNX graph) FLOPs per image
    rows: list[dict[str, float | int | str]]  # one per (batch, configuration)
    seconds: float = 0.0
    settle_ms: float = 0.0
    torch_version: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    precisions: list[str] = field(default_factory=lambda: [FP32])
    quant_plan: str = ""
    graphs: list[str] = field(default_factory=lambda: [DYNAMO_GRAPH])
    given: list[str] = field(default_factory=list)  # files timed as given (empty: the toolkit's own exports)
    num_tokens: int = 0
    img_size: int = 0
    load: dict[str, float] = field(default_factory=dict)  # load average at start and end, and the core count
    warnings: list[str] = field(default_factory=list)

    def row(self, batch: int, backend: str, keep_rate: float) -> dict[str, float | int | str]:
        return next(
            r for r in self.rows if r["batch"] == batch and r["backend"] == backend and r["keep_rate"] == keep_rate
        )


def _check_common(batch_sizes: Sequence[int], repeats: int, warmup: int, settle_ms: float) -> None:
    if min(batch_sizes, default=0) < 1 or repeats < 1 or warmup < 0 or settle_ms < 0:
        raise ToolkitError("batch sizes and --repeats must be >= 1, --warmup and --settle-ms >= 0")


def run_benchmark(
    arch: str | None = "deit_small",
    keep_rates: Sequence[float] = DEFAULT_KEEP_RATES,
    batch_sizes: Sequence[int] = (1, 8),
    backends: Sequence[str] = tuple(BACKENDS),
    warmup: int = 2,
    repeats: int = 5,
    threads: int = 0,
    ckpt: str | None = None,
    workdir: str | Path | None = None,
    progress: bool = True,
    img_size: int | None = None,
    settle_ms: float = 20.0,
    precisions: Sequence[str] = (FP32,),
    quant_plan: str = DEFAULT_QUANT_PLAN,
    graphs: Sequence[str] = DEFAULT_GRAPHS,
) -> BenchResult:
    """Export the toolkit's own models, time and summarise them; see the module docstring."""
    started, load_start = time.perf_counter(), os.getloadavg()
    threads = threads or default_threads()
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ToolkitError(f"unknown backend(s) {unknown}; choose from: {', '.join(BACKENDS)}")
    if any(not 0.0 < r <= 1.0 for r in keep_rates):
        raise ToolkitError(f"keep rates {list(keep_rates)} must lie in (0, 1]")
    _check_common(batch_sizes, repeats, warmup, settle_ms)
    unknown_graphs = [g for g in graphs if g not in GRAPH_NAMES]
    if unknown_graphs or not graphs:
        raise ToolkitError(f"unknown graph(s) {unknown_graphs}; choose from: {', '.join(GRAPH_NAMES)}")
    graphs = list(dict.fromkeys(graphs))
    unknown_precisions = [p for p in precisions if p not in BENCH_PRECISIONS]
    if unknown_precisions:
        raise ToolkitError(f"unknown precision(s) {unknown_precisions}; choose from: {', '.join(BENCH_PRECISIONS)}")
    quantized = [p for p in dict.fromkeys(precisions) if p != FP32]
    if quantized and not any(b in ORT_BACKENDS for b in backends):
        raise ToolkitError(
            f"--precisions {','.join(quantized)} are timed on ONNX Runtime; add one of the backends {ORT_BACKENDS}"
        )
    if quantized and DYNAMO_GRAPH not in graphs:
        raise ToolkitError(
            f"--precisions {','.join(quantized)}: Q/DQ graphs are made from the default export and compared with it; "
            f"add {DYNAMO_GRAPH} to --graphs"
        )
    try:
        import torch  # lazy: PyTorch exports the toolkit's own models (given graphs need none)
    except ImportError:
        raise MissingDependencyError(NO_TORCH_TO_EXPORT) from None
    from export.exporter import export_onnx  # lazy: as above

    from .flops import count_flops  # lazy: as above

    skipped = {name: why for name in backends if (why := BACKENDS[name].unavailable())}
    usable = [name for name in backends if name not in skipped]
    models = build_models(arch, keep_rates, ckpt, img_size=img_size)
    rates = list(models)
    flops = {str(r): count_flops(m) for r, m in models.items()}
    graph_flops = {str(r): count_flops(m, m.forward_export) for r, m in models.items()}
    cfg = models[DENSE].cfg
    needs_onnx = any(b != REFERENCE for b in usable)
    with tempfile.TemporaryDirectory(prefix="idlevit-bench-") as tmp:
        folder = Path(workdir or tmp)
        files = _export_graphs(models, graphs if needs_onnx else [], cfg.name, folder, progress, export_onnx)
        if quantized and any(b in ORT_BACKENDS for b in usable):  # Q/DQ graphs: more variants of the default export
            files.update(_quantize_all(files[DYNAMO_GRAPH], quantized, quant_plan, folder, progress))
        configs: list[Config] = []
        runners: dict[Key, BaseRunner] = {}
        for name in list(usable):
            variants = [*graphs, *quantized] if name in ORT_BACKENDS else [DYNAMO_GRAPH]
            try:
                made = []
                for variant in variants:
                    label = graph_label(name, variant)
                    for rate, model in models.items():
                        path = files[variant][rate] if name != REFERENCE else Path()
                        runners[label, rate] = _checked(BACKENDS[name].make(model, path, threads, max(batch_sizes)))
                        other_graph = variant in graphs and variant != DYNAMO_GRAPH and DYNAMO_GRAPH in variants
                        made.append(
                            Config(
                                label,
                                name,
                                variant,
                                rate,
                                dense=(label, DENSE),
                                reference=(REFERENCE, rate) if REFERENCE in usable else None,
                                default=(name, rate) if other_graph else None,
                                fp32=((name, DENSE), (name, rate)) if variant in quantized else None,
                            )
                        )
                configs += made
            except ToolkitError as err:  # e.g. an engine that does not build here: a note, not a failure
                skipped[name] = str(err)
                usable.remove(name)
                labels = {graph_label(name, variant) for variant in variants}
                runners = {key: run for key, run in runners.items() if key[0] not in labels}
        if not configs:
            raise MissingDependencyError("nothing to time: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        rows = []
        for batch in batch_sizes:
            timings = interleaved(runners, batch, cfg.img_size, warmup, repeats, progress, settle_ms / 1e3)
            rows += summarise(timings, configs, batch, flops)
    result = BenchResult(
        cfg.name,
        rates,
        list(batch_sizes),
        threads,
        warmup,
        repeats,
        list(dict.fromkeys(c.label for c in configs)),
        skipped,
        flops,
        graph_flops,
        rows,
        time.perf_counter() - started,
        settle_ms,
        torch.__version__,
        meta={"cpu": _cpu_name(), "onnxruntime": _version("onnxruntime")},
        precisions=[FP32, *quantized],
        quant_plan=quant_plan if quantized else "",
        graphs=graphs,
        num_tokens=cfg.num_tokens,
        img_size=cfg.img_size,
    )
    _finish(result, load_start)
    return result


def _export_graphs(
    models: dict[float, Any],
    graphs: Sequence[str],
    arch: str,
    folder: Path,
    progress: bool,
    export_onnx: Callable[..., object],
) -> dict[str, dict[float, Path]]:
    """Every asked-for graph of every model: graph -> keep rate -> file (the optimised one from the default export)."""
    from export.exporter import optimize_file  # lazy: PyTorch side

    if not graphs:
        return {}
    # the default export is the source of the optimised and the Q/DQ graphs, so it is always made
    exporters = [DYNAMO_GRAPH, *([TORCHSCRIPT_GRAPH] if TORCHSCRIPT_GRAPH in graphs else [])]
    files: dict[str, dict[float, Path]] = {graph: {} for graph in [*exporters, *graphs]}
    jobs = [(graph, rate) for graph in exporters for rate in models]
    for graph, rate in progress_bar(jobs, enabled=progress, desc="export", unit="graph", leave=False):
        path = folder / f"{arch}_keep{rate:g}_{graph}.onnx"
        export_onnx(models[rate], path, exporter=graph, verify_batch=0, progress=False)
        files[graph][rate] = path
    if OPTIMIZED_GRAPH in graphs:
        for rate, source in files[DYNAMO_GRAPH].items():
            files[OPTIMIZED_GRAPH][rate] = optimize_file(source, folder / f"{arch}_keep{rate:g}_{OPTIMIZED_GRAPH}.onnx")
    return files


def time_given(
    onnx_files: Sequence[str | os.PathLike[str]] = (),
    engine_files: Sequence[str | os.PathLike[str]] = (),
    batch_sizes: Sequence[int] = (1, 8),
    backends: Sequence[str] = tuple(ORT_BACKENDS),
    warmup: int = 2,
    repeats: int = 5,
    threads: int = 0,
    progress: bool = True,
    settle_ms: float = 20.0,
) -> BenchResult:
    """Time given ONNX graphs (on every usable ONNX Runtime backend) and engines (TensorRT) as they are.

    Needs no PyTorch. Rows are the files; a dense graph (no idle layer) of the same model is the
    baseline of the IdleViT graphs on the same backend, an optimised one of the optimised ones.
    Raises :class:`MissingDependencyError` (exit 3) when nothing given can run here.
    """
    started, load_start = time.perf_counter(), os.getloadavg()
    threads = threads or default_threads()
    _check_common(batch_sizes, repeats, warmup, settle_ms)
    if not onnx_files and not engine_files:
        raise ToolkitError("nothing to time: pass --onnx X.onnx and/or --engine X.engine")
    graphs = {Path(p): read_metadata(p) for p in onnx_files}
    engines = {Path(p): _engine_metadata(Path(p)) for p in engine_files}
    metas = [*graphs.values(), *engines.values()]
    sizes = {meta.img_size for meta in metas}
    if len(sizes) != 1:
        raise ToolkitError(f"the given graphs take different image sizes {sorted(sizes)}; time them in separate runs")
    asked = [b for b in backends if b in ORT_BACKENDS] if graphs else []
    skipped = {name: why for name in asked if (why := BACKENDS[name].unavailable())}
    if REFERENCE in backends:
        skipped[REFERENCE] = "given graphs are timed as they are (PyTorch rows come with the toolkit's own exports)"
    if engines and (why := BACKENDS["tensorrt"].unavailable()):
        skipped["tensorrt"] = why
    configs: list[Config] = []
    runners: dict[Key, BaseRunner] = {}
    for name in [b for b in asked if b not in skipped]:
        for path, meta in graphs.items():
            runner = BACKENDS[name].make(None, path, threads, max(batch_sizes))
            configs.append(Config(f"{name} {path.name}", name, path.name, _keep_rate(meta)))
            runners[configs[-1].key] = _checked(runner)
    if "tensorrt" not in skipped:
        for path, meta in engines.items():
            configs.append(Config(f"tensorrt {path.name}", "tensorrt", path.name, _keep_rate(meta)))
            runners[configs[-1].key] = _checked(engine_runner(path))
    if not configs:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items() if k != REFERENCE)
        raise MissingDependencyError(f"nothing given can run here: {reasons}")
    configs = _with_dense_baselines(configs, {**graphs, **engines})
    rows = []
    for batch in batch_sizes:
        timings = interleaved(runners, batch, metas[0].img_size, warmup, repeats, progress, settle_ms / 1e3)
        rows += summarise(timings, configs, batch, {})
    first = metas[0]
    result = BenchResult(
        first.arch,
        sorted({c.keep_rate for c in configs}),
        list(batch_sizes),
        threads,
        warmup,
        repeats,
        [c.label for c in configs],
        skipped,
        {},
        {},
        rows,
        time.perf_counter() - started,
        settle_ms,
        meta={"cpu": _cpu_name(), "onnxruntime": _version("onnxruntime")},
        graphs=[],
        given=[os.fspath(p) for p in [*graphs, *engines]],
        num_tokens=first.num_tokens,
        img_size=first.img_size,
    )
    _finish(result, load_start)
    return result


def _checked(runner: BaseRunner) -> BaseRunner:
    """``runner``, activated once and deactivated: one that cannot run fails here, before any timing."""
    with runner:
        pass
    return runner


def _engine_metadata(path: Path) -> ExportMetadata:
    if not path.is_file():
        raise ToolkitError(f"engine {os.fspath(path)!r} does not exist; build one with `python -m export.trt`")
    return ExportMetadata(**EngineSidecar.read(sidecar_path(path)).idlevit)


def _keep_rate(meta: ExportMetadata) -> float:
    """The base keep rate of a graph's schedule (its first idle layer's ratio); 1.0 for a dense graph."""
    return float(meta.keep_ratios[0]) if meta.idle_layers else DENSE


def _with_dense_baselines(configs: list[Config], metas: dict[Path, ExportMetadata]) -> list[Config]:
    """Each given graph's baseline: the dense graph of the same model on the same backend, made alike
    (same exporter, optimisation and precision)."""
    by_name = {path.name: meta for path, meta in metas.items()}

    def kind(config: Config) -> tuple[str, str, int, str, str, str]:
        meta = by_name[config.graph]
        exporter = str(meta.extra.get("exporter", ""))
        return config.backend, meta.arch, meta.num_classes, meta.optimized_for, exporter, meta.precision

    dense = {kind(c): c.key for c in configs if c.keep_rate == DENSE}
    return [Config(c.label, c.backend, c.graph, c.keep_rate, dense=dense.get(kind(c))) for c in configs]


def _quantize_all(
    onnx_paths: dict[float, Path], precisions: list[str], plan: str, folder: Path, progress: bool
) -> dict[str, dict[float, Path]]:
    """Precision -> keep rate -> the Q/DQ graph of that keep rate's ONNX, calibrated on a few digits."""
    from engines.quantize import calibration_images, quantize_onnx, write_quantized_onnx  # lazy: ModelOpt, optional

    paths: dict[str, dict[float, Path]] = {precision: {} for precision in precisions}
    jobs = [(p, rate) for p in precisions for rate in onnx_paths]
    for precision, rate in progress_bar(jobs, enabled=progress, desc="quantize", unit="graph", leave=False):
        source = onnx_paths[rate]
        images, where = calibration_images(read_metadata(source), count=BENCH_CALIB_IMAGES)
        model, _ = quantize_onnx(source, precision, plan, images=images, calibration=where)
        paths[precision][rate] = write_quantized_onnx(model, folder / reduced_graph_name(source.stem, precision))
    return paths


# ---- summary ----------------------------------------------------------------------------------
def _spread(row: dict[str, Any], name: str, timings: dict[Key, Timing], num: Key | None, den: Key | None) -> None:
    """``row[name]`` and ``row[name + '_min' / '_max']``: the per-round ratio num/den (NaN when either is missing)."""
    if num is None or den is None or num not in timings or den not in timings:
        low = mid = high = math.nan
    else:
        low, mid, high = ratio_spread(timings[num], timings[den])
    row[name], row[f"{name}_min"], row[f"{name}_max"] = mid, low, high


def summarise(
    timings: dict[Key, Timing], configs: Sequence[Config], batch: int, flops: dict[str, int]
) -> list[dict[str, float | int | str]]:
    """One row per configuration: latency, throughput, and every ratio with its per-round spread.

    ``vs_best_dense``: time over the fastest dense graph (by median) on the same backend, paired
    by round; with every graph optimised or not, the fair IdleViT-over-dense figure.
    """
    best_dense: dict[str, Key] = {}
    for config in configs:
        if config.keep_rate == DENSE and config.key in timings and not config.fp32:
            current = best_dense.get(config.backend)
            if current is None or timings[config.key].median_ms < timings[current].median_ms:
                best_dense[config.backend] = config.key
    rows = []
    for config in configs:
        t = timings[config.key]
        row: dict[str, Any] = {
            "batch": batch,
            "backend": config.label,
            "runtime": config.backend,
            "graph": config.graph,
            "keep_rate": config.keep_rate,
            "median_ms": t.median_ms,
            "p90_ms": t.p90_ms,
            "throughput": t.throughput,
            "flops_ratio": flops[str(config.keep_rate)] / flops[str(DENSE)] if flops else math.nan,
        }
        _spread(row, "time_ratio", timings, config.key, config.dense)
        _spread(row, "speedup_vs_pytorch", timings, config.reference, config.key)
        _spread(row, "vs_best_dense", timings, config.key, None if config.fp32 else best_dense.get(config.backend))
        _spread(row, "vs_default_graph", timings, config.key, config.default)
        if config.fp32:
            row["vs_fp32_dense"] = paired_ratio(t, timings[config.fp32[0]])
            row["vs_fp32_idlevit"] = paired_ratio(t, timings[config.fp32[1]])
        rows.append(row)
    return rows


def _finish(result: BenchResult, load_start: tuple[float, float, float]) -> None:
    """Record the machine's load and the warnings a reader must see next to the ratios."""
    cores = os.cpu_count() or 1
    load_end = os.getloadavg()
    result.load = {"start": load_start[0], "end": load_end[0], "cores": cores}
    busiest = max(load_start[0], load_end[0])
    if busiest > cores:
        result.warnings.append(
            f"the machine was loaded (1-minute load average {busiest:.1f} on {cores} cores): other processes shared "
            "the cores, so absolute times are inflated and ratios are less trustworthy; rerun on a quiet machine"
        )
    noisy = []
    for row in result.rows:
        for name in ("time_ratio", "speedup_vs_pytorch", "vs_best_dense", "vs_default_graph"):
            low, mid, high = row[f"{name}_min"], row[name], row[f"{name}_max"]
            if mid and not math.isnan(mid) and (high - low) / mid > MAX_SPREAD:
                noisy.append(f"{row['backend']} keep {_rate_label(row['keep_rate'])} batch {row['batch']} {name}")
    if noisy:
        result.warnings.append(
            f"{len(noisy)} ratio(s) spread over more than {MAX_SPREAD:.0%} between rounds (e.g. {noisy[0]}): "
            "the machine's speed changed during the run; rerun with more --repeats on a quiet machine"
        )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "absent"


# ---- report -------------------------------------------------------------------------------
def _rate_label(rate: float) -> str:
    return "dense" if rate == DENSE else f"{rate:g}"


def _cell(row: dict[str, Any], name: str, suffix: str = "") -> str:
    """``0.712 [0.70..0.73]`` (median [min..max] over rounds), or ``n/a``."""
    mid = float(row.get(name, math.nan))
    if math.isnan(mid):
        return "n/a"
    return f"{mid:.3f}{suffix} [{row[f'{name}_min']:.2f}..{row[f'{name}_max']:.2f}]"


def format_table(result: BenchResult) -> str:
    """A plain-text table per batch size: one row per configuration, ratios as median [min..max] over rounds."""
    source = "given files: " + ", ".join(Path(p).name for p in result.given) if result.given else result.arch
    lines = [
        f"{source}, {result.threads} threads, {result.repeats} interleaved rounds after {result.warmup} "
        f"warm-up runs, {result.settle_ms:g} ms pause before each run",
        "vs dense: time / the same graph's dense time; vs best dense: time / the fastest dense graph on that backend; "
        "speed-up: PyTorch eager time / time; each the median [min..max] of per-round ratios",
    ]
    if result.flops:
        lines.append(
            "FLOPs ratio: the model's (reference forward, as published), the ceiling of the speed-up; graph FLOPs: "
            "the plain export's, which ranks tokens without projecting every key (the optimised graph also computes "
            "only the class token after the last attention)"
        )
    width = max(len(label) for label in result.backends) + 1
    for batch in result.batch_sizes:
        head = f"{'configuration':<{width}} {'keep':>5} {'FLOPs':>6} {'graph':>6} | {'med ms':>8} {'p90 ms':>8} "
        head += f"{'img/s':>7} | {'vs dense':^22} | {'vs best dense':^22} | {'speed-up vs PyTorch':^23}"
        lines += ["", f"batch {batch}", head]
        for label in result.backends:
            for row in [r for r in result.rows if r["batch"] == batch and r["backend"] == label]:
                rate = row["keep_rate"]
                flop = f"{row['flops_ratio']:6.3f}" if not math.isnan(row["flops_ratio"]) else f"{'':6}"
                graph = (
                    f"{result.graph_flops[str(rate)] / result.graph_flops[str(DENSE)]:6.3f}"
                    if result.graph_flops
                    else f"{'':6}"
                )
                lines.append(
                    f"{label:<{width}} {_rate_label(rate):>5} {flop} {graph} | {row['median_ms']:8.1f} "
                    f"{row['p90_ms']:8.1f} {row['throughput']:7.1f} | {_cell(row, 'time_ratio'):^22} | "
                    f"{_cell(row, 'vs_best_dense'):^22} | {_cell(row, 'speedup_vs_pytorch', 'x'):^23}"
                )
    others = [r for r in result.rows if not math.isnan(float(r.get("vs_default_graph", math.nan)))]
    if others:
        lines += ["", "other graphs against the default export (dynamo) on the same backend, same rounds:"]
        for row in others:
            lines.append(
                f"  {row['backend']:<{width}} batch {row['batch']:<3} keep {_rate_label(row['keep_rate']):>5}: "
                f"{_cell(row, 'vs_default_graph')}"
            )
    quantized = [r for r in result.rows if "vs_fp32_dense" in r]
    if quantized:
        lines += ["", f"Q/DQ graphs (plan {result.quant_plan}) against the same backend's FP32 graphs, same rounds:"]
        lines.append(f"{'backend':>24} {'batch':>5} {'keep':>5} | {'vs FP32 dense':>13} {'vs FP32 IdleViT':>15}")
        for r in quantized:
            lines.append(
                f"{r['backend']:>24} {r['batch']:>5} {_rate_label(r['keep_rate']):>5} | "
                f"{r['vs_fp32_dense']:13.3f} {r['vs_fp32_idlevit']:15.3f}"
            )
    slower = [r for r in result.rows if r["keep_rate"] != DENSE and float(r["time_ratio_min"]) > 1.0]
    if slower:  # slower in every round: not noise
        r = slower[0]
        lines += [
            "",
            f"IdleViT is slower than dense in {len(slower)} row(s) (e.g. {r['backend']}, keep {r['keep_rate']:g}, "
            f"batch {r['batch']}: {r['time_ratio']:.2f}x in the median round, slower in every round): with "
            f"{result.num_tokens} image tokens ({result.img_size} px) each idle layer's fixed work (scoring, TopK, "
            "two gathers, the scatter and their dispatch) costs more than the matmuls it saves on the idle tokens; "
            "the saving grows with the token count and the batch"
            + ("" if result.num_tokens >= 196 else " (deit_small at 224 px has 196 tokens)"),
        ]
    for name, why in result.skipped.items():
        lines.append(f"skipped {name}: {why}")
    if result.load:
        lines.append(
            f"load average {result.load['start']:.1f} at the start, {result.load['end']:.1f} at the end "
            f"({result.load['cores']:g} cores); benchmark took {result.seconds:.0f} s"
        )
    else:
        lines.append(f"benchmark took {result.seconds:.0f} s")
    return "\n".join(lines)


def write_json(result: BenchResult, path: Path) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(asdict(result), handle, indent=2)


def plot(result: BenchResult, path: Path) -> None:
    """Left: latency per image vs keep rate; right: time ratio vs keep rate under the FLOPs ceiling."""
    import matplotlib  # lazy: matplotlib for the plot only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    if result.flops:
        rates = result.keep_rates
        flop_ratio = [result.flops[str(r)] / result.flops[str(DENSE)] for r in rates]
        right.plot(rates, flop_ratio, "k--", linewidth=2, label="FLOPs ratio (ceiling)")
    for batch in result.batch_sizes:
        for name in result.backends:
            rows = sorted(
                (r for r in result.rows if r["batch"] == batch and r["backend"] == name), key=lambda r: r["keep_rate"]
            )
            label = f"{name}, batch {batch}"
            left.plot([r["keep_rate"] for r in rows], [r["median_ms"] / batch for r in rows], "o-", label=label)
            right.plot([r["keep_rate"] for r in rows], [r["time_ratio"] for r in rows], "o-", label=label)
    left.set(xlabel="keep rate (1.0 = dense)", ylabel="median latency per image (ms)", yscale="log")
    left.set_title(f"{result.arch}: latency")
    right.set(xlabel="keep rate (1.0 = dense)", ylabel="time / dense time")
    right.set_title("IdleViT / dense: measured vs FLOPs")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
