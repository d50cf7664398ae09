"""``python -m idlevit.finetune``: train a dense teacher, or finetune an IdleViT from it.

Examples::

    python -m idlevit.finetune --recipe demo                     # rebuild the bundled demo (both stages)
    python -m idlevit.finetune --dense --out teacher.pth         # dense deit_micro on digits, from scratch
    python -m idlevit.finetune --teacher teacher.pth --out idlevit.pth          # IdleViT r=0.7, cut loss
    python -m idlevit.finetune --teacher teacher.pth --cut-loss none --out plain.pth
    python -m idlevit.finetune --dataset ~/data/flowers --init deit_ckpt.pth --dense --out t.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import check_model_file, cli_parser, run_cli
from .configs import check_size_flag, check_threads, list_archs
from .errors import EXIT_BAD_INPUT, EXIT_OK, ToolkitError
from .names import DIGITS
from .recipe import (
    CUT_LOSSES,
    DEMO_ARCH,
    DEMO_IMG_SIZE,
    DEMO_PATCH_SIZE,
    DENSE_RECIPE,
    STUDENT_RECIPE,
    train_config,
)
from .schedule import add_schedule_arguments

EPILOG = f"""
The dense teacher starts from random weights (or --init); the IdleViT student starts from the
teacher's weights (or --init) and learns with cross-entropy + 5 x KL(teacher) + 500 x MSE of
normalised CLS features + 10 / (idle layers) x token cut loss. Checkpoints are written in the
official layout ({{"model": state_dict, "arch", "data_config", ...}}), float32, no optimizer state.
exit codes: {EXIT_OK} trained; {EXIT_BAD_INPUT} bad dataset, checkpoint, schedule or flag.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("python -m idlevit.finetune", __doc__, EPILOG)
    parser.add_argument(
        "--recipe",
        choices=["demo"],
        help="'demo': train the bundled demo's teacher and student on digits into --out-dir "
        "(default idlevit/assets) with --seed and --threads; other training flags are ignored",
    )
    parser.add_argument("--out-dir", default=None, help="with --recipe: folder for the two checkpoints")
    src = parser.add_argument_group("data and model")
    src.add_argument(
        "--dataset",
        default=DIGITS,
        help="'digits' (scikit-learn's 8x8 digits, fixed train/test split; default) or an ImageFolder "
        "root (ROOT/train and ROOT/val are used when present, else ROOT for both)",
    )
    src.add_argument(
        "--arch",
        default=DEMO_ARCH,
        choices=list_archs(),
        help=f"architecture for a model from scratch (default {DEMO_ARCH})",
    )
    src.add_argument(
        "--img-size",
        type=int,
        default=DEMO_IMG_SIZE,
        help=f"input size for a model from scratch (default {DEMO_IMG_SIZE})",
    )
    src.add_argument(
        "--patch-size", type=int, default=DEMO_PATCH_SIZE, help="patch size for a model from scratch (default 4)"
    )
    src.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint (default: the teacher's weights for a student, random for --dense); "
        "a head of another class count is re-initialised",
    )
    src.add_argument("--dense", action="store_true", help="train a dense model (no idle layers): the teacher")
    src.add_argument("--teacher", default=None, help="dense teacher checkpoint to distil from (a student needs one)")
    sched = parser.add_argument_group("idle schedule of the student")
    add_schedule_arguments(sched)
    sched.add_argument(
        "--cut-loss", choices=CUT_LOSSES, default="both", help="token cut loss terms (default both; none: off)"
    )
    opt = parser.add_argument_group("optimisation (defaults: the demo recipe)")
    opt.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default {DENSE_RECIPE.epochs} dense, {STUDENT_RECIPE.epochs} student)",
    )
    opt.add_argument("--batch-size", type=int, default=None, help=f"batch size (default {DENSE_RECIPE.batch_size})")
    opt.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak AdamW learning rate (default {DENSE_RECIPE.lr:g} dense, {STUDENT_RECIPE.lr:g} student)",
    )
    opt.add_argument(
        "--weight-decay", type=float, default=None, help=f"AdamW weight decay (default {DENSE_RECIPE.weight_decay:g})"
    )
    opt.add_argument(
        "--max-shift", type=int, default=None, help=f"digits: random shift in pixels (default {DENSE_RECIPE.max_shift})"
    )
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights stay float32)")
    opt.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    opt.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; results depend on it)")
    opt.add_argument("--workers", type=int, default=0, help="data loader workers for an ImageFolder (default 0)")
    parser.add_argument("--out", default=None, help="output checkpoint .pth")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Every flag's value, before torch loads: the optimisation settings (:class:`~idlevit.recipe.TrainConfig`
    checks its own), sizes and threads (workers: the parser)."""
    train_config(args, DENSE_RECIPE if args.dense else STUDENT_RECIPE)
    check_size_flag("--img-size", args.img_size)
    check_size_flag("--patch-size", args.patch_size)
    check_threads("--threads", args.threads, low=1)  # the parser checks 0..; training needs a thread
    for path in (args.init, args.teacher):
        check_model_file("--ckpt", path)
    if args.recipe != "demo" and not args.out:
        raise ToolkitError("--out is required: the checkpoint to write (e.g. --out idlevit_digits.pth)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(args)
    if args.recipe == "demo" and args.seed != 0 and args.out_dir is None:
        raise ToolkitError(f"the bundled demo is seed 0; write seed {args.seed} elsewhere with --out-dir DIR")
    from .trainer import train  # lazy: torch and timm load after the arguments parse

    if args.recipe != "demo":
        train(args, DENSE_RECIPE if args.dense else STUDENT_RECIPE)
        return EXIT_OK
    # the demo: dense teacher, then IdleViT (keep rate 0.7, cut loss both), on digits
    from .checkpoint import DEMO_CHECKPOINT, DEMO_TEACHER  # lazy: as above

    folder = Path(args.out_dir) if args.out_dir else DEMO_CHECKPOINT.parent
    teacher, student = folder / DEMO_TEACHER.name, folder / DEMO_CHECKPOINT.name
    common = ["--threads", str(args.threads), "--seed", str(args.seed), *(["--quiet"] if args.quiet else [])]
    train(parser.parse_args(["--dense", "--out", str(teacher), *common]), DENSE_RECIPE)
    train(parser.parse_args(["--teacher", str(teacher), "--out", str(student), *common]), STUDENT_RECIPE)
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
