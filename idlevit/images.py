"""Images as every feeder reads them, with Pillow and NumPy only: the digits, ImageFolders and image files.

The one implementation of the toolkit's evaluation preprocessing, used by parity, accuracy,
calibration and ``engines.infer`` alike, and wrapped by training (:mod:`idlevit.data`). It needs
no PyTorch, so it runs on a deployment host, and it reproduces timm's eval transform for a
recorded data config (``resize`` of the shorter side to ``floor(img_size / crop_pct)`` with the
recorded interpolation, center crop, ``/ 255`` and ``(x - mean) / std`` in float32; checked
against timm in the tests). The digits are upscaled bilinearly as ``torch.nn.functional.interpolate``
does (``align_corners=False``).

Images come back as float32 (3, H, W) arrays; datasets hold (image, label) pairs.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .configs import check_data_config
from .errors import ToolkitError
from .names import DIGITS

DIGITS_CLASSES = 10
#: Fraction of each class held out as the test split, and the seed that picks it.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
#: Pixel statistics of the digits train split (8x8 values / 16), replicated over RGB.
DIGITS_MEAN = (0.3062, 0.3062, 0.3062)
DIGITS_STD = (0.3768, 0.3768, 0.3768)
SPLITS = ("train", "test")
#: timm's crop_pct when a config has none.
DEFAULT_CROP_PCT = 0.875
#: File endings an ImageFolder's images have (torchvision's list, compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Interpolation names of a data config -> PIL's resampling filters (what timm hands torchvision for PIL images).
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


# ---- the digits ------------------------------------------------------------------------------
def _digits_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Per-class seeded permutation (numpy's legacy RandomState: stable across versions)."""
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    chosen = []
    for label in range(DIGITS_CLASSES):
        members = np.flatnonzero(targets == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * DIGITS_TEST_FRACTION))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return np.sort(np.concatenate(chosen))


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of one axis, as PyTorch's bilinear upsampling (align_corners=False) picks them."""
    scale = np.float32(size_in / size_out)
    source = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(source.astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight = (source - low).astype(np.float32)
    return low, high, weight


def upscale_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) float32 -> (N, size, size), bilinear with half-pixel centres (no antialiasing, no overshoot)."""
    rows_lo, rows_hi, row_w = _bilinear_axis(images.shape[1], size)
    cols_lo, cols_hi, col_w = _bilinear_axis(images.shape[2], size)
    one = np.float32(1)
    top = images[:, rows_lo] * (one - row_w)[None, :, None] + images[:, rows_hi] * row_w[None, :, None]
    return (top[:, :, cols_lo] * (one - col_w) + top[:, :, cols_hi] * col_w).astype(np.float32)


def digits_split(split: str, img_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One split of the digits: images (N, 3, img_size, img_size) float32 in [0, 1], labels int64.

    The same call always returns the same images in the same order (train 1,347, test 450).
    Upscaling is bilinear (no overshoot, so values stay in [0, 1]); gray is copied to RGB.
    """
    if split not in SPLITS:
        raise ToolkitError(f"unknown digits split {split!r}; choose one of: {', '.join(SPLITS)}")
    if img_size < 8:
        raise ToolkitError(f"image size {img_size} is below the digits' 8 px; use 32 or 64")
    from sklearn.datasets import load_digits  # lazy: scikit-learn loads only when the digits are asked for

    digits = load_digits()
    index = _digits_indices(digits.target, split)
    pixels = digits.images[index].astype(np.float32) / np.float32(16.0)
    grey = upscale_bilinear(pixels, img_size)
    images = np.ascontiguousarray(np.repeat(grey[:, None], 3, axis=1))
    return images, digits.target[index].astype(np.int64)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(images - mean) / std`` per channel in float32, for (N, 3, H, W) or (3, H, W) images in [0, 1]."""
    shape = (-1, 1, 1)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(shape)
    std_a = np.asarray(std, dtype=np.float32).reshape(shape)
    return ((np.asarray(images, dtype=np.float32) - mean_a) / std_a).astype(np.float32)


# ---- image files -----------------------------------------------------------------------------
#: 16-bit grey modes PIL opens (PNG, TIFF, PGM): 0..65535.
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
#: Modes with an alpha channel (premultiplied ones included); transparent pixels become black.
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
READABLE = "pass 8- or 16-bit PNG/TIFF, JPEG or another image PIL reads"


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to 8-bit RGB by its real range: the one reader of ImageFolders and ``engines.infer``.

    8-bit, 1-bit, palette and CMYK images convert as PIL converts them; 16-bit grey scales
    0..65535 to 0..255 (PIL's own conversion clips at 255); float images must hold values in
    [0, 1] (anything else has no known range and is refused); alpha is composited over black.
    A missing, corrupt or unsupported file, or one above PIL's decompression-bomb limit, raises a
    one-line :class:`ToolkitError` naming the file.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        raise ToolkitError(f"image {where!r} is a folder, not an image file")
    if not os.path.exists(where):
        raise ToolkitError(f"image {where!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(where) as image:
                image.load()
                return _to_rgb(image, where)
    except ToolkitError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ToolkitError(
            f"image {where!r} is too large to decode safely ({_first_line(err)}); "
            "resize it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from None
    except Exception as err:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        reason = f"{type(err).__name__}: {_first_line(err)}"
        raise ToolkitError(f"cannot read image {where!r} ({reason}); {READABLE}") from None


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    mode = image.mode
    if mode in _GREY16 or (mode == "I" and image.format == "PNG"):  # PNG stores at most 16 bits per sample
        grey = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.round(grey / 257.0).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ToolkitError(f"image {where!r} holds NaN or infinite pixel values; {READABLE}")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise ToolkitError(
                f"image {where!r} has float pixels from {low:g} to {high:g}; float images are read as [0, 1]: "
                "scale it to [0, 1] or save it as 8- or 16-bit"
            )
        return Image.fromarray(np.round(values * 255.0).astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "I;32", "I;32L", "I;32B"):
        raise ToolkitError(f"image {where!r} has 32-bit integer pixels, whose range is unknown; {READABLE}")
    if mode == "P" and "transparency" in image.info:
        mode = "PA"
    if mode in _ALPHA:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ToolkitError(
            f"image {where!r} has mode {mode}, which cannot be converted to RGB ({err}); {READABLE}"
        ) from None


def _first_line(err: BaseException, limit: int = 160) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]


# ---- evaluation preprocessing ----------------------------------------------------------------
class EvalTransform:
    """timm's eval transform for a data config, on an RGB PIL image -> float32 (3, H, W).

    Resize the shorter side to ``floor(size / crop_pct)`` (the longer one keeps the aspect ratio,
    truncated as torchvision does; an image already that size is left alone), center crop
    ``size`` (offsets rounded as torchvision rounds them), scale to [0, 1] and normalise with the
    config's mean/std, all in float32.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        check_data_config(config, "the data config")
        self.size = int(config["input_size"][-1])
        if int(config["input_size"][-2]) != self.size:
            raise ToolkitError(f"input size {tuple(config['input_size'])} is not square; export a square model")
        self.scale_size = math.floor(self.size / (config.get("crop_pct") or DEFAULT_CROP_PCT))
        self.filter = PIL_FILTERS[config.get("interpolation", "bilinear")]
        self.mean = np.asarray(config["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(config["std"], dtype=np.float32).reshape(-1, 1, 1)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.scale_size, int(self.scale_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Image.Image) -> np.ndarray:
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, self.filter)
        width, height = image.size
        top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return ((pixels - self.mean) / self.std).astype(np.float32)


def load_images(paths: Sequence[str | os.PathLike[str]], config: Mapping[str, Any]) -> np.ndarray:
    """Image files, read by :func:`read_image` and preprocessed for ``config``: float32 (B, 3, H, W)."""
    transform = EvalTransform(config)
    return np.stack([transform(read_image(path)) for path in paths]).astype(np.float32)


# ---- datasets --------------------------------------------------------------------------------
class ImageSet(Protocol):
    """(image, label) pairs: ``len(dataset)``, ``dataset[i]`` -> (float32 (3, H, W), int), and the class count."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ArrayImages:
    """Images and labels held in arrays (the digits)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


class FolderImages:
    """An ImageFolder (ROOT/<class>/<image>) read as torchvision reads one: classes are the sorted
    sub-folders, labels their indices, images every file with an image ending under each, sorted;
    each image decoded by :func:`read_image` and passed through ``transform``."""

    def __init__(self, root: str | os.PathLike[str], transform: Any = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ToolkitError(
                f"dataset folder {str(self.root)!r} does not exist; pass an ImageFolder root (class subfolders)"
            )
        self.transform = transform
        with os.scandir(self.root) as entries:
            self.classes = sorted(entry.name for entry in entries if entry.is_dir())
        layout = "lay it out as ROOT/<class>/<image>.png"
        if not self.classes:
            raise ToolkitError(f"{self.root} is not an ImageFolder (no class folders in it); {layout}")
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            found = [
                os.path.join(folder, file)
                for folder, _, files in sorted(os.walk(self.root / name, followlinks=True))
                for file in sorted(files)
                if file.lower().endswith(IMAGE_EXTENSIONS)
            ]
            empty += [] if found else [name]
            self.samples += [(path, label) for path in found]
        if empty:
            raise ToolkitError(
                f"{self.root} is not an ImageFolder (class folder(s) {', '.join(empty[:5])} hold no "
                f"{'/'.join(IMAGE_EXTENSIONS)} image); {layout}"
            )
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform is not None else image), label


def split_folder(root: str | os.PathLike[str], split: str) -> Path:
    """The folder of ``split`` under an ImageFolder root: ROOT/train, ROOT/val (or test), else ROOT."""
    root = Path(root)
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def dataset_label(source: str | os.PathLike[str], split: str) -> str:
    """What a report calls the data it read: ``digits:test``, or the folder :func:`split_folder` picks."""
    return f"{DIGITS}:{split}" if str(source) == DIGITS else os.fspath(split_folder(source, split))


def load_dataset(source: str | os.PathLike[str], split: str, config: Mapping[str, Any]) -> ImageSet:
    """Preprocessed (image, label) pairs of ``split`` from ``"digits"`` or an ImageFolder root.

    Digits are sized and normalised by ``config``'s input size and mean/std; a folder's images
    go through :class:`EvalTransform` (ROOT/train and ROOT/val are used when present).
    """
    check_data_config(config, "the model's data config")
    if str(source) == DIGITS:
        img_size = int(config["input_size"][-1])
        images, labels = digits_split(split, img_size)
        return ArrayImages(normalize(images, config["mean"], config["std"]), labels, DIGITS_CLASSES)
    return FolderImages(split_folder(source, split), EvalTransform(config))


def check_classes(dataset: ImageSet, model_classes: int, source: str | os.PathLike[str]) -> None:
    """Labels mean the model's classes only when the dataset has exactly as many classes as the model.

    An ImageFolder's labels are the indices of its sorted class folders; with fewer or more
    folders than the model has classes, every label after a missing one names another class.
    The metadata records the class count (not names), so that is what can be checked.
    """
    if dataset.num_classes != model_classes:
        raise ToolkitError(
            f"{os.fspath(source)!r} has {dataset.num_classes} classes but the model {model_classes}, so its labels "
            f"cannot be the model's class indices; point --data at an ImageFolder with one folder per model class "
            "(named so that they sort in the model's class order)"
        )


class Head:
    """The first ``count`` pairs of a dataset (``--limit``)."""

    def __init__(self, dataset: ImageSet, count: int) -> None:
        self.dataset, self.count, self.num_classes = dataset, min(count, len(dataset)), dataset.num_classes

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.dataset[index]


def batches(dataset: ImageSet, batch_size: int, workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images float32 (B, 3, H, W), labels int64 (B,)) batches of ``dataset`` in order, the last one short.

    ``workers`` > 0 decodes and preprocesses the images of a batch on that many threads (Pillow
    releases the GIL while it decodes and resizes).
    """
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 0 else None
    fetch = dataset.__getitem__
    try:
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            items = list(pool.map(fetch, indices)) if pool is not None else [fetch(i) for i in indices]
            yield (
                np.stack([np.asarray(image, dtype=np.float32) for image, _ in items]),
                np.asarray([label for _, label in items], dtype=np.int64),
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
