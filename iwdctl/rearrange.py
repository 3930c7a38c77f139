"""Re-arranging an image while keeping its patch distribution: where the default IWDA starts.

The band between one edge of the image and a seam moves by one pixel of IWD's analysis view (3.5
pixels at 224 for analysis size 64), so its patches reappear unchanged one position over: the
content moves (large l2) and only the patches across the seam and at the edge are new. The seam is
the cheapest path for that move, found by dynamic programming as in seam carving (Avidan and
Shamir 2007) with the cost of shift-map editing (Pritch et al. 2009): how much the image differs
from itself moved by the shift, near each pixel. Across the seam the displacement ramps over two
analysis pixels, so the content is squeezed or stretched there instead of cut. Of a few such moves
per image (both orientations, both edges), the one with the smallest exact IWD is kept. A band
from an edge has one seam where a band between two seams has two: on 16 nips17 photos the best of
four moves cost 0.0029 in IWD from an edge against 0.0040 between two seams (each with the band
at least a quarter of the side; drawing its least width, so that samples differ, makes it 0.0032).

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
BAND = 0.25  # the moved band spans at least a share of the side drawn from [BAND, 1 - BAND]


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
    image: np.ndarray, scale: float, vertical: bool, from_start: bool, generator: torch.Generator
) -> np.ndarray:
    """(2, H, W) displacement in pixels (x, then y) that moves the band between one image edge and a
    seam by one analysis pixel (`scale` pixels) across the seam (along x for a vertical seam): the
    band from the left (top) edge with `from_start`, else from the right (bottom) edge; its
    direction and least width are drawn from `generator`. At the edge a strip of `scale` pixels
    leaves the image or enters it reflected.

    `image` (3, H, W) float; `scale` full-resolution pixels per analysis pixel.
    """
    view = image if vertical else image.transpose(0, 2, 1)
    _, height, width = view.shape
    step = max(int(round(scale)), 1)
    # Seam cost: how much the content differs from itself moved by the shift, summed over a window.
    difference = np.abs(view[:, :, step:] - view[:, :, :-step]).sum(axis=0)
    difference = np.concatenate([difference, difference[:, -step:]], axis=1)
    window = max(int(round(WINDOW * scale)), 1)
    kernel = np.ones(window) / window
    cost = np.apply_along_axis(lambda values: np.convolve(values, kernel, mode="same"), 1, difference)
    ramp = max(int(round(RAMP * scale)), 1)
    share = BAND + (1 - 2 * BAND) * float(torch.rand((), generator=generator))  # samples differ
    margin, band = ramp + window // 2 + 1, max(int(share * width), 1)
    columns = np.arange(width, dtype=np.float64)
    if from_start:  # the seam leaves the band at least `band` wide and keeps `margin` from the far edge
        allowed = (columns >= band) & (columns <= width - 1 - margin)
    else:
        allowed = (columns >= margin) & (columns <= width - 1 - band)
    if not allowed.any():
        return np.zeros((2, *image.shape[1:]))  # too small to hold a band and its seam
    cost[:, ~allowed] = np.inf
    seam = seam_path(cost)[:, None]
    direction = 1.0 if bool(torch.randint(0, 2, (1,), generator=generator)) else -1.0
    inside = np.clip(((seam - columns[None]) if from_start else (columns[None] - seam)) / ramp, 0, 1)
    field = np.stack([direction * scale * inside, np.zeros_like(inside)])
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
    (orientation alternating, then edge). IWDs run on the CPU, one thread per candidate."""
    height, width = images.shape[-2:]
    analysis_height, _ = analysis_size(height, width, size)
    scale = height / analysis_height
    originals = images.detach().double().cpu().numpy()
    fields = torch.from_numpy(
        np.stack(
            [
                band_displacement(original, scale, index % 2 == 0, index % 4 < 2, generator)
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
