"""The digits split is fixed, disjoint, balanced and in [0, 1]; folders go through timm's transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idlevit import data
from idlevit.errors import ToolkitError


def test_digits_split_is_fixed_disjoint_and_complete() -> None:
    train_x, train_y = data.digits_split("train", 32)
    test_x, test_y = data.digits_split("test", 32)
    # sklearn ships 1,797 digits; a quarter of each class (rounded) is held out.
    assert len(train_y) + len(test_y) == 1797
    assert len(test_y) == 450
    assert train_x.shape == (1347, 3, 32, 32) and train_x.dtype == torch.float32
    assert test_y.dtype == torch.int64
    assert 0.0 <= float(train_x.min()) and float(train_x.max()) <= 1.0
    # Every class is in both splits, in roughly the test fraction.
    n_test, n_train = torch.bincount(test_y, minlength=10), torch.bincount(train_y, minlength=10)
    assert torch.all((n_test / (n_test + n_train) - 0.25).abs() < 0.01)
    # No scan is in both splits (the split is by index; sklearn holds a few exact duplicate scans).
    flat_train = {tuple(row) for row in train_x[:, 0].flatten(1).mul(255).round().int().tolist()}
    overlap = sum(tuple(row) in flat_train for row in test_x[:, 0].flatten(1).mul(255).round().int().tolist())
    assert overlap <= 2
    again_x, again_y = data.digits_split("test", 32)
    assert torch.equal(again_x, test_x) and torch.equal(again_y, test_y)


def test_digits_upscale_preserves_the_8px_image() -> None:
    from sklearn.datasets import load_digits

    x8, y8 = data.digits_split("test", 8)
    digits = load_digits()
    # At 8 px the "upscale" is the identity: every test image is one of sklearn's scans / 16, with its label.
    for image, label in zip(x8[:20, 0].numpy() * 16, y8[:20].tolist()):
        assert any(np.array_equal(image, scan) for scan in digits.images[digits.target == label])
    x32, _ = data.digits_split("test", 32)
    # Bilinear 4x upscale keeps the mean of every image (the sampling grid is symmetric).
    assert torch.allclose(x32.mean(dim=(2, 3)), x8.mean(dim=(2, 3)), atol=1e-5)


def test_digits_mean_std_match_the_train_split() -> None:
    x8, _ = data.digits_split("train", 8)
    assert abs(float(x8.mean()) - data.DIGITS_MEAN[0]) < 1e-3
    assert abs(float(x8.std()) - data.DIGITS_STD[0]) < 1e-3


def test_normalize() -> None:
    images = torch.full((2, 3, 4, 4), 0.5)
    out = data.normalize(images, (0.5, 0.25, 0.0), (1.0, 0.5, 0.25))
    assert torch.allclose(out[:, 0], torch.zeros(1)) and torch.allclose(out[:, 1], torch.full((1,), 0.5))
    assert torch.allclose(out[:, 2], torch.full((1,), 2.0))


def test_bad_split_is_a_toolkit_error() -> None:
    with pytest.raises(ToolkitError, match="split"):
        data.digits_split("validation", 32)


def test_image_folder_uses_the_model_data_config(tmp_path: Path) -> None:
    for label, value in (("a", 0), ("b", 255)):
        (tmp_path / "val" / label).mkdir(parents=True)
        Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(tmp_path / "val" / label / "x.png")
    config = data.digits_data_config(32)
    dataset = data.load_dataset(tmp_path, "test", config)
    assert data.num_classes(dataset) == 2
    black, label_a = dataset[0]
    white, label_b = dataset[1]
    assert black.shape == (3, 32, 32) and (label_a, label_b) == (0, 1)
    # Normalised with the digits mean/std: 0 -> -mean/std, 1 -> (1-mean)/std.
    assert torch.allclose(black, torch.full_like(black, -data.DIGITS_MEAN[0] / data.DIGITS_STD[0]), atol=1e-5)
    assert torch.allclose(white, torch.full_like(white, (1 - data.DIGITS_MEAN[0]) / data.DIGITS_STD[0]), atol=1e-5)


def test_missing_folder_is_a_toolkit_error(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="does not exist"):
        data.load_dataset(tmp_path / "nope", "train", data.digits_data_config(32))
