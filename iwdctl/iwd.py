"""The internal Wasserstein distance (IWD): exact 1-Wasserstein distance between patch distributions.

Definition (the paper's Definition 3, eq. 2, with the L1 ground cost divided by d):

1. Both images are RGB in [0, 1] and of the same size. If the shorter side exceeds `size`, both are
   resized (bilinear, antialiased) so that the shorter side is `size`; `size=0` keeps native size.
2. u_1..u_N are the k x k patches of x at stride s (k = `patch`, s = `stride`), flattened to
   d = 3 k^2 values; v_1..v_N those of x~.
3. c(u, v) = (1/d) sum |u - v|, the mean absolute difference in pixel units.
4. IWD(x, x~) = min over one-to-one matchings sigma of (1/N) sum_i c(u_i, v_sigma(i)).

For uniform distributions of equally many points this assignment problem *is* the optimal
transport problem (Birkhoff), so it is solved exactly as a linear assignment (iwdctl.assignment).
Because c is a metric, identical patches present in both images can be matched to each other at
zero cost without changing the optimum (Kantorovich-Rubinstein: W1 depends only on mu - nu), which
shrinks pixel-shifted pairs a lot. The value is the mean of the matched patches' costs summed
directly in float64, as POT sums them.

Past EXACT_LIMIT patches, or on request, IWD is estimated on the device in row blocks of a float32
cost matrix: a few passes of log-domain Sinkhorn with epsilon scaling, then a matching seeded by its
potential. The potential singles out a sparse graph of candidate pairs (the few smallest reduced
costs of every patch, and the patches at the same place); its optimal matching, solved on the CPU by
the exact route's auction and dual repair, is checked against the whole matrix, and rows that break
its duals add their candidates until the gap meets a tolerance or none does (pricing, as the exact
route certifies its float32 matrix). The estimate is the matching's cost in float64, an upper bound,
and `bound` its gap to the duals' value (a lower bound) relative to that value, plus float32 rounding,
so |estimate - IWD| <= bound * IWD always. At 224 px, stride 4, nips17 photos 600-603, every kind of
pair, the default tolerance (1e-3): errors 0 to +2.6e-4, within their bounds (at most 8.7e-4;
benchmarks/results/measure_speed_estimate_matching.md); priced to the end (tolerance 0), equal to IWD
within 4e-12 (photo 601). The Sinkhorn bracket's lower end after 150 passes, the estimate before the
matching, was up to 4% below IWD on shifted, rotated and re-arranged pairs, and its rounded plan
(Altschuler, Weed and Rigollet 2017: the bracket's upper end) up to 44% above. Without numba the
estimate is that lower end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from iwdctl.assignment import (
    FINAL_TOTAL_GAP,
    GRAPH_BIDS_PER_ROW,
    SCALING,
    auction,
    block_order,
    graph_auction,
    graph_optimum,
    min_cost_assignment,
    min_cost_assignment_within,
    shortest_paths_finish,
    sorted_unique,
)
from iwdctl.costs import (
    as_array,
    cost_matrix,
    cost_matrix_torch,
    pair_cost_matrix,
    pair_costs,
    row_nearest,
)
from iwdctl.errors import InputError
from iwdctl.runtime import device_name

if TYPE_CHECKING:
    import torch

# The exact value on a CPU runs on NumPy arrays: `iwdctl measure` does not import torch there (2 s of
# its start-up; it loads POT, the fallback solver, without POT's torch backend). torch (imported
# where used) serves tensors on a device and the estimate.

# Above this many patches (more than 38 x 38 pixels at 7 x 7) the dense matrix is stored in float32
# and the optimum certified with exact costs (min_cost_assignment_within): half the memory traffic made
# the 64 px default (3364 patches) 1.38x faster on shifted pairs, the slowest kind (12 nips17 pairs,
# whole process). Below it both routes take milliseconds.
FLOAT32_ASSIGNMENT_SIZE = 1024
# Where identical patches leave at most this share of x's unmatched, their cost matrix is computed entry by
# entry (3 k^2 terms each) instead of by window sums, which cost about 25 operations per entry of the
# whole matrix whatever share of it is kept.
DIRECT_COSTS_SHARE = 0.4
# Past this many patches the solver takes the columns in block order. In process (2 threads, nips17
# photos 600, 601, 602 and 820, each pair twice each way, alternately): at 128 px (14,884 patches)
# 1.02-1.54x faster per kind (JPEG 1.54x, shift 1.32x, rotation 1.26x; all 1.24x); at 64 px (3364)
# 0.90-1.06x (all 0.98x): there the order and the matrix's permutation (0.05 s; 0.4 s at 128 px) cost
# what the auction gains. Whole process at 128 px: benchmarks/results/big_iwd_block_order*.md.
BLOCK_ORDER_PATCHES = 8000
# Where identical patches among those left (within x or within y) make at most this share of one
# image's patches distinct (a dark photo's JPEG copy: flat blocks of one value), the problem is solved
# as a transport onto the distinct patches (_plan_of_copies). nips17 photo 625 against its JPEG copy at
# 128 px (7,609 distinct of 14,884): every row had 2,939 tight edges among the copies, 65 among the
# distinct patches.
DISTINCT_SHARE = 0.75
# Up to this many patches per image IWD is exact by default (a 128 x 128 image at stride 1 has 14884,
# a 2.1 GB float64 cost matrix at the limit); past it `iwd` returns the estimate and says so.
EXACT_LIMIT = 16384
# Exact IWD holds a dense float64 cost matrix; larger ones are refused (8 GB: 32768 patches).
EXACT_MEMORY_BYTES = 8 * 2**30
# The estimate keeps its float32 cost matrix when it takes at most this many bytes (a 224 x 224 image
# at stride 1: 47,524 patches, 9 GB), else it recomputes cost blocks in every pass.
STORED_COST_BYTES = 12 * 2**30
# The estimate stops once its bound is this narrow (relative width): the matching's rounds, or without
# them the Sinkhorn bracket, for at most MAX_PASSES.
ESTIMATE_TOLERANCE = 1e-3
MAX_PASSES = 150
# Epsilon's floor, relative to the mean nearest-patch cost. Below a tenth of that cost epsilon falls by
# x0.9 per pass instead of x0.7 (224 px, stride 4, scratch runs: photo 600's shifted pair -0.53% ->
# -0.16%, bound 16% -> 4.7%; flat photo 601's shifted, re-arranged and JPEG pairs -3.97% -> -3.44%,
# -4.56% -> -4.02%, -1.4e-3 -> -5.6e-4; noise and JPEG pairs of 600: 30 passes instead of 25, errors
# under 2e-6). x0.9 from the start (GeomLoss-like) did better on moved pairs (601 shift -1.9%) but took
# easy pairs 2.5x longer; the old floor, 1e-6, left the potentials stuck at small epsilon.
ESTIMATE_FLOOR = 1e-3
# The estimate's matching (_seeded_matching), tried once epsilon falls below the mean nearest-patch cost
# (10-13 passes), starts from a graph of the CANDIDATES smallest reduced costs of every row and column;
# each pricing round adds as many for every row and column that breaks the duals, until the bound meets
# the estimate's tolerance, for at most MATCHING_ROUNDS rounds. 224 px, stride 4, nips17 photo 601 (scratch
# runs, 16 candidates, to no broken row): the matching's float64 cost equal to IWD on every kind (within
# 4e-12), 2.2-3.1 s on 2 CPU cores, where the Sinkhorn bracket's lower end after 150 passes (50-60 s)
# was up to 4.0% below it. Tried at a tenth of that cost (16-20 passes) or after 30 passes: the same
# values, 3.6-4.4 and 8.3-8.5 s. At stride 2 (12,100 patches), priced to the end, the re-arranged pair
# needed 20 rounds with 16 candidates, 13 with 32 and 8 with 64 (47, 51 and 61 s on the CPU) when only
# rows brought theirs, and 5 with 32 once columns did too.
CANDIDATES = 32
MATCHING_ROUNDS = 30
# The first AUCTION_ROUNDS pricing rounds, where more than AUCTION_SHARE of the rows and columns break
# the duals, re-solve the graph by the auction; the others by shortest paths.
AUCTION_ROUNDS = 2
AUCTION_SHARE = 0.01
# Added to the estimate's bound, in units of the largest cost: the float32 cost matrix and sums resolve
# the bracket's ends to a few units in the last place of the costs.
FLOAT32_ALLOWANCE = 8 * 2.0**-24


@dataclass(frozen=True)
class IWDValue:
    """An IWD value; `bound` is 0 when exact, else the estimate's relative error bound."""

    value: float
    exact: bool
    patches: int
    bound: float = 0.0


