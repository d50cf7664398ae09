"""Data for finetuning and accuracy checks: scikit-learn's digits, or any ImageFolder directory.

The digits set (1,797 real 8x8 grayscale scans shipped inside scikit-learn, 10 classes) is the
toolkit's own data: no download, a fixed seeded train/test split, upscaled to a ViT-friendly
size so that every original pixel becomes one or more patches. Images come back
*un-normalised* in [0, 1] so that each consumer applies the mean/std recorded with its model
(:func:`normalize`). User data in torchvision's ImageFolder layout goes through timm's
transforms, resolved from the model's ``data_config``; every image file, there and in
``engines.infer``, is decoded by :func:`read_image`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .configs import check_data_config, data_config
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


def digits_split(split: str, img_size: int = 32) -> tuple[Tensor, Tensor]:
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
    pixels = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target[index].astype(np.int64))


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel, for (N, 3, H, W) or (3, H, W) images in [0, 1]."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean_t) / std_t


def digits_data_config(img_size: int = 32) -> dict[str, Any]:
    """Preprocessing of a digits model in timm's data-config keys (what checkpoints record)."""
    return data_config(img_size, DIGITS_MEAN, DIGITS_STD, 1.0, "bilinear")


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


def image_folder(root: str | os.PathLike[str], data_config: Mapping[str, Any], training: bool = False) -> Dataset:
    """A torchvision ImageFolder with timm's eval (or train) transform for ``data_config``.

    ``data_config`` is a model's :attr:`~idlevit.model.IdleViT.data_config`; timm resolves it
    (resize by ``crop_pct``, center crop, normalise with its mean/std).
    """
    from timm.data import create_transform, resolve_data_config  # lazy: timm's transforms for user folders only
    from torchvision.datasets import ImageFolder  # lazy: torchvision for user folders only

    root = Path(root)
    if not root.is_dir():
        raise ToolkitError(f"dataset folder {str(root)!r} does not exist; pass an ImageFolder root (class subfolders)")
    check_data_config(data_config, "the model's data config")
    config = resolve_data_config(pretrained_cfg=dict(data_config))
    transform = create_transform(**config, is_training=training)
    try:
        return ImageFolder(str(root), transform=transform, loader=read_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise ToolkitError(f"{root} is not an ImageFolder ({err}); lay it out as ROOT/<class>/<image>.png") from None


def split_folder(root: str | os.PathLike[str], split: str) -> Path:
    """The folder of ``split`` under an ImageFolder root: ROOT/train, ROOT/val (or test), else ROOT."""
    root = Path(root)
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def load_dataset(
    source: str | os.PathLike[str], split: str, data_config: Mapping[str, Any], training: bool = False
) -> Dataset:
    """Normalised (image, label) pairs of ``split`` from ``"digits"`` or an ImageFolder root.

    Digits are sized and normalised by ``data_config``'s input size and mean/std; a folder
    goes through :func:`image_folder` (ROOT/train and ROOT/val are used when present).
    """
    check_data_config(data_config, "the model's data config")
    if str(source) == DIGITS:
        img_size = int(data_config["input_size"][-1])
        images, labels = digits_split(split, img_size)
        return TensorDataset(normalize(images, data_config["mean"], data_config["std"]), labels)
    return image_folder(split_folder(source, split), data_config, training)


def num_classes(dataset: Dataset) -> int:
    """Class count of a dataset built by :func:`load_dataset`."""
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    return len(dataset.classes)  # type: ignore[attr-defined]
