"""``python -m validate.parity``: is the deployed artefact still the model? A verdict against a reference.

Runs the reference, ONNX Runtime (``--onnx``; default: the last export here) and TensorRT
(``--engine``) through Polygraphy's ``Comparator`` on real images and seeded random batches at
several batch sizes, and checks logits (max abs / relative error, cosine similarity, top-1
agreement) and the kept tokens of every idle layer (set semantics, near-ties counted apart)
against thresholds chosen by each backend's precision. The reference is the PyTorch model
(``--ckpt``, rebuilt with the schedule the ONNX records; default: the checkpoint the ONNX
metadata records), or the FP32 graph in ONNX Runtime, which needs no PyTorch: for a
reduced-precision graph (FP16 mixed, INT8 / FP8 Q/DQ) the FP32 graph it records it was made from
(or ``--reference-onnx``), and for an engine where PyTorch is not installed its FP32 ONNX.

Examples::

    python -m validate.parity                     # the last export against the checkpoint it records
    python -m validate.parity --ckpt demo --onnx idlevit_deit_micro_digits_ratio0.7.onnx
    python -m validate.parity --ckpt ckpt.pth --onnx model.onnx --engine model_fp16.engine --data /data/imagenet
    python -m validate.parity --ckpt ckpt.pth --onnx model.onnx --batch-sizes 1,4,32 --atol 1e-4
    python -m validate.parity --onnx model_int8.onnx          # against the FP32 graph it was made from
    python -m validate.parity --onnx model.onnx --engine model_fp16.engine --reference-onnx model.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from idlevit.cli import add_list_argument, add_model_argument, cli_parser, run_cli
from idlevit.configs import check_batch
from idlevit.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_OK,
    ToolkitError,
    require_torch,
)
from idlevit.fileio import refuse_overwriting_inputs
from idlevit.state import given_or_last_export

from .options import add_backend_arguments, add_data_arguments, report_paths
from .presets import PRESETS, THRESHOLD_FIELDS, threshold_flag

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
{EXIT_MISSING_DEPENDENCY} TensorRT, onnxruntime-gpu or (for a PyTorch reference) PyTorch missing.
"""


#: Each threshold flag, with its range (:data:`validate.presets.THRESHOLD_RANGES` checks it).
THRESHOLD_HELP = {
    "atol": "max abs logit error per batch (finite, >= 0)",
    "rtol": "max relative logit error per batch, |a-b|/|b| (finite, >= 0)",
    "min_cosine": "min cosine similarity of a batch's logits (-1 to 1)",
    "min_top1": "min fraction of samples sharing the top-1 class (0 to 1)",
    "max_mismatch": "max fraction of samples per idle layer whose kept token set differs beyond a near-tie (0 to 1)",
    "tie_rtol": "near-tie tolerance on reference scores, relative to max |score| (0 to below 1)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m validate.parity", __doc__, EPILOG)
    src = parser.add_argument_group("what to compare")
    add_model_argument(
        src,
        "--ckpt",
        "the one the ONNX was exported from (default: the one its metadata records, if it is still there unchanged)",
    )
    add_model_argument(src, "--onnx", "its metadata gives the schedule and data config (default: the last export here)")
    src.add_argument(
        "--reference-onnx",
        default=None,
        metavar="FP32.onnx",
        help="judge against this FP32 graph in ONNX Runtime instead of PyTorch (default for a reduced-precision "
        "--onnx: the FP32 graph its metadata records, checked by sha256; for --engine without PyTorch: --onnx)",
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
    add_list_argument(data, "--batch-sizes", "B,...", int, "1,8", default=[1, 8], help="batch sizes (default 1,8)")
    data.add_argument("--seed", type=int, default=0, help="seed of the random batches (default 0)")
    limits = parser.add_argument_group("thresholds (defaults: see below)")
    limits.add_argument(
        "--precision",
        choices=list(PRESETS),
        default=None,
        help="preset for every backend (default: the ONNX metadata's precision for ONNX Runtime, the engine "
        "sidecar's for TensorRT)",
    )
    for name, text in THRESHOLD_HELP.items():
        limits.add_argument("--" + name.replace("_", "-"), type=threshold_flag(name), default=None, help=text)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--report", default=None, help="JSON report path (default: <onnx>.parity.json); Markdown beside it (.md)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument("--verbose", action="store_true", help="show Polygraphy's own comparison log")
    return parser


#: Seeds of the random batches are ``--seed + 1000 x batch size``, which NumPy takes below 2**32.
MAX_SEED = 2**31 - 1


def check_flags(args: argparse.Namespace) -> None:
    """Values the parser cannot judge alone (the thresholds' types judge themselves), before anything loads."""
    for size in args.batch_sizes:
        check_batch("--batch-sizes: batch", size)
    if not 0 <= args.seed <= MAX_SEED:
        raise ToolkitError(f"--seed {args.seed} is not in 0..{MAX_SEED}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    onnx_path = given_or_last_export(args.onnx, "--onnx")
    json_path, md_path = report_paths(Path(args.report) if args.report else onnx_path.with_suffix(".parity.json"))
    from .inputs import InputSpec  # lazy: onnx and Polygraphy load after the arguments parse
    from .sources import reference_checkpoint, reference_graph  # lazy: as above

    graph = reference_graph(onnx_path, args.reference_onnx, args.ckpt, args.engine)
    if graph is None:
        require_torch(
            "parity against the PyTorch model (without PyTorch: an engine with --engine, or a reduced-precision "
            "graph, against the FP32 graph)"
        )
    ckpt = None if graph is not None else reference_checkpoint(onnx_path, args.ckpt)
    if graph is not None:
        print(f"reference: {graph} in ONNX Runtime (the FP32 graph)")
    elif not args.ckpt:
        print(f"reference: {ckpt} (the checkpoint {onnx_path.name} records)")
    engine_sidecar = Path(args.engine).with_name(Path(args.engine).name + ".json") if args.engine else None
    refuse_overwriting_inputs([json_path, md_path], [onnx_path, ckpt, graph, args.engine, engine_sidecar])

    spec = InputSpec(
        data=args.data,
        split=args.split,
        num_images=args.num_images,
        random_batches=args.random_batches,
        batch_sizes=tuple(args.batch_sizes),
        seed=args.seed,
    )
    common = dict(
        inputs=spec,
        precision=args.precision,
        overrides={name: getattr(args, name) for name in THRESHOLD_FIELDS},
        ort=args.ort,
        threads=args.threads,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    if graph is not None:
        from .reduced import run_graph_parity  # lazy: as above

        report = run_graph_parity(onnx_path, graph, args.engine, **common)
        against = f"the FP32 graph {graph.name}"
    else:
        from .judge import run_parity  # lazy: torch loads here, for the PyTorch reference

        report = run_parity(onnx_path, ckpt, args.engine, **common)
        against = "PyTorch"
    report.write(json_path, md_path)
    checked = report.setup["kept_indices_checked"]
    backends = ", ".join(f"{name} ({precision} thresholds)" for name, precision in report.setup["precision"].items())
    print(
        f"parity of {backends} against {against} ({report.setup['arch']}); kept tokens checked at idle layers "
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
