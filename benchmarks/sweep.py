"""The quantization sweep: every plan's selection fidelity (on the demo) and speed (on deit_small), one table.

Selection: the bundled demo (or ``--ckpt``) is exported with its kept indices and quantized with
each plan, calibrated on the digits train split; on the digits test split every Q/DQ graph is
judged against the FP32 graph by the one judge (:func:`validate.reduced.check_reduced_precision`,
the preset of the precision) and its top-1 accuracy is measured (:func:`validate.evaluate.evaluate_accuracy`),
all on the same images. Kept-token agreement is the mean fraction of the FP32 graph's kept tokens
that the Q/DQ graph keeps too, per idle layer, as sets and without any near-tie allowance.

Speed: a randomly initialised ``--arch`` (deit_small) IdleViT at ``--keep-rate`` and its dense
twin (same weights, no idle layer) are exported, each plan's Q/DQ graph is made from the IdleViT,
and ONNX Runtime runs them all, interleaved round by round (:func:`benchmarks.harness.interleaved`),
at every batch size: each plan's time against the FP32 dense model and the FP32 IdleViT, as the
median of per-round ratios.

:func:`choose_default` applies the rule that picks the default plan (README, "INT8 and FP8").
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import idlevit
from engines.ort import ort_runner
from engines.plan import DEFAULT_QUANT_PLAN, INT8, QUANT_PLANS
from engines.quantize import calibration_images, quantize_onnx, write_quantized_onnx
from export.exporter import export_onnx
from idlevit.chatter import captured
from idlevit.cli import progress as progress_bar
from idlevit.data import load_dataset
from idlevit.errors import ToolkitError
from idlevit.fileio import atomic_write
from idlevit.metadata import read_metadata
from validate.evaluate import evaluate_accuracy
from validate.inputs import InputSpec
from validate.reduced import REDUCED_NAME, check_reduced_precision
from validate.runners import polygraphy_quiet

from .backends import default_threads, ort_options
from .harness import DENSE, _cpu_name, _version, build_models, interleaved, paired_ratio

FP32_DENSE, FP32_IDLEVIT = "fp32-dense", "fp32-idlevit"


@dataclass(frozen=True)
class Targets:
    """What a plan must reach (the acceptance targets): accuracy and selection on the demo, speed on deit_small."""

    max_top1_drop: float = 0.005  # top-1 within 0.5 points of FP32
    min_kept_agreement: float = 0.97  # in every idle layer
    max_ratio: tuple[tuple[int, float], ...] = ((1, 0.60), (8, 0.50))  # batch -> time / FP32 dense time

    def ratio_limit(self, batch: int) -> float | None:
        return dict(self.max_ratio).get(batch)


@dataclass
class PlanRow:
    """One plan's figures."""

    plan: str
    precision: str
    quantized_nodes: int = 0
    quantize_seconds: float = 0.0
    top1: float = math.nan
    top1_fp32: float = math.nan
    kept_agreement: dict[str, float] = field(default_factory=dict)  # idle layer -> agreement
    judge_passed: bool | None = None  # the preset's verdict (None: not judged)
    judge_failure: str = ""
    vs_dense: dict[str, float] = field(default_factory=dict)  # batch -> time / FP32 dense time
    vs_idlevit: dict[str, float] = field(default_factory=dict)  # batch -> time / FP32 IdleViT time
    median_ms: dict[str, float] = field(default_factory=dict)

    @property
    def min_agreement(self) -> float:
        return min(self.kept_agreement.values()) if self.kept_agreement else math.nan

    def meets_selection(self, targets: Targets) -> bool:
        """Top-1 and kept tokens on target, and the check that gates ``export.trt``'s build passes."""
        return (
            bool(self.kept_agreement)
            and self.min_agreement >= targets.min_kept_agreement
            and self.top1 >= self.top1_fp32 - targets.max_top1_drop - 1e-9
            and self.judge_passed is not False  # a plan whose check fails builds no engine
        )

    def meets_speed(self, targets: Targets) -> bool:
        limits = [(str(b), limit) for b, limit in targets.max_ratio]
        return bool(self.vs_dense) and all(self.vs_dense.get(b, math.inf) <= limit for b, limit in limits)


