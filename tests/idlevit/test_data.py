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


def _digit_8bit() -> np.ndarray:
    """A real scan (a test digit at 32 px) as 8-bit grey: the reference every encoding must reproduce."""
    images, _ = data.digits_split("test", 32)
    return np.round(images[0, 0].numpy() * 255).astype(np.uint8)


def _grey_palette(grey: np.ndarray) -> Image.Image:
    image = Image.fromarray(grey, "P")
    image.putpalette([level for index in range(256) for level in (index, index, index)])
    return image


def _encodings(tmp_path: Path) -> dict[str, Path]:
    grey = _digit_8bit()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    files = {
        "rgb8": (Image.fromarray(rgb), "png"),
        "grey16": (Image.fromarray(grey.astype(np.uint16) * 257), "png"),
        "float": (Image.fromarray(grey.astype(np.float32) / 255, "F"), "tif"),
        "palette": (_grey_palette(grey), "png"),
        "alpha": (Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)]), "RGBA"), "png"),
        "grey-alpha": (Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"), "png"),
        "cmyk": (Image.fromarray(rgb).convert("CMYK"), "tif"),
    }
    paths = {}
    for name, (image, ext) in files.items():
        paths[name] = tmp_path / f"{name}.{ext}"
        image.save(paths[name])
    return paths


@pytest.mark.parametrize("name", ["rgb8", "grey16", "float", "palette", "alpha", "grey-alpha", "cmyk"])
def test_every_encoding_reads_as_the_8bit_pixels(tmp_path: Path, name: str) -> None:
    path = _encodings(tmp_path)[name]
    pixels = np.asarray(data.read_image(path))
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    expected = np.repeat(_digit_8bit()[..., None], 3, axis=2)
    assert np.abs(pixels.astype(int) - expected).max() <= 1  # PIL's CMYK conversion rounds


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "ramp16.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
    pixels = np.asarray(data.read_image(path))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert (pixels == 255).mean() < 0.01  # clipping at 255 would saturate all but the darkest 0.4%


def test_transparent_pixels_are_black(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = np.asarray(data.read_image(path))
    assert (pixels[:2] == 200).all() and (pixels[2:] == 0).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: Image.fromarray(np.full((8, 8), 3.0, np.float32), "F").save(p.with_suffix(".tif")), "from 3 to 3"),
        (lambda p: Image.fromarray(np.full((8, 8), np.nan, np.float32), "F").save(p.with_suffix(".tif")), "NaN"),
        (lambda p: p.with_suffix(".tif").write_bytes(b"II*\x00" + b"\x00" * 60), "cannot read image"),
        (lambda p: p.with_suffix(".tif").write_bytes(b"not an image"), "cannot read image"),
    ],
    ids=["float-out-of-range", "float-nan", "corrupt-tiff", "text-file"],
)
def test_unreadable_images_are_one_line_errors_naming_the_file(tmp_path: Path, make, message: str) -> None:
    make(tmp_path / "bad")
    with pytest.raises(ToolkitError, match=message) as info:
        data.read_image(tmp_path / "bad.tif")
    assert "bad.tif" in str(info.value) and "\n" not in str(info.value)


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10,000 pixels: above 2x the limit (an error in PIL)
    with pytest.raises(ToolkitError, match="too large to decode safely"):
        data.read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between 1x and 2x: only a warning in PIL
    with pytest.raises(ToolkitError, match="too large to decode safely"):
        data.read_image(path)


def test_a_corrupt_image_in_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "val" / "a" / "good.png")
    (tmp_path / "val" / "a" / "zz_cut.png").write_bytes((tmp_path / "val" / "a" / "good.png").read_bytes()[:60])
    dataset = data.load_dataset(tmp_path, "test", data.digits_data_config(32))
    assert dataset[0][0].shape == (3, 32, 32)
    with pytest.raises(ToolkitError, match="zz_cut.png"):
        dataset[1]


def test_a_bad_data_config_is_refused_before_any_image_is_read(tmp_path: Path) -> None:
    config = dict(data.digits_data_config(32), std=(0.0, 0.0, 0.0))
    with pytest.raises(ToolkitError, match="std"):
        data.load_dataset("digits", "test", config)
