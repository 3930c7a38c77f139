"""Re-arranging an image while keeping its patch distribution: where the default IWDA starts.

A band reaching from one edge of the image to a seam moves by one pixel of IWD's analysis view (3.5
pixels at 224 for analysis size 64), so its patches reappear unchanged one position over: the
content moves (large l2) and only the patches across the band's seam and ends, and at the image
edge, are new. The seam is the cheapest path for that move, found by dynamic programming as in
seam carving (Avidan and Shamir 2007) with the cost of shift-map editing (Pritch et al. 2009): how
much the image differs from itself moved by the shift, near each pixel. Across the seam the
displacement ramps over two analysis pixels, so the content is squeezed or stretched there instead
of cut. The band spans 30% of the image along its seam (LENGTH), at the rows where seam and ends
cost little: the new patches lie along its boundary, so a shorter boundary costs less IWD, while the
band still moves the image further in l2 than any 8/255 l-inf perturbation can (REACH). Of a few
such moves per image (both orientations, both edges), the one of least exact IWD among those that
reach that far is kept; where none does (a smooth image), a band spanning the whole image.

Measured on 12 nips17 photos (rows 200-211, 224 px, analysis size 64, best of four moves, 8-bit):
bands spanning the whole image cost 0.0031 in IWD at l2 40; spanning 30% at the cheapest rows,
0.0018 at l2 23; with the rows drawn among the cheapest three, 0.0019 at l2 20 (least l2 14),
and among the cheapest quarter, 0.0022-0.0024 (PGD at 8/255: IWD 0.0046, l2 7.9). Drawing among
three, 2 of 72 sample pairs of 12 tiny6 images came out identical (7 with whole-image bands).
A band from an edge has one seam where a band between two seams has two: on 16 nips17 photos
the best of four whole-image moves cost 0.0029 from an edge against 0.0040 between two seams.
The best of more moves costs less (rows 340-379: 0.00175 of 12, 0.00165 of 16, 0.00161 of 24), and a
lower bound on each move's IWD (iwdctl.iwd.iwd_lower_bound) spares most exact ones.

Why whole analysis pixels: a displacement below one analysis pixel never moves a patch of the
analysis view to another position (the optimal matching stays the identity), so it changes the
image where the analysis view does not look; a move by whole analysis pixels is a re-arrangement
of the patches IWD compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from iwdctl.costs import cpu_threads
from iwdctl.iwd import analysis_size, analysis_view, exact_iwd, iwd_lower_bound
from iwdctl.runtime import single_threaded_blas

RAMP = 2.0  # analysis pixels over which the displacement rises across a seam
WINDOW = 4.0  # analysis pixels: the width over which a seam's cost is summed
BAND = 0.25  # the moved band spans at least a share of the side drawn from [BAND, 1 - BAND]
LENGTH = 0.3  # and this share of the image along its seam (shorter seams and ends: a smaller IWD)
DRAWN_ROWS = 3  # a band's rows are drawn among this many cheapest positions (samples differ)
REACH = 8 / 255  # a move goes at least as far in l2 as any l-inf perturbation of this size can


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
    image: np.ndarray,
    scale: float,
    vertical: bool,
    from_start: bool,
    generator: torch.Generator,
    length: float = LENGTH,
) -> np.ndarray:
    """(2, H, W) displacement in pixels (x, then y) that moves a band reaching from one image edge to
    a seam by one analysis pixel (`scale` pixels) across the seam (along x for a vertical seam): the
    band from the left (top) edge with `from_start`, else from the right (bottom) edge; its
    direction and width (within a quarter of the side) are drawn from `generator`. At the edge a
    strip of `scale` pixels leaves the image or enters it reflected.

    With `length` below 1 the band spans only that share of the image along the seam: rows (columns)
    where the seam and the band's two ends cost little (drawn among the cheapest three), the
    displacement ramping to 0 across each end as across the seam. An end costs how much the band's
    content differs from itself moved by the shift there.

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
    # The seam leaves the band `band` to `band + width / 4` wide (so that samples differ) and keeps
    # `margin` from the far edge.
    if from_start:
        allowed = (columns >= band) & (columns <= min(band + width // 4, width - 1 - margin))
    else:
        allowed = (columns >= max(width - 1 - band - width // 4, margin)) & (columns <= width - 1 - band)
    if not allowed.any():
        return np.zeros((2, *image.shape[1:]))  # too small to hold a band and its seam
    cost[:, ~allowed] = np.inf
    band_difference = difference[:, :band] if from_start else difference[:, -band:]
    first, stop, seam = _band_rows(cost, band_difference, length, step, generator)
    direction = 1.0 if bool(torch.randint(0, 2, (1,), generator=generator)) else -1.0
    inside = np.clip(((seam[:, None] - columns[None]) if from_start else (columns[None] - seam[:, None])) / ramp, 0, 1)
    rows = np.arange(height, dtype=np.float64)[:, None]
    if first > 0:
        inside *= np.clip((rows - first) / ramp, 0, 1)
    if stop < height:
        inside *= np.clip((stop - 1 - rows) / ramp, 0, 1)
    field = np.stack([direction * scale * inside, np.zeros_like(inside)])
    return field if vertical else field[::-1].transpose(0, 2, 1)


def _band_rows(
    cost: np.ndarray, band_difference: np.ndarray, length: float, step: int, generator: torch.Generator
) -> tuple[int, int, np.ndarray]:
    """(first, stop, seam): rows [first, stop) spanning `length` of the height, drawn from
    `generator` among the DRAWN_ROWS positions whose seam (its column in every row; outside the
    rows, any) and two ends cost least, so that samples differ. `cost` (H, W) is the seam cost,
    `band_difference` the shift difference over the band's columns."""
    height = cost.shape[0]
    span = max(int(round(length * height)), 1)
    if span >= height:
        return 0, height, seam_path(cost).astype(np.float64)
    kernel = np.ones(2 * step) / (2 * step)
    end_cost = np.convolve(band_difference.sum(axis=1), kernel, mode="same")
    options = []
    for first in range(0, height - span + 1, step):
        stop = first + span
        path = seam_path(cost[first:stop])
        total = cost[np.arange(first, stop), path].sum()
        total += (end_cost[first] if first > 0 else 0.0) + (end_cost[stop - 1] if stop < height else 0.0)
        options.append((total, first, path))
    options.sort(key=lambda option: (option[0], option[1]))
    _, first, path = options[int(torch.randint(0, min(len(options), DRAWN_ROWS), (1,), generator=generator))]
    seam = np.zeros(height)
    seam[first : first + span] = path
    return first, first + span, seam


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
    (orientation alternating, then edge) that move it at least REACH * sqrt(3 H W) in l2. Where
    none does, a band spanning the whole image along its seam, drawn next. IWDs run on the CPU, one
    thread per candidate."""
    height, width = images.shape[-2:]
    analysis_height, _ = analysis_size(height, width, size)
    scale = height / analysis_height
    originals = images.detach().double().cpu().numpy()

    def moves(fields: list[np.ndarray], sources: torch.Tensor) -> torch.Tensor:
        return displace(sources, torch.from_numpy(np.stack(fields)))

    moved = moves(
        [
            band_displacement(original, scale, index % 2 == 0, index % 4 < 2, generator)
            for original, generator in zip(originals, generators)
            for index in range(candidates)
        ],
        images.repeat_interleave(candidates, dim=0),
    ).unflatten(0, (len(images), candidates))
    floor = REACH * math.sqrt(images[0].numel())
    far = ((moved - images[:, None]).flatten(2).norm(dim=2) >= floor).cpu().numpy()
    short = np.nonzero(~far.any(axis=1))[0]
    if len(short):
        whole = [
            band_displacement(originals[index], scale, True, True, generators[index], 1.0) for index in short.tolist()
        ]
        moved[torch.from_numpy(short).to(moved.device), 0] = moves(whole, images[torch.from_numpy(short)])
        far[short, 0] = True
    views = analysis_view(torch.cat([images, moved.flatten(0, 1)]).detach().double(), size).cpu().numpy()
    references, movers = views[: len(images)], views[len(images) :]
    # An image with one far candidate keeps it; IWD decides among two or more (image * candidates + draw).
    alone = far & (far.sum(axis=1) == 1)[:, None]
    contested = np.flatnonzero(far & ~alone).tolist()

    def bound(index: int) -> float:
        return iwd_lower_bound(references[index // candidates], movers[index], patch)

    def distance(index: int) -> float:
        return exact_iwd(references[index // candidates], movers[index], patch)

    distances = np.where(alone, 0.0, np.inf)
    threads = max(1, min(cpu_threads(), len(contested)))
    with single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        # Exact IWDs in increasing order of a lower bound, until the next bound exceeds the least IWD
        # found: the same choice as computing every one, for a fraction of the cost.
        queues: dict[int, list[tuple[float, int]]] = {}
        for index, value in zip(contested, pool.map(bound, contested)):
            queues.setdefault(index // candidates, []).append((value, index))
        for queue in queues.values():
            queue.sort(reverse=True)  # the smallest bound last, to pop
        while True:
            least = distances.min(axis=1)
            open_images = [image for image, queue in queues.items() if queue and queue[-1][0] <= least[image]]
            share = max(1, threads // max(1, len(open_images)))
            wave = [
                queues[image].pop()[1]
                for image in open_images
                for _ in range(share)
                if queues[image] and queues[image][-1][0] <= least[image]
            ]
            if not wave:
                break
            distances.flat[wave] = list(pool.map(distance, wave))
    return moved[torch.arange(len(images)), torch.from_numpy(distances.argmin(axis=1))]
