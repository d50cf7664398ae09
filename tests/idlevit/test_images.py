"""Torch-free preprocessing: timm's eval tensors, PyTorch's digits upscale, folders read as torchvision does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idlevit import images
from idlevit.configs import INTERPOLATIONS, data_config
from idlevit.errors import ToolkitError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("size", [32, 224, 30])
def test_eval_transform_is_timms(size: int) -> None:
    """Every interpolation and several crops and image shapes (landscape, portrait, square, odd, smaller
    than the crop), normalised and folded (0..255) configs: the same float32 tensor as timm's transform."""
    timm_data = pytest.importorskip("timm.data")
    rng = np.random.default_rng(size)
    shapes = [(40, 40), (300, 200), (200, 333), (37, 91), (size, size), (17, 23)]
    worst = 0.0
    for width, height in shapes:
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for crop in (1.0, 0.875, 0.9):
            for interpolation in INTERPOLATIONS:
                for mean, std in (IMAGENET, ((0.0,) * 3, (1 / 255,) * 3)):
                    config = data_config(size, mean, std, crop, interpolation)
                    resolved = timm_data.resolve_data_config(pretrained_cfg=config)
                    expected = timm_data.create_transform(**resolved, is_training=False)(picture).numpy()
                    got = images.EvalTransform(config)(picture)
                    assert got.shape == expected.shape == (3, size, size) and got.dtype == np.float32
                    worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= 1e-6


@pytest.mark.parametrize("size", [8, 16, 32, 48, 224])
def test_digits_upscale_is_torchs_bilinear(size: int) -> None:
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    scans = load_digits().images.astype(np.float32) / np.float32(16)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(scans)[:, None], size=(size, size), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    assert np.abs(images.upscale_bilinear(scans, size) - expected).max() <= 1e-6


def test_digits_split_in_numpy_matches_the_training_tensors() -> None:
    """Training wraps the same arrays (idlevit.data), so training and every feeder see one set of digits."""
    pytest.importorskip("torch")
    from idlevit import data

    pixels, labels = images.digits_split("test", 32)
    tensors, tensor_labels = data.digits_split("test", 32)
    assert np.array_equal(pixels, tensors.numpy()) and np.array_equal(labels, tensor_labels.numpy())
    assert pixels.shape == (450, 3, 32, 32) and pixels.dtype == np.float32 and labels.dtype == np.int64


def _folder(root: Path, classes: list[str], per_class: int = 1) -> Path:
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), index * 20 + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_folder_labels_are_sorted_class_folders_like_torchvision(tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    root = _folder(tmp_path / "data", ["b", "a", "10", "9"], per_class=2)
    (root / "a" / "notes.txt").write_text("not an image")
    ours = images.FolderImages(root)
    theirs = datasets.ImageFolder(str(root))
    assert ours.classes == theirs.classes
    assert [(Path(p).name, label) for p, label in ours.samples] == [
        (Path(p).name, label) for p, label in theirs.samples
    ]


def test_load_dataset_and_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", ["a", "b", "c"], per_class=3)
    config = data_config(8, (0.5,) * 3, (0.25,) * 3, 1.0, "bilinear")
    dataset = images.load_dataset(root, "test", config)
    assert len(dataset) == 9 and dataset.num_classes == 3
    got = list(images.batches(dataset, 4))
    assert [len(labels) for _, labels in got] == [4, 4, 1]
    first_images, first_labels = got[0]
    assert first_images.shape == (4, 3, 8, 8) and first_images.dtype == np.float32
    assert first_labels.tolist() == [0, 0, 0, 1]
    # pixel 0 of class a -> (0 / 255 - 0.5) / 0.25
    assert np.allclose(first_images[0], -2.0)


def test_class_count_must_match_the_model(tmp_path: Path) -> None:
    dataset = images.load_dataset(_folder(tmp_path / "nine", [str(i) for i in range(9)]), "test", _config())
    with pytest.raises(ToolkitError, match="9 classes but the model 10"):
        images.check_classes(dataset, 10, tmp_path / "nine")
    images.check_classes(dataset, 9, tmp_path / "nine")


def test_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    with pytest.raises(ToolkitError, match="hold no"):
        images.FolderImages(tmp_path / "data")
    with pytest.raises(ToolkitError, match="no class folders"):
        images.FolderImages(tmp_path / "data" / "a")


def _config() -> dict:
    return data_config(8, images.DIGITS_MEAN, images.DIGITS_STD, 1.0, "bilinear")


def test_a_report_names_the_folder_it_read(tmp_path: Path) -> None:
    from idlevit.images import dataset_label

    (tmp_path / "val").mkdir()
    assert dataset_label("digits", "test") == "digits:test"
    assert dataset_label(tmp_path, "test") == str(tmp_path / "val")
    assert dataset_label(tmp_path, "train") == str(tmp_path)