def analysis_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) at which IWD is computed: shorter side `size` unless already smaller."""
    if size <= 0 or min(height, width) <= size:
        return height, width
    scale = size / min(height, width)
    return (size, max(size, round(width * scale))) if height <= width else (max(size, round(height * scale)), size)


def analysis_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) resized for IWD (bilinear, antialiased) when the shorter side exceeds `size`."""
    import torch.nn.functional as F

    target = analysis_size(images.shape[-2], images.shape[-1], size)
    if target == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=target, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _antialiased_weights(source: int, target: int) -> np.ndarray:
    """(target, source) weights of torch's antialiased bilinear resize (align_corners=False): a
    triangle filter widened by the downscaling factor, normalised per output pixel."""
    scale = source / target
    support, inverse = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    weights = np.zeros((target, source))
    for index in range(target):
        center = scale * (index + 0.5)
        low, high = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), source)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(low, high) - center + 0.5) * inverse))
        weights[index, low:high] = taps / taps.sum() if taps.sum() != 0 else taps
    return weights


def resize_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W) float64 resized to `size` as analysis_view does (width first, then height), in
    [0, 1]; equal to torch's result up to rounding (tested to 1e-12)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    across = images @ _antialiased_weights(images.shape[-1], size[1]).T
    return np.clip(_antialiased_weights(images.shape[-2], size[0]) @ across, 0.0, 1.0)


def analysis_array(images: np.ndarray, size: int) -> np.ndarray:
    """analysis_view for NumPy arrays (..., 3, H, W) in float64."""
    return resize_array(images, analysis_size(images.shape[-2], images.shape[-1], size))


