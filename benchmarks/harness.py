"""Side-by-side timing of IdleViT against the dense ViT, per backend: models, FLOPs, interleaved runs, report.

For one architecture and several keep rates (plus the dense model: keep rate 1.0, same
weights, no idle layers) every usable backend is timed at several batch sizes, interleaved
round-robin (every repeat runs every configuration once, in a rotating order), so machine noise
hits all configurations alike. Per keep rate the result holds the measured time ratio IdleViT /
dense (the median of per-repeat ratios) next to the FLOPs ratio counted with
``torch.utils.flop_counter``, the ceiling of the speed-up, and each backend's speed-up over
PyTorch eager. ``python -m benchmarks.latency`` prints and plots it.

With quantized precisions (``int8``, ``fp8``) every ONNX Runtime backend also times the Q/DQ
graph of each keep rate (:mod:`engines.quantize`, the default plan, calibrated on a few digits
images at the model's size): a backend named ``onnxruntime-cpu int8``, whose rows also hold its
time against the same backend's FP32 dense model and FP32 IdleViT of that keep rate, measured in
the same interleaved rounds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import idlevit
from engines.plan import DEFAULT_QUANT_PLAN, FP8, FP32, INT8
from engines.quantize import calibration_images, quantize_onnx, write_quantized_onnx
from export.exporter import export_onnx
from idlevit.cli import progress as progress_bar
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write
from idlevit.metadata import read_metadata
from idlevit.names import IMAGES

from .backends import BACKENDS, REFERENCE, default_threads
from .flops import count_flops
from .options import DEFAULT_KEEP_RATES

Runner = Callable[[dict[str, np.ndarray]], object]  # a runner's infer on a feed dict

DENSE = 1.0  # keep rate of the dense model: every token kept, i.e. no idle layer
#: Precisions the benchmark times: FP32 everywhere, plus Q/DQ graphs on the ONNX Runtime backends.
BENCH_PRECISIONS = (FP32, INT8, FP8)
#: ONNX Runtime backends: the ones that also time Q/DQ graphs.
ORT_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda")
#: Calibration images of a timed Q/DQ graph (timing does not depend on the ranges).
BENCH_CALIB_IMAGES = 32


def quantized_name(backend: str, precision: str) -> str:
    """``onnxruntime-cpu`` timing an INT8 graph: ``onnxruntime-cpu int8``."""
    return backend if precision == FP32 else f"{backend} {precision}"


# ---- models and FLOPs ---------------------------------------------------------------------
def build_models(
    arch: str, keep_rates: Sequence[float], ckpt: str | None = None, seed: int = 0, img_size: int | None = None
) -> dict[float, idlevit.IdleViT]:
    """One model per keep rate, all with the same weights; keep rate 1.0 is the dense ViT."""
    if ckpt:
        base = idlevit.load_checkpoint(idlevit.resolve_checkpoint_path(ckpt), arch=arch)
    else:
        torch.manual_seed(seed)
        base = idlevit.create_model(arch, **({"img_size": img_size} if img_size else {}))
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
    """Latencies (seconds) of one backend on one keep rate at one batch size."""

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
    runners: dict[tuple[str, float], Runner],
    batch: int,
    img_size: int,
    warmup: int,
    repeats: int,
    progress: bool = True,
    settle_s: float = 0.0,
) -> dict[tuple[str, float], Timing]:
    """Time every runner ``repeats`` times on the same batch, round-robin.

    Each repeat runs every configuration once; the start of the round rotates so no
    configuration always follows the same neighbour (caches, frequency, neighbours' threads).
    Every run starts after ``settle_s`` of sleep: each runtime keeps its own default threading
    (OpenMP's and ONNX Runtime's workers spin while they wait), and the pause lets the previous
    run's spinning threads go idle before the next run is timed.
    """
    images = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
    keys = list(runners)
    for key in keys:
        for _ in range(warmup):
            time.sleep(settle_s)
            runners[key]({IMAGES: images})
    timings = {key: Timing(key[0], key[1], batch) for key in keys}
    for rep in progress_bar(range(repeats), enabled=progress, desc=f"batch {batch}", unit="round", leave=False):
        shift = rep % len(keys)
        for key in keys[shift:] + keys[:shift]:
            time.sleep(settle_s)
            start = time.perf_counter()
            runners[key]({IMAGES: images})
            timings[key].seconds.append(time.perf_counter() - start)
    return timings


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median over repeats of num/den measured in the same round (noise common to both cancels)."""
    return float(np.median(np.asarray(num.seconds) / np.asarray(den.seconds)))


# ---- the whole benchmark ------------------------------------------------------------------
@dataclass
class BenchResult:
    """Everything one run measured; written as JSON and drawn as PNG."""

    arch: str
    keep_rates: list[float]
    batch_sizes: list[int]
    threads: int
    warmup: int
    repeats: int
    backends: list[str]
    skipped: dict[str, str]  # backend -> why it did not run
    flops: dict[str, int]  # keep rate -> reference-forward FLOPs per image
    graph_flops: dict[str, int]  # keep rate -> export-forward (ONNX graph) FLOPs per image
    rows: list[dict[str, float | int | str]]  # one per (batch, backend, keep rate)
    seconds: float = 0.0
    settle_ms: float = 0.0
    torch_version: str = torch.__version__
    meta: dict[str, str] = field(default_factory=dict)
    precisions: list[str] = field(default_factory=lambda: [FP32])
    quant_plan: str = ""

    def row(self, batch: int, backend: str, keep_rate: float) -> dict[str, float | int | str]:
        return next(
            r for r in self.rows if r["batch"] == batch and r["backend"] == backend and r["keep_rate"] == keep_rate
        )


def run_benchmark(
    arch: str = "deit_small",
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
) -> BenchResult:
    """Export, time and summarise; see the module docstring."""
    started = time.perf_counter()
    threads = threads or default_threads()
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ToolkitError(f"unknown backend(s) {unknown}; choose from: {', '.join(BACKENDS)}")
    if any(not 0.0 < r <= 1.0 for r in keep_rates):
        raise ToolkitError(f"keep rates {list(keep_rates)} must lie in (0, 1]")
    if min(batch_sizes, default=0) < 1 or repeats < 1 or warmup < 0 or settle_ms < 0:
        raise ToolkitError("batch sizes and --repeats must be >= 1, --warmup and --settle-ms >= 0")
    unknown_precisions = [p for p in precisions if p not in BENCH_PRECISIONS]
    if unknown_precisions:
        raise ToolkitError(f"unknown precision(s) {unknown_precisions}; choose from: {', '.join(BENCH_PRECISIONS)}")
    quantized = [p for p in dict.fromkeys(precisions) if p != FP32]
    if quantized and not any(b in ORT_BACKENDS for b in backends):
        raise ToolkitError(
            f"--precisions {','.join(quantized)} are timed on ONNX Runtime; add one of the backends {ORT_BACKENDS}"
        )
    skipped = {name: why for name in backends if (why := BACKENDS[name].unavailable())}
    usable = [name for name in backends if name not in skipped]
    models = build_models(arch, keep_rates, ckpt, img_size=img_size)
    rates = list(models)
    flops = {str(r): count_flops(m) for r, m in models.items()}
    graph_flops = {str(r): count_flops(m, m.forward_export) for r, m in models.items()}
    with tempfile.TemporaryDirectory(prefix="idlevit-bench-") as tmp, contextlib.ExitStack() as active:
        folder = Path(workdir or tmp)
        onnx_paths = {}
        for rate, model in progress_bar(models.items(), enabled=progress, desc="export", unit="model", leave=False):
            onnx_paths[rate] = folder / f"{arch}_keep{rate:g}.onnx"
            export_onnx(model, onnx_paths[rate], verify_batch=0, progress=False)
        quant_paths: dict[tuple[str, float], Path] = {}
        if quantized and any(b in ORT_BACKENDS for b in usable):
            quant_paths = _quantize_all(onnx_paths, quantized, quant_plan, folder, progress)
        runners: dict[tuple[str, float], Runner] = {}
        for name in list(usable):
            try:
                for rate, model in models.items():
                    runner = BACKENDS[name].make(model, onnx_paths[rate], threads, max(batch_sizes))
                    active.enter_context(runner)
                    runners[name, rate] = functools.partial(runner.infer, check_inputs=False)
            except ToolkitError as err:  # e.g. an engine that does not build here: a note, not a failure
                skipped[name] = str(err)
                usable.remove(name)
                runners = {key: run for key, run in runners.items() if key[0] != name}
        timed = list(usable)
        for name in [b for b in usable if b in ORT_BACKENDS]:
            for precision in quantized:
                label = quantized_name(name, precision)
                for rate, model in models.items():
                    runner = BACKENDS[name].make(model, quant_paths[precision, rate], threads, max(batch_sizes))
                    active.enter_context(runner)
                    runners[label, rate] = functools.partial(runner.infer, check_inputs=False)
                timed.append(label)
        rows = []
        for batch in batch_sizes:
            timings = interleaved(
                runners, batch, models[DENSE].cfg.img_size, warmup, repeats, progress, settle_ms / 1e3
            )
            rows += summarise(timings, rates, timed, batch, flops)
    meta = {"cpu": _cpu_name(), "onnxruntime": _version("onnxruntime")}
    return BenchResult(
        arch,
        rates,
        list(batch_sizes),
        threads,
        warmup,
        repeats,
        timed,
        skipped,
        flops,
        graph_flops,
        rows,
        time.perf_counter() - started,
        settle_ms,
        meta=meta,
        precisions=[FP32, *quantized],
        quant_plan=quant_plan if quantized else "",
    )


def _quantize_all(
    onnx_paths: dict[float, Path], precisions: list[str], plan: str, folder: Path, progress: bool
) -> dict[tuple[str, float], Path]:
    """The Q/DQ graph of every keep rate's ONNX at every quantized precision, calibrated on a few digits."""
    paths = {}
    jobs = [(p, rate) for p in precisions for rate in onnx_paths]
    for precision, rate in progress_bar(jobs, enabled=progress, desc="quantize", unit="graph", leave=False):
        source = onnx_paths[rate]
        images, where = calibration_images(read_metadata(source), count=BENCH_CALIB_IMAGES)
        model, _ = quantize_onnx(source, precision, plan, images=images, calibration=where)
        paths[precision, rate] = write_quantized_onnx(model, folder / f"{source.stem}_{precision}.onnx")
    return paths


def summarise(
    timings: dict[tuple[str, float], Timing],
    rates: list[float],
    backends: list[str],
    batch: int,
    flops: dict[str, int],
) -> list[dict[str, float | int | str]]:
    rows = []
    for name in backends:
        fp32 = name.split(" ")[0]  # the FP32 backend a quantized one ("onnxruntime-cpu int8") is compared with
        for rate in rates:
            t = timings[name, rate]
            ref = timings.get((REFERENCE, rate))
            row: dict[str, float | int | str] = {
                "batch": batch,
                "backend": name,
                "keep_rate": rate,
                "median_ms": t.median_ms,
                "p90_ms": t.p90_ms,
                "throughput": t.throughput,
                "time_ratio": paired_ratio(t, timings[name, DENSE]),
                "flops_ratio": flops[str(rate)] / flops[str(DENSE)],
                "speedup_vs_pytorch": paired_ratio(ref, t) if ref else math.nan,
            }
            if fp32 != name:
                row["vs_fp32_dense"] = paired_ratio(t, timings[fp32, DENSE])
                row["vs_fp32_idlevit"] = paired_ratio(t, timings[fp32, rate])
            rows.append(row)
    return rows


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
def format_table(result: BenchResult) -> str:
    """A plain-text table per batch size: rows are keep rates, column groups are backends."""
    lines = [
        f"{result.arch}, {result.threads} threads, {result.repeats} interleaved repeats after {result.warmup} "
        f"warm-up runs, {result.settle_ms:g} ms pause before each run",
        "ratio = IdleViT time / dense time (median of per-repeat ratios); speed-up = PyTorch eager time / backend time",
        "FLOPs ratio: the model's (reference forward, as published); graph FLOPs: the exported graph's, "
        "which ranks tokens without projecting every key",
    ]
    for batch in result.batch_sizes:
        head = f"{'keep':>5} {'GMACs':>7} {'FLOPs':>6} {'graph':>6} |"
        sub = f"{'':>5} {'':>7} {'ratio':>6} {'FLOPs':>6} |"
        for name in result.backends:
            head += f" {name:^40} |"
            sub += f" {'med ms':>8} {'p90 ms':>8} {'img/s':>7} {'ratio':>6} {'speedup':>7} |"
        lines += ["", f"batch {batch}", head, sub]
        for rate in result.keep_rates:
            flop_ratio = result.flops[str(rate)] / result.flops[str(DENSE)]
            label = "dense" if rate == DENSE else f"{rate:g}"
            graph_ratio = result.graph_flops[str(rate)] / result.graph_flops[str(DENSE)]
            line = f"{label:>5} {result.flops[str(rate)] / 2e9:7.2f} {flop_ratio:6.3f} {graph_ratio:6.3f} |"
            for name in result.backends:
                r = result.row(batch, name, rate)
                speedup = r["speedup_vs_pytorch"]
                speedup_cell = "    n/a" if math.isnan(float(speedup)) else f"{speedup:6.2f}x"  # PyTorch not timed
                line += (
                    f" {r['median_ms']:8.1f} {r['p90_ms']:8.1f} {r['throughput']:7.1f} "
                    f"{r['time_ratio']:6.3f} {speedup_cell} |"
                )
            lines.append(line)
    quantized = [name for name in result.backends if " " in name]
    if quantized:
        lines += ["", f"Q/DQ graphs (plan {result.quant_plan}) against the same backend's FP32 graphs, same rounds:"]
        lines.append(f"{'backend':>24} {'batch':>5} {'keep':>5} | {'vs FP32 dense':>13} {'vs FP32 IdleViT':>15}")
        for name in quantized:
            for batch in result.batch_sizes:
                for rate in result.keep_rates:
                    r = result.row(batch, name, rate)
                    label = "dense" if rate == DENSE else f"{rate:g}"
                    lines.append(
                        f"{name:>24} {batch:>5} {label:>5} | {r['vs_fp32_dense']:13.3f} {r['vs_fp32_idlevit']:15.3f}"
                    )
    for name, why in result.skipped.items():
        lines.append(f"skipped {name}: {why}")
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

    rates = result.keep_rates
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    flop_ratio = [result.flops[str(r)] / result.flops[str(DENSE)] for r in rates]
    right.plot(rates, flop_ratio, "k--", linewidth=2, label="FLOPs ratio (ceiling)")
    for batch in result.batch_sizes:
        for name in result.backends:
            rows = [result.row(batch, name, r) for r in rates]
            label = f"{name}, batch {batch}"
            left.plot(rates, [r["median_ms"] / batch for r in rows], "o-", label=label)
            right.plot(rates, [r["time_ratio"] for r in rows], "o-", label=label)
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
