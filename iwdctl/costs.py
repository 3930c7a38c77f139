"""Dense patch cost matrices C[i, j] = mean |u_i - v_j| between all k x k patches of two images.

At stride 1 the cost of patches p and q is a k x k window sum of per-pixel costs, and along a
diagonal of patch rows (r, r + delta) consecutive windows share k - 1 pixel rows. The CPU kernel
(numba, GIL released, split over threads by diagonal) computes each pair of pixel rows' window sums
once, keeps the last k in a ring and adds them: about 25 operations per entry instead of 3 k^2.
Elsewhere (CUDA, other strides, or without numba) torch computes the same matrix.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from iwdctl.assignment import in_row_parts
from iwdctl.kernels import kernel

if TYPE_CHECKING:
    import torch


def as_array(image: Any, dtype: type) -> np.ndarray:
    """A C-contiguous NumPy copy (or view) of an array or a tensor on any device."""
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().numpy()
    return np.ascontiguousarray(image, dtype=dtype)


def _window_sums(x, y, k, t, delta, pixel, ring):  # type: ignore[no-untyped-def]
    """Ring slot t % k = the k-wide window sums along the columns of |x - y| (summed over channels) for
    pixel rows (t, t + delta): slot[q1, q2] = sum over b < k of that sum at columns (q1 + b, q2 + b)."""
    channels, _, width = x.shape
    cols = width - k + 1
    for c1 in range(width):
        for c2 in range(width):
            pixel[c1, c2] = abs(x[0, t, c1] - y[0, t + delta, c2])
        for channel in range(1, channels):
            for c2 in range(width):
                pixel[c1, c2] += abs(x[channel, t, c1] - y[channel, t + delta, c2])
    slot = ring[t % k]
    for q1 in range(cols):
        for q2 in range(cols):
            slot[q1, q2] = pixel[q1, q2]
        for b in range(1, k):
            for q2 in range(cols):
                slot[q1, q2] += pixel[q1 + b, q2 + b]


def _diagonal_window_means(x, y, k, deltas, row_slots, column_slots, out):  # type: ignore[no-untyped-def]
    """out[row_slots[i], column_slots[j]] = mean of |x - y| over channels and the k x k windows of
    patch i = r1 * Q + q1 in x and patch j = r2 * Q + q2 in y, for the patch-row diagonals r2 - r1 in
    `deltas`; a slot of -1 drops its patch. Sums in float64, one division, one rounding to out's
    dtype (not a second rounding and a pass of its own: 0.04 s at 128 px)."""
    channels, height, width = x.shape
    rows = height - k + 1
    cols = width - k + 1
    terms = channels * k * k
    pixel = np.empty((width, width))
    ring = np.empty((k, cols, cols))
    totals = np.empty(cols)
    for delta in deltas:
        first = max(0, -delta)
        stop = min(rows, rows - delta)
        for t in range(first, stop + k - 1):
            _window_sums_kernel(x, y, k, t, delta, pixel, ring)
            r1 = t - k + 1
            if r1 < first:
                continue
            r2 = r1 + delta
            slots = column_slots[r2 * cols : (r2 + 1) * cols]
            for q1 in range(cols):
                row_slot = row_slots[r1 * cols + q1]
                if row_slot < 0:
                    continue
                # The sums side by side first (a loop the compiler vectorises), then the scattered writes.
                for q2 in range(cols):
                    totals[q2] = ring[0, q1, q2]
                for a in range(1, k):
                    for q2 in range(cols):
                        totals[q2] += ring[a, q1, q2]
                row = out[row_slot]
                for q2 in range(cols):
                    if slots[q2] >= 0:
                        row[slots[q2]] = totals[q2] / terms


def _diagonal_row_nearest(x, y, k, deltas, offsets, values, columns):  # type: ignore[no-untyped-def]
    """The same sweep as _diagonal_window_means (sums), keeping per row only its K smallest values of
    sum - offsets[column] (ascending in values[row], K = values.shape[1]) and their columns, instead
    of writing the matrix."""
    _, height, width = x.shape
    rows = height - k + 1
    cols = width - k + 1
    kept_count = values.shape[1]
    pixel = np.empty((width, width), dtype=x.dtype)
    ring = np.empty((k, cols, cols), dtype=x.dtype)
    totals = np.empty(cols, dtype=x.dtype)
    for delta in deltas:
        first = max(0, -delta)
        stop = min(rows, rows - delta)
        for t in range(first, stop + k - 1):
            _window_sums_kernel(x, y, k, t, delta, pixel, ring)
            r1 = t - k + 1
            if r1 < first:
                continue
            r2 = r1 + delta
            shifts = offsets[r2 * cols : (r2 + 1) * cols]
            for q1 in range(cols):
                kept = values[r1 * cols + q1]
                where = columns[r1 * cols + q1]
                worst = kept[kept_count - 1]
                # The row's sums first (a loop the compiler vectorises), then the rare insertions.
                for q2 in range(cols):
                    totals[q2] = ring[0, q1, q2] - shifts[q2]
                for a in range(1, k):
                    for q2 in range(cols):
                        totals[q2] += ring[a, q1, q2]
                for q2 in range(cols):
                    total = totals[q2]
                    if total < worst:
                        position = kept_count - 1
                        while position > 0 and kept[position - 1] > total:
                            kept[position] = kept[position - 1]
                            where[position] = where[position - 1]
                            position -= 1
                        kept[position] = total
                        where[position] = r2 * cols + q2
                        worst = kept[kept_count - 1]


def _listed_costs(u, v, rows, columns, out):  # type: ignore[no-untyped-def]
    """out[k] = mean |u[rows[k]] - v[columns[k]]|, summed in order."""
    terms = u.shape[1]
    for k in range(len(rows)):
        first, second = u[rows[k]], v[columns[k]]
        total = 0.0
        for t in range(terms):
            total += abs(first[t] - second[t])
        out[k] = total / terms


def _dense_costs(u, v_columns, start, stop, out):  # type: ignore[no-untyped-def]
    """out[i, j] = mean |u_i - v_j| for the rows i in [start, stop); v_columns = v.T (terms, m). Each
    entry is summed term by term in order, and the entries of a row side by side (a loop the
    compiler vectorises, where one entry's sum is a chain of dependent additions)."""
    terms, count = v_columns.shape
    totals = np.empty(count)
    for i in range(start, stop):
        totals[:] = 0.0
        for t in range(terms):
            value = u[i, t]
            column = v_columns[t]
            for j in range(count):
                totals[j] += abs(value - column[j])
        for j in range(count):
            out[i, j] = totals[j] / terms


def _gather_columns(matrix, columns, first, stop):  # type: ignore[no-untyped-def]
    """matrix[first:stop] = matrix[first:stop][:, columns] (a permutation), in place row by row."""
    gathered = np.empty(len(columns), dtype=matrix.dtype)
    for index in range(first, stop):
        row = matrix[index]
        for k in range(len(columns)):
            gathered[k] = row[columns[k]]
        row[:] = gathered


_window_sums_kernel = kernel(_window_sums)
_kernel = kernel(_diagonal_window_means)
_listed_kernel = kernel(_listed_costs)
_nearest_kernel = kernel(_diagonal_row_nearest)
_dense_kernel = kernel(_dense_costs)
_gather_kernel = kernel(_gather_columns)


def row_nearest(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    patch: int,
    count: int,
    threads: int = 1,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per patch of x (stride 1): its `count` smallest window sums of |x - y| over y's patches, less
    `offsets` per patch of y if given (float32, ascending, not divided by d), and those patches'
    indices. None without numba."""
    if _nearest_kernel is None:
        return None
    xs, ys = as_array(x, np.float32), as_array(y, np.float32)
    rows = xs.shape[1] - patch + 1
    patches = rows * (xs.shape[2] - patch + 1)
    deltas = np.arange(-(rows - 1), rows, dtype=np.int64)
    parts = max(1, threads)
    values = np.full((parts, patches, count), np.inf, dtype=np.float32)
    columns = np.zeros((parts, patches, count), dtype=np.int64)
    shifts = np.zeros(patches, dtype=np.float32) if offsets is None else offsets.astype(np.float32)

    def sweep(part: int) -> None:
        _nearest_kernel(xs, ys, patch, deltas[part::parts], shifts, values[part], columns[part])

    if parts == 1:
        sweep(0)
        return values[0], columns[0]
    with ThreadPoolExecutor(parts) as pool:
        list(pool.map(sweep, range(parts)))
    # Each part saw other columns: the smallest of their union.
    values = values.transpose(1, 0, 2).reshape(patches, parts * count)
    columns = columns.transpose(1, 0, 2).reshape(patches, parts * count)
    order = np.argsort(values, axis=1, kind="stable")[:, :count]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(columns, order, axis=1)


def pair_cost_matrix(u: np.ndarray, v: np.ndarray, threads: int = 1, dtype: type = np.float64) -> np.ndarray:
    """The dense matrix C[i, j] = mean |u_i - v_j| of two sets of patches, entry by entry (sums in
    float64), split over threads by rows."""
    u, v_columns = np.ascontiguousarray(u, dtype=np.float64), np.ascontiguousarray(v.T, dtype=np.float64)
    out = np.empty((len(u), len(v)), dtype=dtype)
    if _dense_kernel is None:
        rows = max(1, 2**22 // max(1, v_columns.size))  # bounds the broadcast difference's memory
        for start in range(0, len(u), rows):
            out[start : start + rows] = np.abs(u[start : start + rows, None, :] - v_columns.T[None]).mean(axis=2)
        return out
    in_row_parts(lambda start, stop: _dense_kernel(u, v_columns, start, stop, out), len(u), threads)
    return out


# Listed entries per thread below which pair_costs runs on one thread.
LISTED_COSTS_PER_THREAD = 65536


def pair_costs(u: np.ndarray, v: np.ndarray, rows: np.ndarray, columns: np.ndarray, threads: int = 1) -> np.ndarray:
    """Exact float64 costs mean |u_i - v_j| of the listed entries (i, j) = (rows[k], columns[k]),
    the list split over `threads`."""
    if _listed_kernel is None:
        chunk = 65536  # bounds the memory of the gathered rows
        parts = [
            np.abs(u[rows[at : at + chunk]] - v[columns[at : at + chunk]]).mean(axis=1)
            for at in range(0, len(rows), chunk)
        ]
        return np.concatenate(parts) if parts else np.empty(0)
    out = np.empty(len(rows))
    rows, columns = np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(columns, dtype=np.int64)
    # Short lists (a pricing round's few suspects) are not worth a thread pool's start.
    parts = threads if len(rows) >= LISTED_COSTS_PER_THREAD * threads else 1
    in_row_parts(
        lambda start, stop: _listed_kernel(u, v, rows[start:stop], columns[start:stop], out[start:stop]),
        len(rows),
        parts,
    )
    return out


def cost_matrix_torch(x: torch.Tensor, y: torch.Tensor, patch: int, stride: int = 1) -> torch.Tensor:
    """The dense matrix with torch on x's device: batched (B, 3, H, W) pairs give (B, N, N)."""
    import torch
    import torch.nn.functional as F

    batched = x.dim() == 4
    xs, ys = (x, y) if batched else (x[None], y[None])
    u = F.unfold(xs, patch, stride=stride).transpose(1, 2)
    v = F.unfold(ys, patch, stride=stride).transpose(1, 2)
    cost = torch.cdist(u, v, p=1).div_(u.shape[-1])
    return cost if batched else cost[0]


def _slots(selected: np.ndarray | None, count: int) -> np.ndarray:
    """Each patch's index among `selected` (all patches in order when None), -1 where not selected."""
    if selected is None:
        return np.arange(count, dtype=np.int64)
    slots = np.full(count, -1, dtype=np.int64)
    slots[selected] = np.arange(len(selected))
    return slots


def cost_matrix(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    patch: int,
    stride: int = 1,
    threads: int = 1,
    dtype: type = np.float64,
    rows: np.ndarray | None = None,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """C[i, j] = mean |u_i - v_j| for two images (3, H, W), as a NumPy array; with `rows` and `columns`
    (distinct patch indices, in any order) only C[np.ix_(rows, columns)]. The sums and the division are
    in float64 whatever `dtype`; float32 storage only rounds each mean once.

    The CPU kernel writes the selected entries straight to their places: at 128 px a matrix of every
    entry, then compacted, wrote up to 1.8 GB (and took its pages from the system, 2-3 s on a fresh
    process) where pairs with many identical patches need a third of it."""
    if _kernel is None or stride != 1 or (hasattr(x, "detach") and x.device.type != "cpu"):
        import torch

        pair = torch.as_tensor(x).double(), torch.as_tensor(y).double()
        full = cost_matrix_torch(*pair, patch, stride).cpu().numpy()
        full = full if rows is None else full[rows]
        return (full if columns is None else full[:, columns]).astype(dtype, copy=False)
    xs, ys = as_array(x, np.float64), as_array(y, np.float64)
    patch_rows = xs.shape[1] - patch + 1
    count = patch_rows * (xs.shape[2] - patch + 1)
    # The kernel writes each row's entries in increasing column order (scattered over a row they
    # missed the cache: about 2x slower at 128 px); other column orders are gathered row by row after.
    order = None if columns is None or np.all(columns[1:] > columns[:-1]) else np.argsort(columns)
    row_slots, column_slots = _slots(rows, count), _slots(columns if order is None else columns[order], count)
    out = np.empty((count if rows is None else len(rows), count if columns is None else len(columns)), dtype=dtype)
    deltas = np.arange(-(patch_rows - 1), patch_rows, dtype=np.int64)
    if threads <= 1:
        _kernel(xs, ys, patch, deltas, row_slots, column_slots, out)
    else:
        # Interleaved diagonals balance their different lengths; each thread writes its own entries.
        with ThreadPoolExecutor(threads) as pool:
            list(
                pool.map(
                    lambda part: _kernel(xs, ys, patch, deltas[part::threads], row_slots, column_slots, out),
                    range(threads),
                )
            )
    if order is not None:
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(len(order))
        in_row_parts(lambda start, stop: _gather_kernel(out, ranks, start, stop), len(out), threads)
    return out


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
