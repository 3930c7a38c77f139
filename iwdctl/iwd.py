"""The internal Wasserstein distance (IWD): exact 1-Wasserstein distance between patch distributions.

Definition (the paper's Definition 3, eq. 2, with the L1 ground cost divided by d):

1. Both images are RGB in [0, 1] and of the same size. If the shorter side exceeds `size`, both are
   resized (bilinear, antialiased) so that the shorter side is `size`; `size=0` keeps native size.
2. u_1..u_N are the k x k patches of x at stride s (k = `patch`, s = `stride`), flattened to
   d = 3 k^2 values; v_1..v_N those of x~.
3. c(u, v) = (1/d) sum |u - v|, the mean absolute difference in pixel units.
4. IWD(x, x~) = min over one-to-one matchings sigma of (1/N) sum_i c(u_i, v_sigma(i)).

For uniform distributions of equally many points this assignment problem *is* the optimal
transport problem (Birkhoff), so it is solved exactly as a linear assignment. Because c is a metric,
identical patches present in both images can be matched to each other at zero cost without changing
the optimum (Kantorovich-Rubinstein: W1 depends only on mu - nu), which shrinks shifted pairs a lot.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from iwdctl.errors import InputError

# Up to this many patches per image the assignment is solved exactly (a 128 x 128 image at stride 1
# has 14884); past it `iwd` switches to the entropic estimate and says so.
EXACT_LIMIT = 16384
# Dense cost matrices beyond this many bytes are refused rather than swapping the machine to death.
MEMORY_LIMIT_BYTES = 8 * 2**30


@dataclass(frozen=True)
class IWDValue:
    value: float
    exact: bool
    patches: int


def analysis_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) at which IWD is computed: shorter side `size` unless already smaller."""
    if size <= 0 or min(height, width) <= size:
        return height, width
    scale = size / min(height, width)
    return (size, max(size, round(width * scale))) if height <= width else (max(size, round(height * scale)), size)


def analysis_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) resized for IWD (bilinear, antialiased) when the shorter side exceeds `size`."""
    target = analysis_size(images.shape[-2], images.shape[-1], size)
    if target == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=target, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def patch_count(height: int, width: int, patch: int, stride: int) -> int:
    return ((height - patch) // stride + 1) * ((width - patch) // stride + 1)


def patches(image: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(3, H, W) -> (N, 3 k^2): every k x k patch at the given stride, flattened."""
    return F.unfold(image[None], patch, stride=stride)[0].T.contiguous()


def patch_cost_matrix(x: torch.Tensor, y: torch.Tensor, patch: int, stride: int = 1, block: int = 8) -> torch.Tensor:
    """C[i, j] = mean |u_i - v_j| between all patches of x (rows) and of y (columns).

    Stride 1 uses the sliding-window identity c(u_(p), v_(q)) = sum over the k x k window of
    per-pixel L1 costs, built from pixel-pair costs in cache-sized blocks of patch rows: about 4x
    faster than torch.cdist on 64 x 64 images, with the same values (to rounding).
    """
    channels, height, width = x.shape
    if stride != 1:
        return torch.cdist(patches(x, patch, stride), patches(y, patch, stride), p=1).div_(channels * patch * patch)
    rows, cols = height - patch + 1, width - patch + 1
    out = torch.empty(rows, cols, rows, cols, dtype=x.dtype, device=x.device)
    for row_start in range(0, rows, block):
        x_rows = min(block, rows - row_start)
        x_band = x[:, row_start : row_start + x_rows + patch - 1]
        for col_start in range(0, rows, block):
            y_rows = min(block, rows - col_start)
            y_band = y[:, col_start : col_start + y_rows + patch - 1]
            # pixel[r1, r2, c1, c2] = sum over channels |x[:, r1, c1] - y[:, r2, c2]|
            pixel = (x_band[0][:, None, :, None] - y_band[0][None, :, None, :]).abs_()
            for channel in range(1, channels):
                pixel += (x_band[channel][:, None, :, None] - y_band[channel][None, :, None, :]).abs_()
            # Sum k pixel costs along the column diagonal, then k of those along the row diagonal.
            window = pixel[:, :, :cols, :cols].clone()
            for offset in range(1, patch):
                window += pixel[:, :, offset : offset + cols, offset : offset + cols]
            total = window[:x_rows, :y_rows].clone()
            for offset in range(1, patch):
                total += window[offset : offset + x_rows, offset : offset + y_rows]
            out[row_start : row_start + x_rows, :, col_start : col_start + y_rows, :] = total.permute(0, 2, 1, 3)
    return out.reshape(rows * cols, rows * cols).div_(channels * patch * patch)