@dataclass
class SweepResult:
    precision: str
    selection_model: str  # what the selection columns were measured on
    speed_model: str  # what the speed columns were measured on
    calibration: str
    test_images: int
    batch_sizes: list[int]
    threads: int
    repeats: int
    rows: list[PlanRow]
    fp32_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # fp32-dense / fp32-idlevit -> batch -> ms
    fp32_ratio: dict[str, float] = field(default_factory=dict)  # batch -> FP32 IdleViT time / FP32 dense time
    default: str = ""
    default_reason: str = ""
    targets: Targets = field(default_factory=Targets)
    seconds: float = 0.0
    meta: dict[str, str] = field(default_factory=dict)


# ---- selection and accuracy on the demo -----------------------------------------------------
def measure_selection(
    ckpt: str | None,
    plans: Sequence[str],
    precision: str,
    folder: Path,
    *,
    method: str = "max",
    calib_images: int | None = None,
    test_images: int | None = None,
    threads: int = 0,
    progress: bool = True,
) -> tuple[dict[str, PlanRow], float, str, int]:
    """Per plan: quantize the checkpoint's export, judge it against the FP32 graph, measure top-1.

    Returns the rows, the FP32 graph's top-1, where the calibration images came from, and the
    number of test images.
    """
    model = idlevit.load_checkpoint(idlevit.resolve_checkpoint_path(ckpt))
    source = folder / "selection_fp32.onnx"
    with captured(step="the FP32 export"):
        export_onnx(model, source, with_indices=True, verify_batch=0, progress=False)
    meta = read_metadata(source)
    images, where = calibration_images(meta, count=calib_images)
    rows, paths, used = {}, {}, len(images)
    for plan in progress_bar(plans, enabled=progress, desc="quantize (selection)", unit="plan", leave=False):
        started = time.perf_counter()
        quantized, record = quantize_onnx(source, precision, plan, images=images, calibration=where, method=method)
        paths[plan] = write_quantized_onnx(quantized, folder / f"selection_{precision}_{plan}.onnx")
        rows[plan] = PlanRow(plan, precision, record.quantized_nodes, time.perf_counter() - started)
        used = record.calibration_images
    dataset = load_dataset("digits", "test", meta.input_config)
    count = min(test_images or len(dataset), len(dataset))
    spec = InputSpec(data="digits", num_images=count, random_batches=0, batch_sizes=(8,))
    first, *rest = plans
    with captured(step="the selection check"):
        report = check_reduced_precision(
            source, paths[first], inputs=spec, others={plan: paths[plan] for plan in rest}, threads=threads
        )
    for plan in plans:
        totals = report.backend(_judged_name(plan, first))
        rows[plan].kept_agreement = {str(layer): sel.agreement for layer, sel in totals.layers.items()}
        rows[plan].judge_passed = totals.passed
        failures = [row.failures[0] for row in report.rows if row.backend == totals.backend and row.failures]
        rows[plan].judge_failure = failures[0] if failures else ""
    if count < len(dataset):
        import torch  # lazy: a subset of the test split only when asked for

        dataset = torch.utils.data.Subset(dataset, range(count))
    runners = [ort_runner(source, "cpu", threads, name=FP32_IDLEVIT)]
    runners += [ort_runner(paths[plan], "cpu", threads, name=plan) for plan in plans]
    with polygraphy_quiet(False):
        accuracy = {row.backend: row.top1 for row in evaluate_accuracy(runners, dataset, 50, progress=False)}
    for plan in plans:
        rows[plan].top1, rows[plan].top1_fp32 = accuracy[plan], accuracy[FP32_IDLEVIT]
    return rows, accuracy[FP32_IDLEVIT], f"{used} images of {where}", count


