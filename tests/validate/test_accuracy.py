"""validate.accuracy on the digits test split: the ONNX scores exactly what PyTorch scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import idlevit
from idlevit.data import digits_split, normalize
from idlevit.errors import ToolkitError
from validate import accuracy

#: Test images scored (of 450): enough for a meaningful figure, a few seconds of CPU.
LIMIT = 96


def test_onnx_accuracy_equals_pytorch_on_digits(
    digits_model: idlevit.IdleViT, digits_ckpt: Path, digits_onnx: Path, tmp_path: Path
) -> None:
    report = tmp_path / "accuracy.json"
    argv = ["--ckpt", str(digits_ckpt), "--onnx", str(digits_onnx), "--data", "digits", "--limit", str(LIMIT)]
    assert accuracy.main([*argv, "--batch-size", "32", "--threads", "1", "--quiet", "--report", str(report)]) == 0
    rows = {row["backend"]: row for row in json.loads(report.read_text())["rows"]}
    assert set(rows) == {"pytorch", "onnxruntime-cpu"}

    # The figure the model itself gives on the same images, computed without the tool.
    images, labels = digits_split("test", 32)
    with torch.no_grad():
        logits = digits_model(normalize(images[:LIMIT], digits_model.cfg.mean, digits_model.cfg.std))
    expected_top1 = int((logits.argmax(1) == labels[:LIMIT]).sum())
    expected_top5 = int((logits.topk(5, dim=1).indices == labels[:LIMIT, None]).any(1).sum())

    for row in rows.values():
        assert row["images"] == LIMIT
        assert row["top1_correct"] == expected_top1 and row["top5_correct"] == expected_top5
        assert row["images_per_s"] > 0 and row["timed_images"] == LIMIT - 32  # the first batch is warm-up
    assert expected_top1 / LIMIT > 0.5  # the fitted head really reads the digits (chance is 10%)
    table = (tmp_path / "accuracy.md").read_text()
    assert "| pytorch |" in table and "| onnxruntime-cpu |" in table


def test_a_folder_with_other_classes_than_the_model_is_refused(digits_onnx: Path, tmp_path: Path) -> None:
    """Nine class folders for a ten-class model would shift every label after the missing one: exit 2, one line."""
    images, labels = digits_split("test", 32)
    for digit in range(1, 10):  # digit 0 left out
        folder = tmp_path / "data" / "val" / str(digit)
        folder.mkdir(parents=True)
        index = int((labels == digit).nonzero()[0, 0])
        pixels = (images[index].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / "x.png")
    argv = ["--onnx", str(digits_onnx), "--data", str(tmp_path / "data"), "--no-pytorch", "--quiet"]
    with pytest.raises(ToolkitError, match="has 9 classes but the model 10") as refused:
        accuracy.main(argv)
    assert refused.value.exit_code == 2


def test_data_in_one_batch_reports_no_speed_rather_than_zero() -> None:
    """The first batch is warm-up and untimed: one batch gives no images/s, and the table says why."""
    from validate.evaluate import AccuracyRow, markdown

    one_batch = AccuracyRow("onnxruntime-cpu", images=8, top1_correct=8, top5_correct=8)
    timed = AccuracyRow("pytorch", images=64, top1_correct=60, top5_correct=64, timed_images=56, seconds=0.5)
    table = markdown([one_batch, timed], batch_size=8)
    assert "n/a (one batch: warm-up only)" in table and "| 112.0 |" in table and " 0.0 |" not in table