def patch_count(height: int, width: int, patch: int, stride: int) -> int:
    return ((height - patch) // stride + 1) * ((width - patch) // stride + 1)


def patches(image: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(3, H, W) -> (N, 3 k^2): every k x k patch at the given stride, flattened."""
    import torch.nn.functional as F

    return F.unfold(image[None], patch, stride=stride)[0].T.contiguous()


def patch_array(image: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """patches() for a NumPy array: the same patches in the same order (channel, row, column)."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (patch, patch), axis=(1, 2))[:, ::stride, ::stride]
    return np.ascontiguousarray(windows.transpose(1, 2, 0, 3, 4)).reshape(-1, image.shape[0] * patch * patch)


def _unshared(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Boolean masks of the patches left once identical patches of u and v are matched to each other,
    and each patch's group of identical patches."""
    # Identical patches project alike: with no projection of u among v's, no patch is shared.
    projected_u, projected_v = _projected(u), _projected(v)
    if not np.isin(projected_u, projected_v).any():
        return np.ones(len(u), dtype=bool), np.ones(len(v), dtype=bool), np.zeros(len(u), int), np.zeros(len(v), int)
    groups = _identical(np.concatenate([u, v]), np.concatenate([projected_u, projected_v]))
    group_u, group_v = groups[: len(u)], groups[len(u) :]
    count = int(groups.max()) + 1
    shared = np.minimum(np.bincount(group_u, minlength=count), np.bincount(group_v, minlength=count))
    keep_u, keep_v = _occurrence(group_u) >= shared[group_u], _occurrence(group_v) >= shared[group_v]
    return keep_u, keep_v, group_u, group_v


def _projected(points: np.ndarray) -> np.ndarray:
    """The points (rows) projected on one fixed direction: identical rows project bit-equal (each row
    summed alike)."""
    return (points * np.random.default_rng(0).random(points.shape[1])).sum(axis=1)


def _identical(points: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
    """Each point's group of identical points (rows), numbered from 0, from their projections
    (_projected, computed if not given): the projections group them (a sort of numbers, where sorting
    the rows took 36 ms of a 64 px pair's 55), checked row by row against a member of each group; only
    two different points with one projection send it to sorting the rows."""
    _, groups = np.unique(_projected(points) if projected is None else projected, return_inverse=True)
    representative = np.empty(int(groups.max()) + 1, dtype=np.int64)
    representative[groups] = np.arange(len(groups))  # any member of each group
    if not np.array_equal(points, points[representative[groups]]):
        _, groups = np.unique(points, axis=0, return_inverse=True)
    return groups.ravel()


def _paired_in_groups(groups_a: np.ndarray, groups_b: np.ndarray) -> np.ndarray:
    """For each element of a, the element of b it is paired with in its group: the k-th of a group in a
    with the k-th in b (both hold as many of each group)."""
    paired = np.empty(len(groups_a), dtype=np.int64)
    paired[np.argsort(groups_a, kind="stable")] = np.argsort(groups_b, kind="stable")
    return paired


def _occurrence(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its group (0 for the first)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(groups)) - first
    return rank


def _distinct(indices: np.ndarray) -> int:
    """How many different values a non-negative integer array holds (a count, not a sort)."""
    return int(np.count_nonzero(np.bincount(indices.ravel()))) if indices.size else 0


# The sparse route gives each patch of x its nearest patches of y as candidates: first this many,
# then, if some patch of y is nobody's candidate, the next number (one sweep finds both), and if one
# still is, the patches at the same place too.
SPARSE_CANDIDATES = (8, 16)
# It is tried when the nearest patches of at least this share of x's patches are distinct (patches that
# stayed in place); moved ones (shifts, rotations) crowd onto the same nearest patches.
SPARSE_DISTINCT_SHARE = 0.95
# Past this many patches, the same test on a half-size copy decides first whether the full sweep is
# worth it (about 0.3 s at 128 px, 0.03 s at 64 px; the probe a sixteenth of that): moved pairs crowd at
# both sizes.
SPARSE_PROBE_PATCHES = 2000
# The probe asks for this share: at half size nearest patches crowd less. Over 240 pairs at 128 px
# (nips17 photos 418-457; noise, Gaussian noise, JPEG, blur, shift, rotation), 33 passed the probe at
# 0.95 and failed the full test (a wasted sweep each), 15 of them with a probe share of 0.99 or more;
# the pairs that passed both with a probe share below 0.99 were three shifted ones, which then failed
# after their first solve (1.1-1.6 s: the dual certificate broken on nearly every row). At 64 px, the
# same 240 pairs: the 140 that the sparse route certified had probe shares of 0.996 or more; 82 of the
# 100 it did not were below 0.99.
SPARSE_PROBE_SHARE = 0.99
# Pricing sweeps that may add edges before the sparse route gives up (each about 0.4 s at 128 px, where
# the dense route takes 2-3 s): 80 noise, Gaussian noise, JPEG, PGD and blur pairs of nips17 photos 600-603,
# 700-707 and 950-953 needed at most 6; of 160 such pairs of photos 418-457 (no PGD), four needed 7 or 8
# (photo 448's JPEG, noise and Gaussian-noise pairs, 419's blurred one: 3.8-4.5 s by the dense route
# after 6 wasted rounds, 2.4-2.9 s with 12 allowed); every other one that reached the rounds was
# certified but photo 428's JPEG pair, which gave up on its share of broken rows (9%, then 11%).
SPARSE_PRICING_ROUNDS = 12
# It gives up at once when more than this share of rows violate its certificate. Where it went on
# to succeed (nips17 pairs of every kind, photos 600-605 and the six darkest), at most 3.6% did (9.3% on
# photos 418-457 at 128 px: photo 421's JPEG pair); on photos with a band slid over them
# (iwdctl.rearrange) 12-74% did, growing with every pricing round.
SPARSE_GIVE_UP_SHARE = 0.1
# Rows that float32 pricing cannot clear are priced exactly, over every column, up to this many: in flat
# regions (sky, blur) reduced costs sit within float32's error, and listing more rows' nearest patches
# never clears them (nips17 photo 601 blurred, 128 px: the dense route took 5-6 s, this 2 s).
EXACT_PRICING_ROWS = 256


def _exactly_priced(
    u: np.ndarray, v: np.ndarray, rows: np.ndarray, row_duals: np.ndarray, column_duals: np.ndarray
) -> np.ndarray:
    """Keys (row x N + column) of the entries that join the sparse graph from `rows`, priced exactly over
    every column: those whose reduced cost is negative, and each such row's SPARSE_CANDIDATES[-1]
    smallest reduced costs (the next rounds' violations, often)."""
    count = len(v)
    found = []
    for row in rows:
        reduced = pair_costs(u, v, np.full(count, row), np.arange(count)) - column_duals - row_duals[row]
        negative = np.flatnonzero(reduced < -1e-13)
        if len(negative):
            smallest = np.argpartition(reduced, min(SPARSE_CANDIDATES[-1], count - 1))[: SPARSE_CANDIDATES[-1]]
            found.append(row * count + np.union1d(negative, smallest))
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _window_sum_error(terms: int) -> float:
    """The largest error of a float32 window sum of `terms` absolute differences (row_nearest's):
    `terms` terms of at most 1, rounded from float64 inputs, so at most that many units of 2^-24 times
    the largest partial sum, `terms`."""
    return 2.0 * terms * terms * 2.0**-24


def _sparse_optimum(
    x: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, patch: int, threads: int
) -> np.ndarray | None:
    """The optimal matching found on a sparse graph of each patch's nearest patches, when a dual
    certificate proves it optimal for the whole cost matrix; else None (the dense route then).

    A sweep (no matrix) keeps each row's K nearest columns and b_i, a lower bound on its cost to any
    other column. Successive shortest paths solve the sparse problem exactly with exact costs,
    starting from column duals 0, which they only decrease. So an entry outside the graph has reduced
    cost c_ij - u_i - v_j >= b_i - u_i, and u_i <= b_i on every row makes the duals feasible for the
    whole matrix: the matching is optimal. Where that fails, a pricing sweep finds each row's smallest
    reduced costs under the duals; rows with a violated entry bring those into the graph, which is
    solved again from those duals, until no entry of the whole matrix violates them. Any edge added
    to the graph keeps the bound b_i valid: it holds for every entry outside the first K.
    """
    count, terms = u.shape
    if count > SPARSE_PROBE_PATCHES:
        half = (x.shape[-2] // 2, x.shape[-1] // 2)
        probe = row_nearest(resize_array(x, half), resize_array(y, half), patch, 1, threads)
        if probe is not None and _distinct(probe[1]) < SPARSE_PROBE_SHARE * len(probe[1]):
            return None
    nearest = row_nearest(x, y, patch, SPARSE_CANDIDATES[-1] + 1, threads)
    if nearest is None or _distinct(nearest[1][:, 0]) < SPARSE_DISTINCT_SHARE * count:
        return None
    sums, columns = nearest
    margin = _window_sum_error(terms)
    for candidates in SPARSE_CANDIDATES:
        graph = columns[:, :candidates]
        covered = _distinct(graph) == count
        if covered:
            break
    keys = np.arange(count).repeat(candidates) * count + graph.ravel()
    if not covered:
        # Some column is nobody's candidate: the patches at the same place join (a perfect matching). At
        # 128 px, 14 of 40 noise, Gaussian noise, JPEG, PGD and blur pairs of nips17 photos 700-707 (30
        # with distinct nearest patches) lacked one; 28 of the 40 are now certified here, 14 before.
        keys = sorted_unique(keys, np.arange(count) * (count + 1))
    column_duals, hint = np.zeros(count), graph[:, 0].copy()
    bounds = (sums[:, candidates].astype(np.float64) - margin) / terms
    for _ in range(SPARSE_PRICING_ROUNDS + 1):
        rows, graph_columns = keys // count, keys % count
        costs = pair_costs(u, v, rows, graph_columns)
        try:
            matched, column_duals = shortest_paths_finish(
                count, np.searchsorted(rows, np.arange(count + 1)), graph_columns, costs, column_duals, hint
            )
        except ValueError:  # no perfect matching within the graph
            return None
        row_duals = pair_costs(u, v, np.arange(count), matched) - column_duals[matched]
        # Column duals only fell from 0, so entries outside the first candidates have reduced cost at
        # least b_i - u_i.
        violations = row_duals > bounds - 1e-15
        if not violations.any():
            return matched
        if violations.mean() > SPARSE_GIVE_UP_SHARE:
            return None
        # Pricing: each row's smallest float32 values of sum_ij - d v_j. Their error adds the rounding of
        # d v_j and of the difference to the sums' margin.
        priced_sums, priced = row_nearest(x, y, patch, SPARSE_CANDIDATES[0] + 1, threads, column_duals * terms)
        error = margin + 2.0**-22 * terms * (float(np.abs(column_duals).max()) + 1.0)
        listed_rows, listed = np.arange(count).repeat(priced.shape[1]), priced.ravel()
        violated = pair_costs(u, v, listed_rows, listed) - column_duals[listed] - row_duals[listed_rows] < -1e-13
        # Rows whose unlisted entries may be violated too (the float32 sums cannot clear them): a few
        # are priced exactly over every column; more, and their whole lists join the graph.
        short = row_duals > (priced_sums[:, -1].astype(np.float64) - error) / terms - 1e-15
        # A row with a violated entry brings its whole list. With violated entries alone, 8 sweeps left
        # 128 px pairs such as photo 950's JPEG and PGD ones slower than the dense route (scratch runs);
        # with whole lists they were certified in 4-6.
        broken = np.zeros(count, dtype=bool)
        broken[listed_rows[violated]] = True
        joining, exactly = broken[listed_rows], np.empty(0, dtype=np.int64)
        if np.count_nonzero(short) <= EXACT_PRICING_ROWS:
            exactly = _exactly_priced(u, v, np.flatnonzero(short), row_duals, column_duals)
        else:
            joining |= short[listed_rows]
        if not joining.any() and not len(exactly):
            return matched
        grown = sorted_unique(keys, listed_rows[joining] * count + listed[joining], exactly)
        if len(grown) == len(keys):
            return None
        keys, hint = grown, matched
    return None


def optimal_matching(x: Any, y: Any, patch: int = 7, stride: int = 1, threads: int = 1) -> np.ndarray:
    """An optimal one-to-one matching of the patches of two analysis-size images (3, H, W): entry i is
    the patch of y matched to patch i of x. Identical patches are matched to each other first.
    x and y are tensors (on any device) or NumPy arrays."""
    return _matching(x, y, patch, stride, threads)[0]


def _on_accelerator(image: Any) -> bool:
    return hasattr(image, "detach") and image.device.type != "cpu"  # a torch tensor on a GPU


@dataclass(frozen=True)
class _PatchSets:
    """The float64 patches of two images and which of them are left once identical ones are matched."""

    xs: np.ndarray
    ys: np.ndarray
    u: np.ndarray
    v: np.ndarray
    keep_u: np.ndarray
    keep_v: np.ndarray
    groups_u: np.ndarray
    groups_v: np.ndarray


def _patch_sets(x: Any, y: Any, patch: int, stride: int) -> _PatchSets:
    xs, ys = as_array(x, np.float64), as_array(y, np.float64)
    u, v = patch_array(xs, patch, stride), patch_array(ys, patch, stride)
    return _PatchSets(xs, ys, u, v, *_unshared(u, v))


def _matching(
    x: Any, y: Any, patch: int, stride: int, threads: int, sets: _PatchSets | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """optimal_matching, with the float64 patches of x and y (NumPy) it was computed from; `sets`:
    _patch_sets(x, y, patch, stride) if already at hand."""
    sets = sets or _patch_sets(x, y, patch, stride)
    u, v, keep_u, keep_v = sets.u, sets.v, sets.keep_u, sets.keep_v
    matching = np.empty(len(u), dtype=np.int64)
    shared_u, shared_v = np.nonzero(~keep_u)[0], np.nonzero(~keep_v)[0]
    matching[shared_u] = shared_v[_paired_in_groups(sets.groups_u[shared_u], sets.groups_v[shared_v])]
    if keep_u.any():
        # Tensors on a GPU keep their device: the cost matrix is built there.
        pair = (x.detach().double(), y.detach().double()) if _on_accelerator(x) else (sets.xs, sets.ys)
        matching[keep_u] = np.nonzero(keep_v)[0][_assignment(*pair, u, v, keep_u, keep_v, patch, stride, threads)]
    return matching, u, v


def _matched_value(matching: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    # The value from the matched patches' costs summed directly, not from the matrix, as POT does.
    return float(np.abs(u - v[matching]).mean(axis=1).sum() / len(u))


def _assignment(
    x: Any,
    y: Any,
    u: np.ndarray,
    v: np.ndarray,
    keep_u: np.ndarray,
    keep_v: np.ndarray,
    patch: int,
    stride: int,
    threads: int,
) -> np.ndarray:
    """The optimal assignment of the kept patches of x to the kept patches of y (indices among them)."""
    if _on_accelerator(x):
        return _device_assignment(x, y, keep_u, keep_v, patch, stride)
    if keep_u.all() and stride == 1 and len(u) > SPARSE_CANDIDATES[-1]:
        columns = _sparse_optimum(x, y, u, v, patch, threads)
        if columns is not None:
            return columns

    rows = np.flatnonzero(keep_u)  # as many as y's kept patches
    # Where identical patches leave few unmatched (an image and a copy with a band moved:
    # iwdctl.rearrange), their costs are computed entry by entry, not by window sums over the whole matrix.
    direct = len(rows) <= DIRECT_COSTS_SHARE * len(u)
    if len(rows) > FLOAT32_ASSIGNMENT_SIZE:
        kept = np.flatnonzero(keep_v)
        groups_u, groups_v = _identical(u[rows]), _identical(v[kept])
        if min(groups_u.max(), groups_v.max()) + 1 <= DISTINCT_SHARE * len(rows):
            if groups_v.max() <= groups_u.max():
                return _plan_of_copies(x, y, u, v, rows, kept, groups_v, patch, stride, direct, threads)
            # The transposed problem (the cost is symmetric): y's patches onto x's copies.
            return np.argsort(_plan_of_copies(y, x, v, u, kept, rows, groups_u, patch, stride, direct, threads))
    # Large problems' solver sees y's kept patches in block order (similar ones side by side: tighter
    # block floors; assignment.block_order).
    order = block_order(v[keep_v]) if len(rows) > BLOCK_ORDER_PATCHES else np.arange(len(rows))
    columns = np.flatnonzero(keep_v)[order]

    def costs(dtype: type) -> np.ndarray:
        if direct:
            return pair_cost_matrix(u[rows], v[columns], threads, dtype)
        return cost_matrix(x, y, patch, stride, threads, dtype, rows, columns)

    if len(rows) > FLOAT32_ASSIGNMENT_SIZE:
        # Half the memory and memory traffic; the certificate and the final solve use exact costs.
        kept_u, kept_v = u[rows], v[columns]
        return order[
            min_cost_assignment_within(
                costs(np.float32),
                lambda edge_rows, edge_columns: pair_costs(kept_u, kept_v, edge_rows, edge_columns, threads),
                threads,
                lambda: costs(np.float64),
            )
        ]
    return order[min_cost_assignment(costs(np.float64), threads)]


def _plan_of_copies(
    x: Any,
    y: Any,
    u: np.ndarray,
    v: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    groups: np.ndarray,
    patch: int,
    stride: int,
    direct: bool,
    threads: int,
) -> np.ndarray:
    """_assignment of the patches u[rows] to v[columns] where `groups` (of identical patches among
    v[columns]) leave few distinct ones: the transport problem of the rows onto the distinct patches,
    each taking as many rows as it has copies (min_cost_assignment's `copies`), on its exact float64
    matrix. Each copy then takes one of its group's rows."""
    copies = np.bincount(groups)
    representative = np.empty(len(copies), dtype=np.int64)
    representative[groups] = np.arange(len(groups))
    order = block_order(v[columns[representative]]) if len(rows) > BLOCK_ORDER_PATCHES else np.arange(len(copies))
    distinct = columns[representative[order]]
    if direct:
        cost = pair_cost_matrix(u[rows], v[distinct], threads)
    else:
        cost = cost_matrix(x, y, patch, stride, threads, rows=rows, columns=distinct)
    return _paired_in_groups(order[min_cost_assignment(cost, threads, copies[order])], groups)


def _device_assignment(x: Any, y: Any, keep_u: np.ndarray, keep_v: np.ndarray, patch: int, stride: int) -> np.ndarray:
    """_assignment with the float64 cost matrix built by torch on x's device (a GPU): if its row minima
    fall in distinct columns they are the optimum (the dual v = 0 certifies it); otherwise the matrix
    goes to the CPU solver."""
    import torch

    x, y = torch.as_tensor(x), torch.as_tensor(y)
    matrix = cost_matrix_torch(x, y, patch, stride)
    if not keep_u.all():
        matrix = matrix[torch.from_numpy(keep_u).to(x.device)][:, torch.from_numpy(keep_v).to(x.device)]
    nearest = matrix.argmin(dim=1)
    if len(torch.unique(nearest)) == len(nearest):
        return nearest.cpu().numpy()
    return min_cost_assignment(matrix.cpu().numpy())


def exact_iwd(x: Any, y: Any, patch: int = 7, stride: int = 1, threads: int = 1) -> float:
    """Exact IWD of two analysis-size images (3, H, W) (tensors or NumPy arrays), in float64.
    `threads` split the cost matrix."""
    return _matched_value(*_matching(x, y, patch, stride, threads))


def iwd_lower_bound(x: Any, y: Any, patch: int = 7) -> float:
    """A lower bound of exact_iwd(x, y, patch) from one sweep (no matrix, no assignment): every patch
    is matched at least as dearly as its nearest patch on the other side, so the mean of those
    nearest costs, the larger of the two sides, bounds IWD from below. 0.0 without numba. Where
    identical patches leave at most DIRECT_COSTS_SHARE of them unmatched (an image against a copy
    with a band moved: iwdctl.rearrange), the exact value, which costs no more there (64 px: 13-50 ms
    against the sweeps' 50-90 ms)."""
    x, y = as_array(x, np.float64), as_array(y, np.float64)
    if x.shape == y.shape and (sets := _patch_sets(x, y, patch, 1)).keep_u.mean() <= DIRECT_COSTS_SHARE:
        return _matched_value(*_matching(x, y, patch, 1, 1, sets))
    terms = x.shape[0] * patch * patch
    margin = _window_sum_error(terms)
    bound = 0.0
    for source, other in ((x, y), (y, x)):
        nearest = row_nearest(source, other, patch, 1)
        if nearest is None:
            return 0.0
        sums = np.maximum(nearest[0][:, 0].astype(np.float64) - margin, 0.0)
        bound = max(bound, float(sums.mean()) / terms)
    return bound


# ----- the estimate: Sinkhorn potentials, then a priced matching ------------------------------------


class _CostRows:
    """Row blocks of the float32 cost matrix on the device: stored once when it fits, else recomputed."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, block: int) -> None:
        import torch

        self.u, self.v, self.block = u, v, block
        self.count = len(u)
        self.stored: torch.Tensor | None = None
        if self.count * self.count * 4 <= STORED_COST_BYTES and self._fits(u.device):
            self.stored = torch.cat([self._compute(start) for start in range(0, self.count, block)])

    def _fits(self, device: torch.device) -> bool:
        import torch

        if device.type != "cuda":
            return self.count <= EXACT_LIMIT  # at most 1 GB on a CPU
        free, _ = torch.cuda.mem_get_info(device)
        return self.count * self.count * 4 < 0.5 * free

    def _compute(self, start: int) -> torch.Tensor:
        import torch

        return torch.cdist(self.u[start : start + self.block], self.v, p=1).div_(self.u.shape[1])

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.count, self.block):
            rows = self.stored[start : start + self.block] if self.stored is not None else self._compute(start)
            yield start, rows


def _sinkhorn_pass(cost: _CostRows, f: torch.Tensor, g: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One row update then one column update of the potentials (uniform weights, log domain)."""
    import torch

    log_n = math.log(cost.count)
    new_f = torch.empty_like(f)
    for start, rows in cost:
        new_f[start : start + len(rows)] = -eps * torch.logsumexp((g[None, :] - rows) / eps, dim=1) + eps * log_n
    column_max = torch.full_like(g, -math.inf)
    column_sum = torch.zeros_like(g)
    for start, rows in cost:
        scores = (new_f[start : start + len(rows), None] - rows) / eps
        block_max = scores.amax(dim=0)
        peak = torch.maximum(column_max, block_max)
        column_sum = column_sum * torch.exp(column_max - peak) + torch.exp(scores - peak).sum(dim=0)
        column_max = peak
    new_g = -eps * (column_max + torch.log(column_sum)) + eps * log_n
    return new_f, new_g


def _bracket(cost: _CostRows, f: torch.Tensor, g: torch.Tensor, eps: float) -> tuple[float, float]:
    """A lower bound (dual of the c-transform) and an upper bound (cost of the rounded plan) on IWD."""
    import torch

    count = cost.count
    target = 1.0 / count
    # Lower bound: f~_i = min_j (C_ij - g_j) makes (f~, g) feasible; its dual value is <= IWD.
    transformed = torch.empty_like(f)
    for start, rows in cost:
        transformed[start : start + len(rows)] = (rows - g[None, :]).amin(dim=1)
    lower = float(transformed.double().mean() + g.double().mean())

    def plan(start: int, rows: torch.Tensor) -> torch.Tensor:
        return torch.exp((f[start : start + len(rows), None] + g[None, :] - rows) / eps) * (target * target)

    # Rounding: scale rows down to at most their mass, then columns, then spread the missing mass.
    row_scale = torch.empty_like(f)
    for start, rows in cost:
        row_scale[start : start + len(rows)] = (target / plan(start, rows).sum(dim=1)).clamp(max=1.0)
    column_mass = torch.zeros_like(g)
    for start, rows in cost:
        column_mass += (plan(start, rows) * row_scale[start : start + len(rows), None]).sum(dim=0)
    column_scale = (target / column_mass).clamp(max=1.0)
    row_mass = torch.empty_like(f)
    column_mass = torch.zeros_like(g)
    plan_cost = torch.zeros((), dtype=torch.float64, device=f.device)
    for start, rows in cost:
        scaled = plan(start, rows) * row_scale[start : start + len(rows), None] * column_scale[None, :]
        row_mass[start : start + len(rows)] = scaled.sum(dim=1)
        column_mass += scaled.sum(dim=0)
        plan_cost += (scaled * rows).sum(dtype=torch.float64)
    missing_rows = (target - row_mass).clamp(min=0)
    missing_columns = (target - column_mass).clamp(min=0)
    missing = float(missing_rows.double().sum())
    correction = torch.zeros((), dtype=torch.float64, device=f.device)
    if missing > 0:
        for start, rows in cost:
            weights = missing_rows[start : start + len(rows), None] * missing_columns[None, :]
            correction += (weights * rows).sum(dtype=torch.float64)
        correction /= missing
    upper = float(plan_cost + correction)
    return lower, max(upper, lower)


def _candidates(
    cost: _CostRows, prices: torch.Tensor, k: int, row_duals: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """One pass over the matrix under column prices p (float64): per row, the smallest C_ij + p_j
    (float64, from the float32 entry) and the k columns with the smallest C_ij + p_j and their costs;
    per column, the k rows with the smallest reduced cost C_ij + p_j - u_i (u: `row_duals`, by default
    each row's smallest C_ij + p_j) and their costs ((k, n) each); and the diagonal C_ii."""
    import torch

    count, k = cost.count, min(k, cost.count)
    shift = prices.min()
    ranking = (prices - shift).float()  # ranks in float32: the matrix's own precision
    offsets = None if row_duals is None else (row_duals - shift).float()
    smallest = torch.empty(count, dtype=torch.float64, device=prices.device)
    row_columns = torch.empty((count, k), dtype=torch.int64, device=prices.device)
    row_costs = torch.empty((count, k), device=prices.device)
    best_reduced = best_rows = best_costs = None
    diagonal = torch.empty(count, device=prices.device)
    for start, rows in cost:
        scores = rows + ranking[None, :]
        values, columns = scores.topk(k, dim=1, largest=False)
        stop = start + len(rows)
        row_columns[start:stop] = columns
        row_costs[start:stop] = rows.gather(1, columns)
        smallest[start:stop] = row_costs[start:stop, 0].double() + prices[columns[:, 0]]
        diagonal[start:stop] = rows.diagonal(offset=start)
        row_offsets = values[:, :1] if offsets is None else offsets[start:stop, None]
        reduced, positions = (scores - row_offsets).topk(min(k, len(rows)), dim=0, largest=False)
        block_rows, block_costs = positions + start, rows.gather(0, positions)
        if best_reduced is not None:
            reduced = torch.cat([best_reduced, reduced])
            block_rows = torch.cat([best_rows, block_rows])
            block_costs = torch.cat([best_costs, block_costs])
            reduced, kept = reduced.topk(k, dim=0, largest=False)
            block_rows, block_costs = block_rows.gather(0, kept), block_costs.gather(0, kept)
        best_reduced, best_rows, best_costs = reduced, block_rows, block_costs
    return smallest, row_columns, row_costs, best_rows, best_costs, diagonal


def _seeded_matching(cost: _CostRows, g: torch.Tensor, eps: float, tolerance: float) -> tuple[np.ndarray, float] | None:
    """A perfect matching of the rows to the columns (columns[row]) and a dual lower bound on IWD, from
    Sinkhorn's column potential g, or None where numba is absent or the auction runs out of bids.

    Prices p = -g single out the CANDIDATES smallest reduced costs of every row and column; with the
    diagonal (patches at the same place: a perfect matching, which those candidates alone lacked on a
    JPEG pair, 2995 of 3025 rows matched at most) they form a sparse graph, which the forward auction
    (assignment.graph_auction, started at Sinkhorn's epsilon) matches, and whose optimum and duals v
    follow as in the exact route (assignment.graph_optimum). A pass over the whole matrix gives the
    dual bound mean_i min_j (C_ij - v_j) + mean v, and the rows and columns with an entry of negative
    reduced cost C_ij - u_i - v_j (u_i: row i's matched entry less its column's dual) bring their
    CANDIDATES smallest into the graph, which is solved again (pricing), until the matching's cost is
    within `tolerance` of the dual bound (relative), or for at most MATCHING_ROUNDS rounds; each
    round's optimum costs no more than the last. When no entry breaks the duals, the matching is
    optimal for the float32 matrix and the dual bound its cost."""
    if graph_auction is None:
        return None
    import torch

    count = cost.count
    _, row_columns, row_costs, column_rows, column_costs, diagonal = _candidates(cost, (-g).double(), CANDIDATES)
    indices = torch.arange(count, device=g.device)
    row_keys = indices[:, None] * count + row_columns
    column_keys = column_rows * count + indices[None, :]
    keys = torch.cat([row_keys.flatten(), column_keys.flatten(), indices * (count + 1)]).cpu().numpy()
    edge_costs = torch.cat([row_costs.flatten(), column_costs.flatten(), diagonal]).double().cpu().numpy()
    keys, first = np.unique(keys, return_index=True)
    edge_costs = edge_costs[first]
    rows, columns = keys // count, keys % count
    indptr = np.searchsorted(rows, np.arange(count + 1))
    eps_end = FINAL_TOTAL_GAP / count
    jump = float(edge_costs.max() - edge_costs.min()) + 1.0
    bids = GRAPH_BIDS_PER_ROW * count

    def auctioned(assigned: np.ndarray, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The current graph's optimum and duals: the auction from this start, then graph_optimum."""
        assigned, prices, complete = graph_auction(
            count,
            indptr,
            columns,
            edge_costs,
            assigned,
            prices,
            max(eps, eps_end),
            eps_end,
            SCALING,
            jump,
            bids,
            None,
        )
        return graph_optimum(rows, columns, edge_costs, assigned, prices) if complete else None

    found = auctioned(np.full(count, -1, dtype=np.int64), (-g).double().cpu().numpy())
    if found is None:
        return None
    matched, duals = found
    lower = -math.inf
    for round_ in range(MATCHING_ROUNDS):
        matched_costs = edge_costs[np.searchsorted(keys, np.arange(count) * count + matched)]
        row_duals = matched_costs - duals[matched]
        smallest, row_columns, row_costs, column_rows, column_costs, _ = _candidates(
            cost, torch.from_numpy(-duals).to(g.device), CANDIDATES, torch.from_numpy(row_duals).to(g.device)
        )
        row_minima = smallest.cpu().numpy()  # min_j (C_ij - v_j)
        lower = max(lower, float(row_minima.mean() + duals.mean()))
        # Rows with an entry below their dual, and columns with one below theirs (a column priced too
        # low draws many rows: its own candidates settle it in fewer rounds).
        violated_rows = np.flatnonzero(row_minima < row_duals - 1e-12)
        column_rows, column_costs = column_rows.cpu().numpy(), column_costs.double().cpu().numpy()
        violated_columns = np.flatnonzero(column_costs[0] - duals - row_duals[column_rows[0]] < -1e-12)
        close = matched_costs.mean() - lower <= tolerance * lower
        if len(violated_rows) + len(violated_columns) == 0 or close or round_ == MATCHING_ROUNDS - 1:
            break
        new_keys = np.concatenate(
            [
                (violated_rows[:, None] * count + row_columns.cpu().numpy()[violated_rows]).ravel(),
                (column_rows[:, violated_columns] * count + violated_columns[None, :]).ravel(),
            ]
        )
        new_costs = np.concatenate(
            [row_costs.double().cpu().numpy()[violated_rows].ravel(), column_costs[:, violated_columns].ravel()]
        )
        keys, first = np.unique(np.concatenate([keys, new_keys]), return_index=True)
        edge_costs = np.concatenate([edge_costs, new_costs])[first]
        rows, columns = keys // count, keys % count
        indptr = np.searchsorted(rows, np.arange(count + 1))
        # Successive shortest paths from the last optimum and its duals change them least (re-solving
        # with the auction moved the duals each round: the re-arranged pair at stride 2 still had 80
        # rows breaking them after 30 rounds, 5 rounds this way), but they search once per row that
        # lost its column: 75 s in the first round at stride 1 (47,524 patches). So the first rounds,
        # where many rows break the duals, are re-solved by the auction from the last prices, and the
        # rest by shortest paths (auction rounds alone cycled on a thin graph without closing the gap).
        many = round_ < AUCTION_ROUNDS and len(violated_rows) + len(violated_columns) > AUCTION_SHARE * count
        found = auctioned(matched, -duals) if many else None
        if found is None:
            found = shortest_paths_finish(count, indptr, columns, edge_costs, duals, matched)
        matched, duals = found
    return matched, lower


def estimate_iwd(
    x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1, tolerance: float = ESTIMATE_TOLERANCE
) -> tuple[float, float]:
    """Estimate of IWD on x's device and its relative error bound (see the module docstring):
    |estimate - IWD| <= bound x IWD.

    Epsilon falls geometrically (x0.7 per pass, x0.9 below a tenth of the mean nearest-patch cost) from
    the largest cost to ESTIMATE_FLOOR of that cost. Once it is below the mean nearest-patch cost, the
    potentials seed a matching (_seeded_matching), whose cost in float64 is returned, with its gap to
    the matching's dual bound as the bound. Without one (no numba, or its auction ran out of bids) the
    passes go on, the Sinkhorn bracket is checked every 5 passes below a tenth of that cost, and its
    lower end returned once its relative width is below `tolerance`, or after MAX_PASSES: percents
    below IWD for shifted, rotated or re-arranged pairs of flat photos, whose plans converge slowly at
    small epsilon. The bound includes FLOAT32_ALLOWANCE x the largest cost.
    """
    import torch

    u = patches(x.float(), patch, stride)
    v = patches(y.float(), patch, stride)
    block = max(1, min(len(u), (64 * 2**20) // (4 * len(v))))  # about 64 MB of scores per block
    cost = _CostRows(u, v, block)
    largest, nearest = 0.0, 0.0
    for _, rows in cost:
        largest = max(largest, float(rows.max()))
        nearest += float(rows.amin(dim=1).double().sum())
    if largest == 0.0:
        return 0.0, 0.0
    nearest /= cost.count
    floor = max(ESTIMATE_FLOOR * nearest, 1e-9 * largest)
    fine = 0.1 * nearest  # below it epsilon falls slower and the bracket is checked
    f = torch.zeros(len(u), device=u.device)
    g = torch.zeros(len(v), device=u.device)
    eps = largest
    # Every check's bracket is valid, so the estimate keeps the best ends seen: at small epsilon the
    # rounded plan of a moved pair can be worse than an earlier one.
    lower, upper = 0.0, math.inf
    matching = graph_auction is not None
    for iteration in range(1, MAX_PASSES + 1):
        f, g = _sinkhorn_pass(cost, f, g, eps)
        eps = max(floor, eps * (0.7 if eps >= fine else 0.9))
        if matching and eps < max(nearest, ESTIMATE_FLOOR * largest):  # the latter where patches repeat
            found = _seeded_matching(cost, g, eps, tolerance)
            if found is not None:
                # The matching's own cost in float64: an upper bound on IWD, the float32 one's rounding undone.
                columns, lower = found
                lower = max(lower, nearest)  # each patch's nearest cost bounds its matched one from below
                matched = torch.from_numpy(columns).to(u.device)
                value = float(
                    (patches(x.double(), patch, stride) - patches(y.double(), patch, stride)[matched]).abs().mean()
                )
                if value == 0.0:
                    return 0.0, 0.0  # a matching of zero cost: IWD is 0 exactly (costs are not negative)
                return value, (max(value - lower, 0.0) + FLOAT32_ALLOWANCE * largest) / max(lower, 1e-300)
            matching = False  # the bracket's passes go on
        if eps < fine and (iteration % 5 == 0 or iteration == MAX_PASSES):
            checked_lower, checked_upper = _bracket(cost, f, g, eps)
            lower, upper = max(lower, checked_lower), min(upper, checked_upper)
            if upper - lower <= tolerance * max(lower, 1e-12):
                break
    return lower, (upper - lower + FLOAT32_ALLOWANCE * largest) / max(lower, 1e-300)


def check_pair(x: Any, y: Any, patch: int, size: int = 0) -> None:
    """InputError unless x and y have one shape and their analysis view at `size` holds a patch."""
    if x.shape != y.shape:
        raise InputError(f"images differ in size: {tuple(x.shape[-2:])} and {tuple(y.shape[-2:])} (use --resize)")
    view = analysis_size(x.shape[-2], x.shape[-1], size)
    if min(view) < patch:
        at = f" at analysis size {size} ({view[0]}x{view[1]})" if view != tuple(x.shape[-2:]) else ""
        raise InputError(f"image of size {tuple(x.shape[-2:])}{at} is smaller than a {patch}x{patch} patch")


def iwd_pair(
    x: Any,
    y: Any,
    patch: int = 7,
    stride: int = 1,
    size: int = 64,
    approx: bool | None = None,
    device: str | torch.device | None = None,
    threads: int = 1,
) -> IWDValue:
    """IWD of one pair (3, H, W), tensors or NumPy arrays, at full resolution; `approx` None: exact up
    to EXACT_LIMIT patches.

    On a GPU `device` (default: CUDA when present) holds the estimate's cost blocks. The
    exact value is computed from NumPy arrays on the CPU wherever the numba kernels are present: on an
    H200 host that route took 1.0-1.3 s per 64 px pair and the matrix built on the GPU 3.2-4.0 s
    (`benchmarks/results/measure_speed_cuda.md`); without them the GPU builds the matrix.
    """
    check_pair(x, y, patch, size)
    target = device_name(None if device is None else str(device))
    count = patch_count(*analysis_size(x.shape[-2], x.shape[-1], size), patch, stride)
    exact = count <= EXACT_LIMIT if approx is None else not approx
    if exact and count * count * 8 > EXACT_MEMORY_BYTES:
        raise InputError(
            f"{count} patches per image need a {count}x{count} cost matrix: too large for exact IWD; "
            "raise --stride, lower --size or use --approx"
        )
    # Resized in float64, so that the value does not depend on the input's precision.
    if exact and (target == "cpu" or auction is not None):
        pair = analysis_array(np.stack([as_array(x, np.float64), as_array(y, np.float64)]), size)
        return IWDValue(exact_iwd(pair[0], pair[1], patch, stride, threads), True, count)
    import torch

    views = analysis_view(torch.stack([torch.as_tensor(x), torch.as_tensor(y)]).to(target, torch.float64), size)
    if exact:
        return IWDValue(exact_iwd(views[0], views[1], patch, stride, threads), True, count)
    value, bound = estimate_iwd(views[0], views[1], patch, stride)
    return IWDValue(value, False, count, bound)


def iwd(
    x: torch.Tensor,
    y: torch.Tensor,
    patch: int = 7,
    stride: int = 1,
    size: int = 64,
    approx: bool | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """IWD between images x and y: (3, H, W) or batches (N, 3, H, W) in [0, 1]; float64 values on the CPU.

    Exact by default. `approx=True` forces the estimate; `approx=None` uses it only past
    EXACT_LIMIT patches per image, with a warning, since an approximation is never silent.
    """
    import torch

    batch_x, batch_y = (x[None], y[None]) if x.dim() == 3 else (x, y)
    if batch_x.shape != batch_y.shape:
        raise InputError(f"x and y differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    results = [iwd_pair(a, b, patch, stride, size, approx, device) for a, b in zip(batch_x, batch_y)]
    if approx is None and not all(result.exact for result in results):
        warnings.warn("IWD past the exact-size limit: estimate returned (estimate_iwd gives its bound)", stacklevel=2)
    values = torch.tensor([result.value for result in results], dtype=torch.float64)
    return values[0] if x.dim() == 3 else values