def _judged_name(plan: str, first: str) -> str:
    """The reduced-precision check names its first candidate ``reduced``, the others by their key."""
    return REDUCED_NAME if plan == first else plan


# ---- speed on deit_small ---------------------------------------------------------------------
def measure_speed(
    arch: str,
    keep_rate: float,
    plans: Sequence[str],
    precision: str,
    folder: Path,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 2,
    repeats: int = 7,
    threads: int = 0,
    calib_images: int = 32,
    settle_ms: float = 20.0,
    img_size: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, float]]:
    """ONNX Runtime CPU time of FP32 dense, FP32 IdleViT and every plan's Q/DQ IdleViT, interleaved.

    Returns per configuration and batch: the time against FP32 dense, against FP32 IdleViT, the
    median ms; and each plan's quantization seconds.
    """
    models = build_models(arch, [keep_rate], img_size=img_size)
    paths = {FP32_DENSE: folder / f"{arch}_dense.onnx", FP32_IDLEVIT: folder / f"{arch}_keep{keep_rate:g}.onnx"}
    with captured(step="the FP32 exports"):
        export_onnx(models[DENSE], paths[FP32_DENSE], verify_batch=0, progress=False)
        export_onnx(models[keep_rate], paths[FP32_IDLEVIT], verify_batch=0, progress=False)
    images, where = calibration_images(read_metadata(paths[FP32_IDLEVIT]), count=calib_images)
    seconds = {}
    for plan in progress_bar(plans, enabled=progress, desc="quantize (speed)", unit="plan", leave=False):
        started = time.perf_counter()
        quantized, _ = quantize_onnx(paths[FP32_IDLEVIT], precision, plan, images=images, calibration=where)
        paths[plan] = write_quantized_onnx(quantized, folder / f"{arch}_{precision}_{plan}.onnx")
        seconds[plan] = time.perf_counter() - started
    runners = {
        (name, 0.0): ort_runner(path, "cpu", threads, ort_options, name=name, integer_kernels=True)
        for name, path in paths.items()
    }
    vs_dense: dict[str, dict[str, float]] = {name: {} for name in paths}
    vs_idle: dict[str, dict[str, float]] = {name: {} for name in paths}
    median: dict[str, dict[str, float]] = {name: {} for name in paths}
    size = models[DENSE].cfg.img_size
    for batch in batch_sizes:
        timings = interleaved(runners, batch, size, warmup, repeats, progress, settle_ms / 1e3)
        dense, idle = timings[FP32_DENSE, 0.0], timings[FP32_IDLEVIT, 0.0]
        for (name, _), timing in timings.items():
            vs_dense[name][str(batch)] = paired_ratio(timing, dense)
            vs_idle[name][str(batch)] = paired_ratio(timing, idle)
            median[name][str(batch)] = timing.median_ms
    return vs_dense, vs_idle, median, seconds


# ---- the rule and the table ------------------------------------------------------------------
def choose_default(rows: Sequence[PlanRow], targets: Targets = Targets()) -> tuple[str, str]:
    """The default plan by the stated rule, and why.

    Without speed measurements: the highest worst-layer agreement (among those meeting the
    selection and top-1 targets, if any). Otherwise:

    1. Among the plans that meet every target (top-1, kept tokens in every idle layer, speed at
       every batch size), the one with the highest worst-layer kept-token agreement.
    2. If none meets every target: among those that meet the selection and top-1 targets, the
       fastest at the largest batch size (the default favours the selection).
    3. If none meets those either: the one with the highest worst-layer agreement.
    """
    if not any(r.vs_dense for r in rows):  # selection measured alone
        selecting = [r for r in rows if r.meets_selection(targets)] or list(rows)
        best = max(selecting, key=lambda r: r.min_agreement)
        return best.plan, "speed not measured: the highest worst-layer kept-token agreement"
    every = [r for r in rows if r.meets_selection(targets) and r.meets_speed(targets)]
    if every:
        best = max(every, key=lambda r: (r.min_agreement, -_largest_batch_ratio(r)))
        return best.plan, "meets every target, with the highest worst-layer kept-token agreement among those that do"
    selecting = [r for r in rows if r.meets_selection(targets)]
    if selecting:
        best = min(selecting, key=_largest_batch_ratio)
        return best.plan, (
            "no plan meets the selection and the speed targets together here; the fastest of those that keep "
            "the selection and top-1"
        )
    best = max(rows, key=lambda r: r.min_agreement)
    return best.plan, "no plan keeps the selection target; the one with the highest worst-layer kept-token agreement"


