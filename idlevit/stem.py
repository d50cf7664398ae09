"""LV-ViT's convolution stem: three conv-BN-ReLU layers (stride 2 overall) then a patch conv."""

from __future__ import annotations

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

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.proj(x).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Fold each BatchNorm (running stats) into its convolution, for inference export."""
        for i in (1, 2, 3):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            if isinstance(bn, nn.BatchNorm2d):
                setattr(self, f"conv{i}", fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(self, f"bn{i}", nn.Identity())
