"""``python -m validate.parity``: is the deployed artefact still the model? A verdict against PyTorch.

Runs the PyTorch reference (``--ckpt``, rebuilt with the schedule the ONNX records), ONNX Runtime
(``--onnx``) and TensorRT (``--engine``) through Polygraphy's ``Comparator`` on real images and
seeded random batches at several batch sizes, and checks logits (max abs / relative error,
cosine similarity, top-1 agreement) and the kept tokens of every idle layer (set semantics,
near-ties counted apart) against thresholds chosen by each backend's precision.

Examples::

    python -m validate.parity --ckpt demo --onnx idlevit_deit_micro_digits_ratio0.7.onnx
    python -m validate.parity --ckpt ckpt.pth --onnx model.onnx --engine model.engine --data /data/imagenet
    python -m validate.parity --ckpt ckpt.pth --onnx model.onnx --batch-sizes 1,4,32 --atol 1e-4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from polygraphy.comparator import Comparator
from polygraphy.exception import PolygraphyException
from polygraphy.logger import G_LOGGER
from tqdm import tqdm

from export.metadata import read_metadata
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
    CheckFailed,
    ToolkitError,
    cli_parser,
    run_cli,
)
from idlevit.fileio import sha256_file
from idlevit.model import LOGITS, kept_indices_name

from .compare import PRESETS, THRESHOLD_FIELDS, compare_funcs, preset
from .inputs import InputGroup, InputSpec, add_data_arguments, parity_inputs
from .reference import REFERENCE, TorchRunner, load_reference
from .report import ParityReport, aggregate
from .runners import TENSORRT, add_backend_arguments, backend_runners, engine_precision


@contextlib.contextmanager
def polygraphy_quiet(verbose: bool) -> Iterator[None]:
    """Polygraphy logs every comparison; keep its errors only unless asked (our report explains failures)."""
    with G_LOGGER.verbosity(G_LOGGER.INFO if verbose else G_LOGGER.CRITICAL):
        yield


def graph_outputs(onnx_path: str | os.PathLike[str]) -> list[str]:
    return [o.name for o in onnx.load(os.fspath(onnx_path), load_external_data=False).graph.output]


def run_parity(
    onnx_path: str | os.PathLike[str],
    ckpt: str | os.PathLike[str],
    engine: str | os.PathLike[str] | None = None,
    *,
    inputs: InputSpec = InputSpec(),
    precision: str | None = None,
    overrides: Mapping[str, float | None] | None = None,
    ort: str = "auto",
    threads: int = 0,
    progress: bool = True,
    verbose: bool = False,
) -> ParityReport:
    """Compare every backend with the PyTorch reference.

    Each backend is judged by the preset of its precision (``precision`` for all, else the ONNX
    metadata's for ONNX Runtime and the engine sidecar's for TensorRT), with ``overrides``
    (threshold field -> value) applied on top.
    """
    meta = read_metadata(onnx_path)
    outputs = graph_outputs(onnx_path)
    if LOGITS not in outputs:
        raise ToolkitError(f"{os.fspath(onnx_path)} has no '{LOGITS}' output; export it with `python -m export.onnx`")
    model = load_reference(ckpt, meta)
    backends = backend_runners(onnx_path, engine, ort, threads)
    precisions = {
        runner.name: precision
        or (engine_precision(engine, onnx_path) if runner.name == TENSORRT else None)
        or meta.precision
        for runner in backends
    }
    thresholds = {name: preset(p).with_overrides(**(overrides or {})) for name, p in precisions.items()}
    runners = [TorchRunner(model, with_indices=True, with_scores=True, threads=threads), *backends]
    funcs = compare_funcs(thresholds, list(meta.idle_layers))
    with polygraphy_quiet(verbose):
        groups = parity_inputs(meta, inputs)
        feeds = tqdm([feed for group in groups for feed in group.feeds], "parity", unit="batch", disable=not progress)
        try:
            stream = Comparator.run(runners, data_loader=feeds, streaming=True)
            pairs = [(0, i) for i in range(1, len(runners))]
            accuracy = Comparator.compare_accuracy(stream, comparisons=pairs, compare_func=funcs)
        except PolygraphyException as err:
            raise CheckFailed(
                f"a backend failed to run ({_first_line(err)}); rerun with --verbose for details"
            ) from None
    rows = aggregate(accuracy, REFERENCE, thresholds, groups)
    setup = {
        "onnx": os.fspath(onnx_path),
        "onnx_sha256": sha256_file(onnx_path),
        "checkpoint": os.fspath(ckpt),
        "checkpoint_recorded": meta.checkpoint,
        "engine": None if engine is None else os.fspath(engine),
        "arch": meta.arch,
        "precision": precisions,
        "reference": REFERENCE,
        "backends": list(precisions),
        "idle_layers": list(meta.idle_layers),
        "keep_tokens": list(meta.keep_tokens),
        "kept_indices_checked": [layer for layer in meta.idle_layers if kept_indices_name(layer) in outputs],
        "inputs": [_group_setup(group) for group in groups],
    }
    return ParityReport(setup, thresholds, rows)


def _group_setup(group: InputGroup) -> dict[str, object]:
    return {
        "kind": group.kind,
        "source": group.source,
        "batch": group.batch,
        "batches": len(group.feeds),
        "images": group.images,
    }


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


# ---- command line -----------------------------------------------------------------------
EPILOG = f"""
thresholds: defaults follow each backend's precision (--precision; else the ONNX metadata's 'precision' for
ONNX Runtime and the engine sidecar's for TensorRT):
{chr(10).join(f"  {name}: " + ", ".join(f"{k}={v:g}" for k, v in t.to_dict().items()) for name, t in PRESETS.items())}
A batch's logits fail when the max abs error exceeds --atol AND the max relative error exceeds
--rtol (Polygraphy's rule). Kept tokens are compared as sets per idle layer (needs an export
with --with-indices); a flip whose swapped tokens score within --tie-rtol x max|score| of each
other in the reference is a near-tie, and flips after an earlier flip of the same sample are a
cascade; neither counts against --max-mismatch, and samples that flipped at a near-tie are left
out of the logit error and cosine checks (top-1 agreement still counts them).

