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
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from . import data
from .checkpoint import (
    DEMO_CHECKPOINT,
    DEMO_TEACHER,
    create_model,
    load_checkpoint,
    save_checkpoint,
)
from .cli import cli_parser, run_cli
from .configs import list_archs
from .errors import EXIT_BAD_INPUT, EXIT_OK, ToolkitError
from .losses import CUT_LOSSES
from .model import IdleViT
from .schedule import add_schedule_arguments, schedule_arguments
from .training import TrainConfig, fit, top1

#: The demo recipe (and the defaults of this command): a dense teacher from scratch, then the
#: IdleViT student finetuned from it with distillation and the token cut loss. Label smoothing
#: and a moving average of the weights make the outcome depend less on float rounding (CPU
#: type, thread count) and seed.
DENSE_RECIPE = TrainConfig(
    epochs=40, batch_size=32, lr=1e-3, warmup_epochs=1.0, max_shift=2, label_smoothing=0.1, ema_decay=0.995
)
STUDENT_RECIPE = TrainConfig(epochs=6, batch_size=32, lr=2e-4, warmup_epochs=0.25, max_shift=2, ema_decay=0.99)
DEMO_ARCH, DEMO_IMG_SIZE, DEMO_PATCH_SIZE = "deit_micro", 32, 4

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
        default=data.DIGITS,
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
        "--img-size", type=int, default=DEMO_IMG_SIZE, help="input size for a model from scratch (default 32)"
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
    opt.add_argument("--epochs", type=int, default=None, help="epochs (default 30 dense, 3 student)")
    opt.add_argument("--batch-size", type=int, default=None, help="batch size (default 32)")
    opt.add_argument(
        "--lr", type=float, default=None, help="peak AdamW learning rate (default 1e-3 dense, 2e-4 student)"
    )
    opt.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0.05)")
    opt.add_argument("--max-shift", type=int, default=None, help="digits: random shift in pixels (default 2)")
    opt.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights stay float32)")
    opt.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    opt.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; results depend on it)")
    opt.add_argument("--workers", type=int, default=0, help="data loader workers for an ImageFolder (default 0)")
    parser.add_argument("--out", default=None, help="output checkpoint .pth")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _train_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    changes = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "max_shift": args.max_shift,
    }
    return replace(
        base,
        **{k: v for k, v in changes.items() if v is not None},
        cut_loss=args.cut_loss,
        seed=args.seed,
        bf16=args.bf16 or base.bf16,
    )


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    if args.dense:
        return {"idle_layers": [], "keep_ratios": []}
    return schedule_arguments(args)


def build_student(args: argparse.Namespace, classes: int) -> IdleViT:
    """The model to train: from --init (or the teacher's weights), else from scratch."""
    schedule = _schedule(args)
    start = args.init or (None if args.dense else args.teacher)
    if start is None:
        torch.manual_seed(args.seed)
        extra = data.digits_data_config(args.img_size) if str(args.dataset) == data.DIGITS else {}
        extra = {k: v for k, v in extra.items() if k in ("mean", "std", "crop_pct", "interpolation")}
        return create_model(
            args.arch, img_size=args.img_size, patch_size=args.patch_size, num_classes=classes, **extra, **schedule
        )
    model = load_checkpoint(start, **schedule)
    if model.cfg.num_classes == classes:
        return model
    # Another class count (e.g. an ImageNet checkpoint on a user's folder): keep the backbone, new head.
    print(f"note: {Path(start).name} has {model.cfg.num_classes} classes; training a new head of {classes}")
    torch.manual_seed(args.seed)
    fresh = create_model(model.cfg.with_overrides(num_classes=classes), **schedule)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "aux_head."))}
    fresh.load_state_dict(backbone, strict=False)
    return fresh