def _unshared(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of the patches left once identical patches of u and v are matched to each other."""
    _, groups = torch.unique(torch.cat([u, v]), dim=0, return_inverse=True)
    groups = groups.cpu().numpy()
    group_u, group_v = groups[: len(u)], groups[len(u) :]
    count = int(groups.max()) + 1
    shared = np.minimum(np.bincount(group_u, minlength=count), np.bincount(group_v, minlength=count))
    return torch.from_numpy(_occurrence(group_u) >= shared[group_u]), torch.from_numpy(
        _occurrence(group_v) >= shared[group_v]
    )


def _occurrence(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its group (0 for the first)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(groups)) - first
    return rank


def exact_iwd(x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1) -> float:
    """Exact IWD of two analysis-size images (3, H, W), in float64."""
    x, y = x.double(), y.double()
    u, v = patches(x, patch, stride), patches(y, patch, stride)
    keep_u, keep_v = _unshared(u, v)
    remaining = int(keep_u.sum())
    if remaining == 0:
        return 0.0
    if remaining < 0.9 * len(u):
        cost = torch.cdist(u[keep_u], v[keep_v], p=1).div_(u.shape[1])
    else:
        cost = patch_cost_matrix(x, y, patch, stride)
        if remaining < len(u):
            cost = cost[keep_u][:, keep_v]
    matrix = cost.cpu().numpy()
    rows, cols = linear_sum_assignment(matrix)
    return float(matrix[rows, cols].sum() / len(u))


def sinkhorn_iwd(
    x: torch.Tensor,
    y: torch.Tensor,
    patch: int = 7,
    stride: int = 1,
    epsilon: float = 3e-4,
    scaling: float = 0.5,
    tolerance: float = 1e-2,
    max_iterations: int = 100,
) -> float:
    """Entropic estimate of IWD: log-domain Sinkhorn with epsilon scaling on the same L1 cost.

    epsilon falls geometrically from the largest cost to `epsilon` (pixel units) with a few
    iterations per level, then iterates until every row marginal is within `tolerance` (relative)
    or `max_iterations`. Returns <P, C> for the final plan. Float32; its error against the exact
    value is measured in benchmarks/measure_speed.py.
    """
    cost = patch_cost_matrix(x.float(), y.float(), patch, stride)
    count = cost.shape[0]
    log_weight = -math.log(count)
    f = torch.zeros(count, dtype=cost.dtype, device=cost.device)
    g = torch.zeros_like(f)
    eps = float(cost.max()) or 1.0
    iterations = 0
    while True:
        scaled = cost / -eps
        for _ in range(5):
            f = -eps * torch.logsumexp(scaled + (g / eps + log_weight)[None, :], dim=1)
            g = -eps * torch.logsumexp(scaled + (f / eps + log_weight)[:, None], dim=0)
            iterations += 1
        if eps <= epsilon:
            row_mass = torch.logsumexp(scaled + (g / eps)[None, :] + (f / eps)[:, None], dim=1).exp() / count
            if float((row_mass * count - 1).abs().max()) < tolerance or iterations >= max_iterations:
                break
        eps = max(epsilon, eps * scaling)
    plan = torch.exp(scaled + (f / eps)[:, None] + (g / eps)[None, :] + 2 * log_weight)
    return float((plan * cost).sum() / plan.sum())


def check_pair(x: torch.Tensor, y: torch.Tensor, patch: int) -> None:
    if x.shape != y.shape:
        raise InputError(f"images differ in size: {tuple(x.shape[-2:])} and {tuple(y.shape[-2:])} (use --resize)")
    if min(x.shape[-2:]) < patch:
        raise InputError(f"image of size {tuple(x.shape[-2:])} is smaller than a {patch}x{patch} patch")


def iwd_pair(
    x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1, size: int = 64, approx: bool | None = None
) -> IWDValue:
    """IWD of one pair (3, H, W) at full resolution; `approx` None: exact up to EXACT_LIMIT patches."""
    check_pair(x, y, patch)
    pair = analysis_view(torch.stack([x, y]), size)
    count = patch_count(pair.shape[-2], pair.shape[-1], patch, stride)
    if count * count * (8 if not approx else 4) > MEMORY_LIMIT_BYTES:
        raise InputError(
            f"{count} patches per image need a {count}x{count} cost matrix: too large; raise --stride or lower --size"
        )
    exact = count <= EXACT_LIMIT if approx is None else not approx
    value = exact_iwd(pair[0], pair[1], patch, stride) if exact else sinkhorn_iwd(pair[0], pair[1], patch, stride)
    return IWDValue(value, exact, count)


def iwd(
    x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1, size: int = 64, approx: bool | None = None
) -> torch.Tensor:
    """IWD between images x and y: (3, H, W) or batches (N, 3, H, W) in [0, 1]; float64 values.

    Exact by default. `approx=True` forces the entropic estimate; `approx=None` uses it only past
    EXACT_LIMIT patches per image, with a warning, since an approximation is never silent.
    """
    batch_x, batch_y = (x[None], y[None]) if x.dim() == 3 else (x, y)
    if batch_x.shape != batch_y.shape:
        raise InputError(f"x and y differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    results = [iwd_pair(a, b, patch, stride, size, approx) for a, b in zip(batch_x, batch_y)]
    if approx is None and not all(result.exact for result in results):
        warnings.warn("IWD past the exact-size limit: entropic (Sinkhorn) estimate returned", stacklevel=2)
    values = torch.tensor([result.value for result in results], dtype=torch.float64)
    return values[0] if x.dim() == 3 else values
