"""Re-arranging an image while keeping its patch distribution: where the default IWDA starts.

A band of the image, between two seams, moves by one pixel of IWD's analysis view (3.5 pixels at
224 for analysis size 64), so its patches reappear unchanged one position over: the content moves
(large l2) and only the patches across the seams are new. The seams are the cheapest paths for
that move, found by dynamic programming as in seam carving (Avidan and Shamir 2007) with the cost
of shift-map editing (Pritch et al. 2009): how much the image differs from itself moved by the
shift, near each pixel. Across each seam the displacement ramps over two analysis pixels, so the
content is squeezed on one side of the band and stretched on the other instead of cut. Of a few
such moves per image (both orientations), the one with the smallest exact IWD is kept.

Why whole analysis pixels: a displacement below one analysis pixel never moves a patch of the
analysis view to another position (the optimal matching stays the identity), so it changes the
image where the analysis view does not look; a move by whole analysis pixels is a re-arrangement
of the patches IWD compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from iwdctl.costs import cpu_threads
from iwdctl.iwd import analysis_size, analysis_view, exact_iwd
from iwdctl.runtime import single_threaded_blas

RAMP = 2.0  # analysis pixels over which the displacement rises across a seam
WINDOW = 4.0  # analysis pixels: the width over which a seam's cost is summed
BAND = 0.25  # the moved band spans at least this share of the side


def seam_path(cost: np.ndarray) -> np.ndarray:
    """(H,) the column in each row of the top-to-bottom path of least total cost, moving at most
    one column from row to row (seam carving's dynamic programme); `cost` (H, W), inf = forbidden."""
    height, width = cost.shape
    total = cost[0].copy()
    steps = np.zeros((height, width), dtype=np.int8)
    padded = np.full(width + 2, np.inf)
    for row in range(1, height):
        padded[1:-1] = total
        options = np.stack([padded[:-2], padded[1:-1], padded[2:]])
        steps[row] = options.argmin(axis=0)
        total = cost[row] + options[steps[row], np.arange(width)]
    path = np.empty(height, dtype=np.int64)
    path[-1] = int(total.argmin())
    for row in range(height - 1, 0, -1):
        path[row - 1] = path[row] + steps[row, path[row]] - 1
    return path


def band_displacement(
    image: np.ndarray, shift: float, scale: float, vertical: bool, generator: torch.Generator
) -> np.ndarray:
    """(2, H, W) displacement in pixels (x, then y) that moves a band between two seams by `shift`
    pixels across the seams (along x for vertical seams), its direction drawn from `generator`.

    `image` (3, H, W) float; `scale` full-resolution pixels per analysis pixel.
    """
    view = image if vertical else image.transpose(0, 2, 1)
    _, height, width = view.shape
    step = max(int(round(shift)), 1)
    # Seam cost: how much the content differs from itself moved by the shift, summed over a window.
    difference = np.abs(view[:, :, step:] - view[:, :, :-step]).sum(axis=0)
    difference = np.concatenate([difference, difference[:, -step:]], axis=1)
    window = max(int(round(WINDOW * scale)), 1)
    kernel = np.ones(window) / window
    cost = np.apply_along_axis(lambda values: np.convolve(values, kernel, mode="same"), 1, difference)
    ramp = max(int(round(RAMP * scale)), 1)
    margin, band = ramp + window // 2 + 1, int(BAND * width)
    low, high = margin + band // 2, width - margin - band // 2
    split = int(torch.randint(min(low, high - 1), max(high, low + 1), (1,), generator=generator))
    direction = 1.0 if bool(torch.randint(0, 2, (1,), generator=generator)) else -1.0
    columns = np.arange(width, dtype=np.float64)
    left, right = cost.copy(), cost.copy()
    left[:, (columns < margin) | (columns > split - band // 2)] = np.inf
    right[:, (columns < split + band // 2) | (columns > width - 1 - margin)] = np.inf
    if not (np.isfinite(left).any() and np.isfinite(right).any()):
        return np.zeros((2, *image.shape[1:]))  # too small to hold a band and its seams
    first, second = seam_path(left), seam_path(right)
    rise = np.clip((columns[None] - first[:, None]) / ramp, 0, 1)
    fall = np.clip((second[:, None] - columns[None]) / ramp, 0, 1)
    along = direction * shift * np.minimum(rise, fall)
    field = np.stack([along, np.zeros_like(along)])
    return field if vertical else field[::-1].transpose(0, 2, 1)


def displace(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images sampled (bicubic) at each pixel plus its displacement (N, 2, H, W)."""
    height, width = images.shape[-2:]
    rows = torch.linspace(-1, 1, height, device=images.device)
    columns = torch.linspace(-1, 1, width, device=images.device)
    grid_y, grid_x = torch.meshgrid(rows, columns, indexing="ij")
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], device=images.device).view(1, 2, 1, 1)
    grid = torch.stack([grid_x, grid_y])[None] + displacement.to(images.device, images.dtype) * scale
    grid = grid.permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="reflection", align_corners=True).clamp(0, 1)


def rearrange(
    images: torch.Tensor, generators: Sequence[torch.Generator], size: int, patch: int, candidates: int
) -> torch.Tensor:
    """(N, 3, H, W): each image with a band moved by one analysis pixel, the move of least exact IWD
    (analysis size `size`, k x k patches) among `candidates` drawn from the image's generator
    (orientations alternating). IWDs run on the CPU, one thread per candidate."""
    height, width = images.shape[-2:]
    analysis_height, _ = analysis_size(height, width, size)
    scale = height / analysis_height
    originals = images.detach().double().cpu().numpy()
    fields = torch.from_numpy(
        np.stack(
            [
                band_displacement(original, scale, scale, index % 2 == 0, generator)
                for original, generator in zip(originals, generators)
                for index in range(candidates)
            ]
        )
    )
    moved = displace(images.repeat_interleave(candidates, dim=0), fields)
    views = analysis_view(torch.cat([images, moved]).detach().double(), size).cpu().numpy()
    references, movers = views[: len(images)], views[len(images) :]

    def distance(index: int) -> float:
        return exact_iwd(references[index // candidates], movers[index], patch)

    with single_threaded_blas(), ThreadPoolExecutor(min(cpu_threads(), len(movers))) as pool:
        distances = np.array(list(pool.map(distance, range(len(movers))))).reshape(len(images), candidates)
    chosen = torch.from_numpy(distances.argmin(axis=1)) + torch.arange(len(images)) * candidates
    return moved[chosen.to(moved.device)]
