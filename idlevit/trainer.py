"""From a finetuning request (``python -m idlevit.finetune``'s flags) to a trained checkpoint on disk.

Builds the model (from scratch, ``--init`` or the teacher's weights), loads the data, runs
:func:`idlevit.training.fit` and writes the checkpoint in the official layout with a summary
of how it was trained.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import data
from .checkpoint import create_model, load_checkpoint, resolve_checkpoint_path, save_checkpoint
from .errors import ToolkitError
from .fileio import refuse_overwriting_inputs
from .model import IdleViT
from .recipe import TrainConfig, train_config
from .schedule import schedule_arguments
from .training import fit, top1


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
    if not args.out:
        raise ToolkitError("--out is required: the checkpoint to write (e.g. --out idlevit_digits.pth)")
    if not args.dense and not args.teacher and not args.init:
        raise ToolkitError("an IdleViT student starts from a dense model: pass --teacher DENSE.pth (or --dense first)")
    cfg = train_config(args, base)
    # before any work: a run that ends by writing over its own teacher or starting point loses it
    starts = [resolve_checkpoint_path(p) for p in (args.teacher, args.init) if p]
    refuse_overwriting_inputs([args.out], starts)
    torch.set_num_threads(args.threads)
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