exit codes: {EXIT_OK} every threshold holds; {EXIT_CHECK_FAILED} a threshold failed (the report says which
metric, backend and batch) or a backend failed to run; {EXIT_BAD_INPUT} bad file, checkpoint or flag;
{EXIT_MISSING_DEPENDENCY} TensorRT or onnxruntime-gpu missing.
"""


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ToolkitError(f"cannot read batch sizes {text!r}; write e.g. '1,8'") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ToolkitError(f"batch sizes {text!r} must be integers >= 1, e.g. '1,8'")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m validate.parity", __doc__, EPILOG)
    src = parser.add_argument_group("what to compare")
    src.add_argument("--ckpt", required=True, help="checkpoint the ONNX was exported from ('demo': the bundled demo)")
    src.add_argument(
        "--onnx", required=True, help="exported ONNX file (its metadata gives the schedule and data config)"
    )
    add_backend_arguments(src)
    data = parser.add_argument_group("inputs")
    add_data_arguments(
        data, "split of --data: 'test' or 'train' (digits); folders use ROOT/val or ROOT/test (default test)"
    )
    data.add_argument(
        "--num-images", type=int, default=16, help="real images, spread evenly over the split; 0: none (default 16)"
    )
    data.add_argument("--random-batches", type=int, default=2, help="seeded random batches per batch size (default 2)")
    data.add_argument(
        "--batch-sizes", type=parse_batch_sizes, default=[1, 8], help="comma-separated batch sizes (default 1,8)"
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the random batches (default 0)")
    limits = parser.add_argument_group("thresholds (defaults: see below)")
    limits.add_argument(
        "--precision",
        choices=list(PRESETS),
        default=None,
        help="preset for every backend (default: the ONNX metadata's precision for ONNX Runtime, the engine "
        "sidecar's for TensorRT)",
    )
    limits.add_argument("--atol", type=float, default=None, help="max abs logit error per batch")
    limits.add_argument("--rtol", type=float, default=None, help="max relative logit error per batch, |a-b|/|b|")
    limits.add_argument("--min-cosine", type=float, default=None, help="min cosine similarity of a batch's logits")
    limits.add_argument("--min-top1", type=float, default=None, help="min fraction of samples sharing the top-1 class")
    limits.add_argument(
        "--max-mismatch",
        type=float,
        default=None,
        help="max fraction of samples per idle layer whose kept token set differs beyond a near-tie",
    )
    limits.add_argument(
        "--tie-rtol", type=float, default=None, help="near-tie tolerance on reference scores, relative to max |score|"
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--report", default=None, help="JSON report path (default: <onnx>.parity.json); Markdown beside it (.md)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--verbose", action="store_true", help="show Polygraphy's own comparison log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = InputSpec(
        data=args.data,
        split=args.split,
        num_images=args.num_images,
        random_batches=args.random_batches,
        batch_sizes=tuple(args.batch_sizes),
        seed=args.seed,
    )
    report = run_parity(
        args.onnx,
        args.ckpt,
        args.engine,
        inputs=spec,
        precision=args.precision,
        overrides={name: getattr(args, name) for name in THRESHOLD_FIELDS},
        ort=args.ort,
        threads=args.threads,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    json_path = Path(args.report) if args.report else Path(args.onnx).with_suffix(".parity.json")
    md_path = json_path.with_suffix(".md")
    report.write(json_path, md_path)
    checked = report.setup["kept_indices_checked"]
    backends = ", ".join(f"{name} ({precision} thresholds)" for name, precision in report.setup["precision"].items())
    print(
        f"parity of {backends} against PyTorch ({report.setup['arch']}); kept tokens checked at idle layers "
        f"{checked or 'none (export with --with-indices to check them)'}"
    )
    print(report.markdown(), end="")
    print(f"report: {json_path} and {md_path}")
    if report.passed:
        print("PASSED: every threshold holds")
        return EXIT_OK
    failures = report.failures
    print(f"FAILED: {len(failures)} check(s) did not hold:", file=sys.stderr)
    for failure in failures:
        print(f"  - {failure}", file=sys.stderr)
    return EXIT_CHECK_FAILED


if __name__ == "__main__":
    run_cli(main)
