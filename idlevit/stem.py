"""LV-ViT's convolution stem (three conv-BN-ReLU layers, stride 2 overall, then a patch conv) and
the folding of input normalisation into a model's first convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ConvStem(nn.Module):
    """``conv1`` 7x7/2 -> ``conv2`` 3x3 -> ``conv3`` 3x3 (each + BN + ReLU) -> ``proj`` (patch/2).

    ``patch_size`` is the effective patch size in input pixels (16 for LV-ViT at 224 px); the
    final projection uses ``patch_size // 2`` because ``conv1`` already halves the image.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, channels: int = 64) -> None:
        super().__init__()
        self.img_size = img_size
        self.conv1 = nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False)
        self.bn1: nn.Module = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2: nn.Module = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn3: nn.Module = nn.BatchNorm2d(channels)
        self.proj = nn.Conv2d(channels, embed_dim, patch_size // 2, stride=patch_size // 2)

    def feature_map(self, x: Tensor) -> Tensor:
        """The patch features (B, embed, H/patch, W/patch), before they are flattened to tokens."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.proj(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold each BatchNorm (running stats) into its convolution, for inference export."""
        for i in (1, 2, 3):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            if isinstance(bn, nn.BatchNorm2d):
                setattr(self, f"conv{i}", fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(self, f"bn{i}", nn.Identity())


def has_padding(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` pads its input (then what it reads past the border is not an input pixel)."""
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(p != 0 for p in conv.padding)


@torch.no_grad()
def fold_pixel_normalization(
    conv: nn.Conv2d, mean: Sequence[float], std: Sequence[float], mean_into_bias: bool | None = None
) -> Tensor | None:
    """Make ``conv`` (a model's first layer) take RGB pixels 0..255 instead of ``(x / 255 - mean) / std``.

    The per-channel scale ``1 / (255 * std)`` goes into the weights. The mean goes into the bias
    only when the convolution does not pad (``mean_into_bias`` None: decided so): a padded border
    is zero in the normalised image, i.e. the *mean* pixel, not pixel 0, so folding the mean into
    the bias would be wrong along the borders. Then the per-channel offset ``-255 * mean``
    (1, 3, 1, 1) is returned for the caller to add to the pixels before ``conv``; else None.
    Computed in float64, stored in the convolution's dtype.
    """
    mean_into_bias = not has_padding(conv) if mean_into_bias is None else mean_into_bias
    dtype = conv.weight.dtype
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float64))
    offset = (-255.0 * torch.tensor(mean, dtype=torch.float64)).view(1, -1, 1, 1)
    weight = conv.weight.double() * scale.view(1, -1, 1, 1)
    conv.weight.copy_(weight.to(dtype))
    if not mean_into_bias:
        return offset.to(dtype)
    bias = (weight * offset).sum(dim=(1, 2, 3))  # the folded conv applied to the offset image, per output channel
    if conv.bias is not None:
        bias = bias + conv.bias.double()
    conv.bias = nn.Parameter(bias.to(dtype))
    return None