def train(args: argparse.Namespace, base: TrainConfig) -> tuple[Path, float]:
    """One training run from parsed flags; returns the checkpoint path and its test top-1."""
    torch.set_num_threads(args.threads)
    if not args.out:
        raise ToolkitError("--out is required: the checkpoint to write (e.g. --out idlevit_digits.pth)")
    if not args.dense and not args.teacher and not args.init:
        raise ToolkitError("an IdleViT student starts from a dense model: pass --teacher DENSE.pth (or --dense first)")
    cfg = _train_config(args, base)
    probe = _probe_classes(args)
    model = build_student(args, probe)
    teacher = load_checkpoint(args.teacher, idle_layers=[], keep_ratios=[]) if args.teacher else None
    if teacher is not None and teacher.cfg.num_classes != model.cfg.num_classes:
        raise ToolkitError(
            f"teacher has {teacher.cfg.num_classes} classes but the dataset has {model.cfg.num_classes}; "
            "train a teacher on this dataset first (--dense)"
        )
    train_set = data.load_dataset(args.dataset, "train", model.data_config, training=True)
    test_set = data.load_dataset(args.dataset, "test", model.data_config)
    held_out = str(args.dataset) == data.DIGITS or data.split_folder(args.dataset, "test") != data.split_folder(
        args.dataset, "train"
    )
    split = "test" if held_out else "train"  # a folder without val/ or test/: no held-out images
    kind = "dense" if args.dense else f"IdleViT {model.idle_plan} cut loss {cfg.cut_loss}"
    print(f"training {model.cfg.name} ({kind}) on {args.dataset}: {len(train_set)} images, {cfg.epochs} epochs")
    started = time.perf_counter()

    def report(epoch: int, means: dict[str, float]) -> None:
        terms = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        print(f"epoch {epoch + 1}/{cfg.epochs}: {terms} ({time.perf_counter() - started:.0f} s)", flush=True)

    fit(model, train_set, cfg, teacher=teacher, on_epoch=report, workers=args.workers, progress=not args.quiet)
    seconds = time.perf_counter() - started
    accuracy = top1(model.eval(), test_set)
    summary = {
        "dataset": str(args.dataset),
        f"{split}_top1": accuracy,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
        "teacher": Path(args.teacher).name if args.teacher else "",
        "init": Path(args.init).name if args.init else "",
        **{k: v for k, v in asdict(cfg).items() if k != "weights"},
        **model.schedule.to_dict(),
    }
    path = save_checkpoint(model, args.out, epoch=cfg.epochs, train=summary)
    size = os.path.getsize(path) / 2**20
    print(f"wrote {path} ({size:.1f} MiB): {split}-split top-1 {accuracy:.2f}% after {seconds:.0f} s of training")
    return path, accuracy


def _probe_classes(args: argparse.Namespace) -> int:
    if str(args.dataset) == data.DIGITS:
        return data.DIGITS_CLASSES
    root = data.split_folder(args.dataset, "train")
    if not Path(root).is_dir():
        raise ToolkitError(f"dataset folder {str(root)!r} does not exist; pass 'digits' or an ImageFolder root")
    return sum(1 for p in Path(root).iterdir() if p.is_dir())


def demo(parser: argparse.ArgumentParser, out_dir: str | None, quiet: bool, extra: Sequence[str] = ()) -> None:
    """The demo recipe: dense teacher, then IdleViT (keep rate 0.7, cut loss both), on digits."""
    folder = Path(out_dir) if out_dir else DEMO_CHECKPOINT.parent
    teacher, student = folder / DEMO_TEACHER.name, folder / DEMO_CHECKPOINT.name
    q = ["--quiet"] if quiet else []
    train(parser.parse_args(["--dense", "--out", str(teacher), *q, *extra]), DENSE_RECIPE)
    train(parser.parse_args(["--teacher", str(teacher), "--out", str(student), *q, *extra]), STUDENT_RECIPE)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe == "demo":
        if args.seed != 0 and args.out_dir is None:
            raise ToolkitError(f"the bundled demo is seed 0; write seed {args.seed} elsewhere with --out-dir DIR")
        demo(parser, args.out_dir, args.quiet, ["--threads", str(args.threads), "--seed", str(args.seed)])
    else:
        train(args, DENSE_RECIPE if args.dense else STUDENT_RECIPE)
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
