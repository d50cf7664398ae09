"""Fixtures of the validate tests: a digits-sized IdleViT with a fitted head, its checkpoint and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import idlevit
from export.exporter import export_onnx
from idlevit.data import DIGITS_MEAN, DIGITS_STD, digits_split, normalize

from ..conftest import make_model

#: Train images the linear probe is fitted on (a few seconds of CPU, enough for ~85% test accuracy).
PROBE_IMAGES = 200


def fit_head(model: idlevit.IdleViT, images: torch.Tensor, labels: torch.Tensor) -> idlevit.IdleViT:
    """Ridge-regress the classifier on the model's CLS features, so predictions track the digit.

    A random-init model predicts one class for every image, which would make "the ONNX scores
    what PyTorch scores" trivially true; a fitted head gives varied, mostly right predictions.
    """
    features: dict[str, torch.Tensor] = {}
    hook = model.norm.register_forward_hook(lambda _m, _i, out: features.__setitem__("cls", out[:, 0]))
    with torch.no_grad():
        model(images)
    hook.remove()
    design = torch.cat([features["cls"].double(), torch.ones(len(images), 1, dtype=torch.float64)], dim=1)
    targets = torch.nn.functional.one_hot(labels, model.cfg.num_classes).double()
    ridge = design.T @ design + 1e-2 * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(ridge, design.T @ targets)
    with torch.no_grad():
        model.head.weight.copy_(weights[:-1].T.float())
        model.head.bias.copy_(weights[-1].float())
    return model


@pytest.fixture(scope="session")
def digits_model() -> idlevit.IdleViT:
    """deit_tiny at 32 px, patch 4 (64 tokens), 10 classes, digits mean/std, head fitted on digits."""
    model = make_model("deit_tiny", img_size=32, patch_size=4, num_classes=10, mean=DIGITS_MEAN, std=DIGITS_STD)
    images, labels = digits_split("train", 32)
    return fit_head(model, normalize(images[:PROBE_IMAGES], DIGITS_MEAN, DIGITS_STD), labels[:PROBE_IMAGES])


@pytest.fixture(scope="session")
def digits_ckpt(digits_model: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return idlevit.save_checkpoint(digits_model, tmp_path_factory.mktemp("ckpt") / "digits_tiny.pth")


@pytest.fixture(scope="session")
def digits_onnx(digits_model: idlevit.IdleViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model exported with kept-index outputs, dynamic batch."""
    path = tmp_path_factory.mktemp("onnx") / "digits_tiny.onnx"
    export_onnx(digits_model, path, with_indices=True, verify_batch=0, progress=False, checkpoint="digits_tiny.pth")
    return path
