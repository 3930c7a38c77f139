"""Re-arranging an image while keeping its patch distribution: where the default IWDA starts.

A band reaching from one edge of the image to a seam moves by one pixel of IWD's analysis view (3.5
pixels at 224 for analysis size 64), so its patches reappear unchanged one position over: the
content moves (large l2) and only the patches across the band's seam and ends, and at the image
edge, are new. The seam is the cheapest path for that move, found by dynamic programming as in
seam carving (Avidan and Shamir 2007) with the cost of shift-map editing (Pritch et al. 2009): how
much the image differs from itself moved by the shift, near each pixel. Across the seam the
displacement ramps over two analysis pixels, so the content is squeezed or stretched there instead
of cut. The band spans 20% of the image along its seam (LENGTH), at the rows where seam and ends
cost little: the new patches lie along its boundary, so a shorter boundary costs less IWD, while the
band still moves the image as far in l2 as a change of 6/255 at every pixel (REACH), further than
PGD at 8/255 goes on photos (its sign steps leave many pixels inside the ball). Of one pool
of such moves per image (both orientations, both edges), the K samples take those of least exact
IWD that reach that far and lie that far from each other; where too few do (a smooth image), bands
spanning the whole image join the pool.

Measured on 12 nips17 photos (rows 200-211, 224 px, analysis size 64, best of four moves, 8-bit):
bands spanning the whole image cost 0.0031 in IWD at l2 40; spanning 30% at the cheapest rows,
0.0018 at l2 23; with the rows drawn among the cheapest three, 0.0019 at l2 20 (least l2 14),
and among the cheapest quarter, 0.0022-0.0024 (PGD at 8/255: IWD 0.0046, l2 7.9). Drawing among
three, 2 of 72 sample pairs of 12 tiny6 images came out identical (7 with whole-image bands).
A band from an edge has one seam where a band between two seams has two: on 16 nips17 photos
the best of four whole-image moves cost 0.0029 from an edge against 0.0040 between two seams.
The best of more moves costs less (rows 340-379: 0.00175 of 12, 0.00165 of 16, 0.00161 of 24; rows
300-319: 0.00149 of 16, 0.00139 of 32, 0.00130 of 48), and a lower bound on each move's IWD
(iwdctl.iwd.iwd_lower_bound) spares many exact ones. Those figures predate the 6/255 floor and the
20% bands; with them, the four starts of photos 600-609 (48 moves) cost 0.00106, 0.00119, 0.00150 and
0.00171 in IWD, against 0.00135, 0.00149, 0.00189 and 0.00219 before (l2 12-15 against 16-20).

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
from iwdctl.kernels import kernel
from iwdctl.runtime import single_threaded_blas

RAMP = 2.0  # analysis pixels over which the displacement rises across a seam
WINDOW = 4.0  # analysis pixels: the width over which a seam's cost is summed
BAND = 0.25  # the moved band spans at least a share of the side drawn from [BAND, 1 - BAND]
LENGTH = 0.2  # and this share of the image along its seam (shorter seams and ends: a smaller IWD)
DRAWN_ROWS = 3  # a band's rows are drawn among this many cheapest positions (samples differ)
# A move goes at least as far in l2 as a change of this size at every pixel: 9.2 at 224 px, where PGD at
# 8/255 reaches 7.9 on nips17 photos (FGSM 12.0). At 8/255 and bands over 30% of the image (before),
# the 4 targeted samples of 16 nips17 photos (rows 600-607, 700-707, lite0) cost 0.46-0.63 of PGD's
# IWD per sample; at 6/255 and 20%, 0.40-0.52 (48 moves on rows 600-607, 64 on rows 700-707), at l2
# 13-16 instead of 17-21.
REACH = 6 / 255


def seam_path(cost: np.ndarray) -> np.ndarray:
    """(..., H) the column in each row of the top-to-bottom path of least total cost, moving at most
    one column from row to row (seam carving's dynamic programme); `cost` (..., H, W), inf =
    forbidden. Leading axes are independent problems, solved together. Of equal totals the leftmost
    step, and the leftmost end, win."""
    *batch, height, width = cost.shape
    if _seam_kernel is not None:
        # Compiled: the programme below spends its time in NumPy calls on rows of a few hundred
        # entries (0.8 s of the 3 s that re-arranging took per 224 px photo).
        paths = np.empty((math.prod(batch), height), dtype=np.int64)
        _seam_kernel(np.ascontiguousarray(cost, dtype=np.float64).reshape(-1, height, width), paths)
        return paths.reshape(*batch, height)
    total = cost[..., 0, :].copy()
    steps = np.zeros((*batch, height, width), dtype=np.int8)
    padded = np.full((*batch, width + 2), np.inf)
    for row in range(1, height):
        padded[..., 1:-1] = total
        options = np.stack([padded[..., :-2], padded[..., 1:-1], padded[..., 2:]])
        steps[..., row, :] = options.argmin(axis=0)
        total = cost[..., row, :] + np.take_along_axis(options, steps[None, ..., row, :], axis=0)[0]
    path = np.empty((*batch, height), dtype=np.int64)
    path[..., -1] = total.argmin(axis=-1)
    for row in range(height - 1, 0, -1):
        step = np.take_along_axis(steps[..., row, :], path[..., row : row + 1], axis=-1)[..., 0]
        path[..., row - 1] = path[..., row] + step - 1
    return path


def _seam_paths(cost, paths):  # type: ignore[no-untyped-def]
    """seam_path's programme for costs (B, H, W) into paths (B, H), with the same choices."""
    count, height, width = cost.shape
    steps = np.zeros((height, width), dtype=np.int8)
    total = np.empty(width)
    previous = np.empty(width)
    for problem in range(count):
        total[:] = cost[problem, 0]
        for row in range(1, height):
            previous[:] = total
            for column in range(width):
                step = 0
                best = previous[column - 1] if column > 0 else np.inf
                if previous[column] < best:
                    step = 1
                    best = previous[column]
                if column + 1 < width and previous[column + 1] < best:
                    step = 2
                    best = previous[column + 1]
                steps[row, column] = step
                total[column] = cost[problem, row, column] + best
        end = 0
        for column in range(1, width):
            if total[column] < total[end]:
                end = column
        paths[problem, height - 1] = end
        for row in range(height - 1, 0, -1):
            paths[problem, row - 1] = paths[problem, row] + steps[row, paths[problem, row]] - 1


_seam_kernel = kernel(_seam_paths)


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
    firsts = np.arange(0, height - span + 1, step)
    windows = cost[firsts[:, None] + np.arange(span)]  # (positions, span, W): one seam each
    paths = seam_path(windows)
    totals = np.take_along_axis(windows, paths[..., None], axis=-1)[..., 0].sum(axis=1)
    stops = firsts + span
    totals += np.where(firsts > 0, end_cost[firsts], 0.0) + np.where(stops < height, end_cost[stops - 1], 0.0)
    options = list(zip(totals.tolist(), firsts.tolist(), paths))
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
    sampled = F.grid_sample(images, grid, mode="bicubic", padding_mode="reflection", align_corners=True).clamp(0, 1)
    # Where nothing moves, the image itself: sampling at the grid's own points is off by rounding,
    # and bit-equal pixels make bit-equal patches, which exact IWD matches to each other first.
    still = (displacement == 0).all(dim=1, keepdim=True).to(images.device)
    return torch.where(still, images, sampled)


def rearrange(
    images: torch.Tensor,
    generators: Sequence[torch.Generator],
    size: int,
    patch: int,
    candidates: int,
    count: int = 1,
) -> torch.Tensor:
    """(N, count, 3, H, W): for each image, `count` different moves of a band by one analysis pixel,
    chosen from one pool of max(`candidates`, `count`) moves drawn from the image's generator
    (orientation alternating, then edge). Moves that take the image at least the floor
    REACH * sqrt(3 H W) away in l2 are taken in increasing exact IWD (analysis size `size`, k x k
    patches), each at least the floor away from those taken before; then the others of those, then
    the rest, farthest first. Where the pool holds fewer than `count` such moves apart (a smooth
    image), as many bands spanning the whole image along their seam, drawn next, join it. With fewer
    different moves than `count`, they repeat in order.

    One pool per image keeps its samples apart by design: drawn separately, the best of each
    sample's own moves often lands on the same move, and the best few of one pool are often nearly
    the same move. IWDs run on the CPU, one thread per candidate."""
    height, width = images.shape[-2:]
    analysis_height, _ = analysis_size(height, width, size)
    scale = height / analysis_height
    originals = images.detach().double().cpu().numpy()
    drawn = max(candidates, count)
    floor = REACH * math.sqrt(images[0].numel())

    def draw(indices: list[int], length: float) -> list[torch.Tensor]:
        fields = [
            band_displacement(originals[index], scale, number % 2 == 0, number % 4 < 2, generators[index], length)
            for index in indices
            for number in range(drawn)
        ]
        sources = images[indices].repeat_interleave(drawn, dim=0)
        return list(displace(sources, torch.from_numpy(np.stack(fields))).unflatten(0, (len(indices), drawn)))

    def distinct(moves: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        for move in moves:
            if not any(torch.equal(move, other) for other in kept):
                kept.append(move)
        return torch.stack(kept)

    def apart(index: int, order: list[int]) -> list[int]:
        """The first `count` moves of `order` that each lie at least `floor` in l2 from those before."""
        kept: list[int] = []
        for move in order:
            if len(kept) == count:
                break
            if all(float((moved[index][move] - moved[index][other]).norm()) >= floor for other in kept):
                kept.append(move)
        return kept

    def reach(index: int) -> np.ndarray:
        return (moved[index] - images[index]).flatten(1).norm(dim=1).cpu().numpy()

    moved = [distinct(moves) for moves in draw(list(range(len(images))), LENGTH)]
    lengths = [reach(index) for index in range(len(images))]
    # Images whose far moves hold fewer than `count` apart: whole-image bands join their pools.
    short = [i for i, length in enumerate(lengths) if len(apart(i, np.flatnonzero(length >= floor))) < count]
    for index, moves in zip(short, draw(short, 1.0) if short else []):
        moved[index] = distinct(torch.cat([moved[index], moves]))
        lengths[index] = reach(index)
    far = [np.flatnonzero(length >= floor) for length in lengths]
    # Exact IWDs only where more moves reach far enough than are wanted.
    contested = [(index, move) for index in range(len(images)) if len(far[index]) > count for move in far[index]]
    views = analysis_view(torch.cat([images, *moved]).detach().double(), size).cpu().numpy()
    offsets = np.cumsum([len(images)] + [len(moves) for moves in moved])

    def bound(item: tuple[int, int]) -> float:
        return iwd_lower_bound(views[item[0]], views[offsets[item[0]] + item[1]], patch)

    def distance(item: tuple[int, int]) -> float:
        return exact_iwd(views[item[0]], views[offsets[item[0]] + item[1]], patch)

    distances: list[dict[int, float]] = [{} for _ in images]
    threads = max(1, min(cpu_threads(), len(contested)))
    with single_threaded_blas(), ThreadPoolExecutor(threads) as executor:
        # Exact IWDs in increasing order of a lower bound, until the next bound exceeds the count-th
        # least IWD found: the same ranking of the first `count` as computing every one, for less.
        queues: dict[int, list[tuple[float, int]]] = {}
        for (index, move), value in zip(contested, executor.map(bound, contested)):
            queues.setdefault(index, []).append((value, move))
        for queue in queues.values():
            queue.sort(reverse=True)  # the smallest bound last, to pop

        def threshold(index: int) -> float:
            kept = apart(index, sorted(distances[index], key=lambda move: (distances[index][move], move)))
            return distances[index][kept[-1]] if len(kept) == count else math.inf

        while True:
            limits = {index: threshold(index) for index in queues}
            open_images = [index for index, queue in queues.items() if queue and queue[-1][0] <= limits[index]]
            share = max(1, threads // max(1, len(open_images)))
            wave = [
                (index, queues[index].pop()[1])
                for index in open_images
                for _ in range(share)
                if queues[index] and queues[index][-1][0] <= limits[index]
            ]
            if not wave:
                break
            for (index, move), value in zip(wave, executor.map(distance, wave)):
                distances[index][move] = value
    chosen = []
    for index in range(len(images)):
        reached = sorted(far[index].tolist(), key=lambda move: (distances[index].get(move, math.inf), move))
        kept = apart(index, reached)
        rest = sorted(set(range(len(moved[index]))) - set(reached), key=lambda move: (-lengths[index][move], move))
        ranking = kept + [move for move in reached if move not in kept] + rest
        chosen.append(moved[index][[ranking[rank % len(ranking)] for rank in range(count)]])
    return torch.stack(chosen)
