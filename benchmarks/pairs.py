"""Pairs made from photos for the IWD benchmarks: JPEG round trips and block re-arrangements."""

from __future__ import annotations

import io

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255


def rearranged(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    channels, height, width = x.shape
    block = height // 4
    tiles = (
        x[:, : 4 * block, : 4 * block]
        .unfold(1, block, block)
        .unfold(2, block, block)
        .reshape(channels, 16, block, block)
    )
    tiles = tiles[:, torch.randperm(16, generator=generator)].reshape(channels, 4, 4, block, block)
    out = tiles.permute(0, 1, 3, 2, 4).reshape(channels, 4 * block, 4 * block)
    return TF.gaussian_blur(out, [3, 3], [0.6, 0.6])