def _largest_batch_ratio(row: PlanRow) -> float:
    if not row.vs_dense:
        return math.inf
    return row.vs_dense[max(row.vs_dense, key=int)]


def run_sweep(
    plans: Sequence[str] = tuple(QUANT_PLANS),
    precision: str = INT8,
    *,
    ckpt: str | None = None,
    arch: str = "deit_small",
    keep_rate: float = 0.7,
    method: str = "max",
    calib_images: int | None = None,
    speed_calib_images: int = 32,
    test_images: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 2,
    repeats: int = 7,
    threads: int = 0,
    settle_ms: float = 20.0,
    img_size: int | None = None,
    selection: bool = True,
    speed: bool = True,
    workdir: str | Path | None = None,
    progress: bool = True,
) -> SweepResult:
    """Measure every plan (see the module docstring) and apply the default rule."""
    unknown = [p for p in plans if p not in QUANT_PLANS]
    if unknown or not plans:
        raise ToolkitError(f"unknown plan(s) {unknown}; choose from: {', '.join(QUANT_PLANS)}")
    if not (selection or speed):
        raise ToolkitError("nothing to measure: drop --no-selection or --no-speed")
    if min(batch_sizes, default=0) < 1 or repeats < 1 or warmup < 0:
        raise ToolkitError("batch sizes and --repeats must be >= 1, --warmup >= 0")
    started = time.perf_counter()
    threads = threads or default_threads()
    rows = {plan: PlanRow(plan, precision) for plan in plans}
    result = SweepResult(precision, "", "", "", 0, list(batch_sizes), threads, repeats, list(rows.values()))
    with tempfile.TemporaryDirectory(prefix="idlevit-quant-sweep-") as tmp:
        folder = Path(workdir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if selection:
            measured, _, where, count = measure_selection(
                ckpt,
                plans,
                precision,
                folder,
                method=method,
                calib_images=calib_images,
                test_images=test_images,
                threads=threads,
                progress=progress,
            )
            for plan, row in measured.items():
                rows[plan] = row
            result.selection_model = f"{ckpt or 'demo'} (digits test split)"
            result.calibration, result.test_images = f"{where}, {method}", count
        if speed:
            vs_dense, vs_idle, median, seconds = measure_speed(
                arch,
                keep_rate,
                plans,
                precision,
                folder,
                batch_sizes=batch_sizes,
                warmup=warmup,
                repeats=repeats,
                threads=threads,
                calib_images=speed_calib_images,
                settle_ms=settle_ms,
                img_size=img_size,
                progress=progress,
            )
            for plan in plans:
                rows[plan].vs_dense, rows[plan].vs_idlevit = vs_dense[plan], vs_idle[plan]
                rows[plan].median_ms = median[plan]
                if not selection:
                    rows[plan].quantize_seconds = seconds[plan]
            result.fp32_ms = {name: median[name] for name in (FP32_DENSE, FP32_IDLEVIT)}
            result.fp32_ratio = vs_dense[FP32_IDLEVIT]
            result.speed_model = f"{arch}, keep rate {keep_rate:g}, random weights"
    result.rows = [rows[plan] for plan in plans]
    if selection:
        result.default, result.default_reason = choose_default(result.rows)
    result.seconds = time.perf_counter() - started
    result.meta = {"cpu": _cpu_name(), "onnxruntime": _version("onnxruntime"), "modelopt": _version("modelopt")}
    return result


def markdown(result: SweepResult) -> str:
    """The sweep table (Markdown), with the rule's pick and the targets."""
    layers = list(result.rows[0].kept_agreement) if result.rows and result.rows[0].kept_agreement else []
    timed = any(row.vs_dense for row in result.rows)
    batches = [str(b) for b in result.batch_sizes] if timed else []
    head = ["plan", "quantized nodes", "top-1"]
    head += [f"kept L{layer}" for layer in layers] + (["worst layer", "judge"] if layers else [])
    head += [f"b{b} vs FP32 dense" for b in batches] + [f"b{b} vs FP32 IdleViT" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp32_top1 = next((r.top1_fp32 for r in result.rows if not math.isnan(r.top1_fp32)), math.nan)
    if result.fp32_ms or not math.isnan(fp32_top1):
        cells = ["FP32 IdleViT", "0", _pct(fp32_top1)] + (["1.000"] * len(layers) + ["1.000", ""] if layers else [])
        ratio = result.fp32_ratio
        cells += [_num(ratio.get(b)) for b in batches] + ["1.000" if ratio else "" for _ in batches]
        lines.append("| " + " | ".join(cells) + " |")
    for row in result.rows:
        mark = " (default)" if row.plan == result.default else ""
        cells = [f"{row.plan}{mark}", str(row.quantized_nodes), _pct(row.top1)]
        if layers:
            cells += [_num(row.kept_agreement.get(layer)) for layer in layers]
            verdict = "" if row.judge_passed is None else ("pass" if row.judge_passed else "FAIL")
            cells += [_num(row.min_agreement), verdict]
        cells += [_num(row.vs_dense.get(b)) for b in batches] + [_num(row.vs_idlevit.get(b)) for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    t = result.targets
    notes = [
        "",
        f"{result.precision.upper()}; selection and top-1: {result.selection_model or 'not measured'}, "
        f"{result.test_images} images, calibration {result.calibration or '-'}; kept-token agreement = mean "
        "fraction of the FP32 graph's kept tokens kept too, as sets, no near-tie allowance; judge = the "
        f"{result.precision} preset of the reduced-precision check (near-ties and cascades counted apart).",
        (
            f"Speed: {result.speed_model}, ONNX Runtime CPU (integer kernels), {result.threads} threads, "
            f"{result.repeats} interleaved rounds, median of per-round ratios"
            + (
                "; FP32 ms: "
                + ", ".join(f"{k} " + "/".join(f"{v:.1f}" for v in ms.values()) for k, ms in result.fp32_ms.items())
                + f" (batch {'/'.join(batches)})"
                if result.fp32_ms
                else ""
            )
            + "."
            if result.speed_model
            else "Speed: not measured (--no-speed)."
        ),
        f"Targets: the check passes (judge), top-1 within {t.max_top1_drop * 100:.1f} points of FP32, "
        f"kept-token agreement >= {t.min_kept_agreement:.0%} in every idle layer, time vs FP32 dense "
        + ", ".join(f"<= {limit:.2f} at batch {b}" for b, limit in t.max_ratio)
        + ".",
    ]
    meeting = [r.plan for r in result.rows if r.meets_selection(t) and r.meets_speed(t)]
    if result.rows and result.rows[0].kept_agreement and result.rows[0].vs_dense:
        notes.append(f"Meeting every target: {', '.join(meeting) or 'none'}.")
    if result.default:
        same = result.default == DEFAULT_QUANT_PLAN
        agreed = "the built-in default" if same else f"the built-in default is {DEFAULT_QUANT_PLAN}"
        notes.append(f"Rule's pick: {result.default} ({result.default_reason}); {agreed}.")
    return "\n".join(lines + notes) + "\n"


def write(result: SweepResult, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = asdict(result)
    json_path, md_path = out_dir / "quantization.json", out_dir / "quantization.md"
    with atomic_write(json_path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    with atomic_write(md_path, "w") as handle:
        handle.write(markdown(result))
    return json_path, md_path


def _pct(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"
