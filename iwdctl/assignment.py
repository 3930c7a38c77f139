"""Exact minimum-cost perfect matching of a dense square cost matrix, fast where it matters for IWD.

IWD's assignment problems are hard for augmenting-path solvers: pairs whose patches moved (shifts,
rotations, re-arrangements) have thousands of near-tied candidates per patch, and SciPy's
`linear_sum_assignment` takes 1-30 s on 64 x 64 images where the perturbation kinds of attacks take
0.05 s. Sparse candidate graphs do not help: the optimal plan of such pairs uses edges outside even
the 128 nearest neighbours of both endpoints (benchmarks/measure_speed.py records the search).

What works is Bertsekas' auction algorithm with epsilon scaling, which prices contested columns
globally: it ends with an assignment s and prices p. With u_i = min_j (c_ij + p_j) and v = -p,
(u, v) is dual feasible, and every optimal assignment s* satisfies, edge by edge,
c_ij - u_i - v_j <= sum over s* of (c - u - v) = OPT - D <= cost(s) - D = gap. So the graph of the
edges whose reduced cost is at most `gap` contains every optimal assignment, and the auction's own;
in practice it has 1-4 edges per row. Solving that sparse problem exactly (successive shortest
paths, warm-started from the auction's prices) gives the exact optimum of the dense problem. The
auction's tolerance only decides how small that graph is, never the result.

Degenerate problems need one more step: where a dark image meets its noisy copy (noise clipped at
0), whole blocks of entries tie exactly (c_ij = a_i + b_j) and the tight graph has hundreds of edges
per row, where the finishing searches explore every tied column. There the auction's own assignment
is (in every pair measured) already optimal: shortest paths over the tight graph turn its prices into
exact duals that prove it, in milliseconds. Where they cannot (the assignment is not optimal), the
searches finish, or POT's network simplex when the tight graph is that dense.

Identical columns (a dark image's JPEG copy: thousands of copies of one flat patch) make every row's
tight edges thousands too, one per copy. min_cost_assignment takes them as one column with its
number of copies (`copies`): a transport problem with unit rows, solved as the assignment problem of
the copies without listing them. The auction keeps each column's copy prices in a heap and bids for
its cheapest copy; the repair and the graph auction move rows between columns, each keeping its
number of rows; duals and certificate are those of the columns.

The kernels are compiled with numba and release the GIL, so pairs run in parallel threads. Without
numba (an environment that lacks it) the dense problem goes to SciPy's solver: exact, but slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from iwdctl.kernels import kernel

# Epsilon scaling: from max cost / 32 down to 1e-4 / n, dividing by 8 per phase. At 128 px the price
# wars of flat photos' pairs made 16 (tuned at 64 px) slow: auction 14.5 -> 10.4 s (nips17 photo 602,
# shift), 17.2 -> 12.1 s (820, JPEG), 3.0 -> 2.7 s (602, JPEG); on photo 600's shift, rotation and noise
# pairs within +-0.1 s (4: as fast on the hard pairs, up to 1.5x slower on those). At 64 px, over the
# 24 measure_speed pairs of photos 600, 602 and 820: 5.1 -> 4.7 s, 2.20M -> 2.03M bids.
# Below 1e-4 / n (3e-8 at 64 px) the last phase resolves float32 rounding and near-ties that the exact
# finish settles anyway: 1e-5 took 3-56% longer per pair (re-arranged 3%, shift 5%, noise 56%; darkest
# photos' noise 36%).
START_DIVISOR = 32.0
FINAL_TOTAL_GAP = 1e-4
SCALING = 8.0
# Past this many tight edges per row (near-degenerate problems: dark images against JPEG or noisy
# copies) the shortest-path finish costs more than the network simplex on the whole matrix (measured:
# 150 per row, 4.0 s against 1.8 s; 56 per row, 0.7 s against 3.8 s).
SIMPLEX_EDGES_PER_ROW = 100
# Up to this many patches (a 200 MB float64 matrix) the float32 route finishes a tight graph that dense
# on the exact matrix: ties make most entries suspects of its pricing, each recomputed alone.
EXACT_MATRIX_SIZE = 5000
# The dual repair (_certified_optimum) ignores improvements below REPAIR_TOLERANCE (rounding: zero-cost
# cycles of tied entries would otherwise cycle), gives up past REPAIR_SCANS_PER_COLUMN column scans
# per column, and accepts the duals when no entry's reduced cost is below -CERTIFICATE_TOLERANCE (costs
# lie in [0, 1]; measured violations on accepted matchings are at most 1.7e-16).
REPAIR_TOLERANCE = 1e-15
REPAIR_SCANS_PER_COLUMN = 20
CERTIFICATE_TOLERANCE = 1e-13
# Where the repair gives up, the auction goes on over the tight graph to this total gap (2e-5 left
# nips17 photo 820's float32 JPEG pair at 128 px unrepaired; 1e-5 and 5e-6 repaired it in 0.75 and
# 0.2 s), stopping past GRAPH_BIDS_PER_ROW bids per row (it took 36). Where the repair still gives up,
# the gap shrinks REFINED_GAP_DIVISOR-fold per round down to SMALLEST_REFINED_TOTAL_GAP: photo 940's
# float32 JPEG pair at 128 px (250 tight edges per row) was repaired at 2.5e-7 in 1.8 s, where the
# shortest-path finish took 44 s.
REFINED_TOTAL_GAP = 5e-6
REFINED_GAP_DIVISOR = 20.0
SMALLEST_REFINED_TOTAL_GAP = 1e-9
GRAPH_BIDS_PER_ROW = 1000
# Columns each row keeps from its last full scan (8 halved the scans on shifted and rotated pairs).
CACHED_CANDIDATES = 8
# Columns per block of a full scan's vectorised test (a compile-time constant). The test is written out
# in each kernel: moved into a called function, numba did not vectorise it.
SCAN_BLOCK = 64
# Bids between refreshes of the auction's per-block price minima (stale ones stay lower bounds).
PRICE_FLOOR_REFRESH = 1024
# A block's floors skip it in edges_below only when they clear the threshold by this much: far above
# the rounding of the test (costs in [0, 1], duals of their order).
FLOOR_MARGIN = 1e-9


def _insert_smallest(values, prices, start, stop, worst, top_values, top_columns):  # type: ignore[no-untyped-def]
    """Insert the columns in [start, stop) whose value c_j + p_j is below `worst` into the sorted
    top_values / top_columns (which keep the smallest); returns the new threshold, the largest kept."""
    width = len(top_values) - 1
    for column in range(start, stop):
        value = values[column] + prices[column]
        if value < worst:
            position = width
            while position > 0 and top_values[position - 1] > value:
                top_values[position] = top_values[position - 1]
                top_columns[position] = top_columns[position - 1]
                position -= 1
            top_values[position] = value
            top_columns[position] = column
            worst = min(worst, top_values[width])
    return worst


def _copies(offsets, column):  # type: ignore[no-untyped-def]
    """The range of `column`'s copies: offsets[column]:offsets[column + 1], or column alone where
    `offsets` is None (an assignment problem: numba compiles the branch away)."""
    if offsets is None:
        return column, column + 1
    return offsets[column], offsets[column + 1]


def _award(row, column, increment, prices, offsets, copy_prices, copy_owner, seat, assigned, waiting, top):  # type: ignore[no-untyped-def]
    """An auction's bid: `row` takes the cheapest copy of `column` (a class of identical columns, its copies
    offsets[column]:offsets[column + 1], a binary heap by price), whose price rises by `increment`; the
    copy's previous owner, if any, goes back on the stack of waiting rows. prices[column] stays the
    class's smallest copy price; seat[row] is the heap position of the row's copy. Returns the stack's
    new size."""
    first, last = _copies_kernel(offsets, column)
    price = copy_prices[first] + increment
    previous = copy_owner[first]
    position = first
    while True:  # the raised copy sinks to its place in the heap
        child = 2 * position - first + 1
        if child >= last:
            break
        if child + 1 < last and copy_prices[child + 1] < copy_prices[child]:
            child += 1
        if copy_prices[child] >= price:
            break
        copy_prices[position] = copy_prices[child]
        copy_owner[position] = copy_owner[child]
        if copy_owner[position] >= 0:
            seat[copy_owner[position]] = position
        position = child
    copy_prices[position] = price
    copy_owner[position] = row
    seat[row] = position
    prices[column] = copy_prices[first]
    assigned[row] = column
    if previous >= 0:
        assigned[previous] = -1
        seat[previous] = -1
        waiting[top] = previous
        top += 1
    return top


def _runner_up(best, column, prices, offsets, copy_prices):  # type: ignore[no-untyped-def]
    """A bid's value for the second cheapest copy of its class `column` (best: the cheapest's), or inf
    for a class of one: a row's second best value counts it, so that each copy keeps epsilon-
    complementary slackness (bidding past it, against other classes only, made copies' prices scatter:
    photo 820's JPEG pair at 128 px took 25M bids, 1.6M with it)."""
    first, last = _copies_kernel(offsets, column)
    if last - first < 2:
        return np.inf
    runner = copy_prices[first + 1]
    if last - first > 2:
        runner = min(runner, copy_prices[first + 2])
    return best - prices[column] + runner


def _auction(cost, cost_floors, start_prices, eps_start, eps_end, scaling, offsets):  # type: ignore[no-untyped-def]
    """Gauss-Seidel forward auction for minimum cost, epsilon scaled, from `start_prices`; returns
    (columns, prices).

    Column j stands for offsets[j + 1] - offsets[j] identical columns (its copies; one each for an
    assignment problem): a transportation problem with unit rows, solved as the assignment problem of
    the copies, whose prices a heap per column keeps (_award). prices[j] is its cheapest copy's, which
    with v = -prices leaves the same gap bound as an assignment's.

    A bid needs the row's best and second-best value c_ij + p_j. Prices only rise (they carry over
    between phases), so after a full scan the row's CACHED_CANDIDATES smallest columns are kept with
    the next smallest value as a bound: no other column can fall below it later. A bid whose best
    two among the cached columns are within the bound is exact without a scan (most bids). The cached
    columns' costs are kept beside them: one contiguous read instead of one per column of a row that
    is no longer in cache (5-15% of the auction at 128 px).

    A full scan tests blocks of SCAN_BLOCK columns for any value below the current threshold (a loop
    the compiler vectorises) and inserts only from blocks that have one. The threshold starts at the
    largest current value of the cached columns and the bound's column: those are width + 1 values,
    so the width + 1 smallest are at most that. Scans do half the work (the same columns result).
    A block is skipped unread when its smallest cost (`cost_floors`, row by block) plus its smallest
    price is not below the threshold: prices only rise, so a price minimum taken a few bids ago
    (refreshed every PRICE_FLOOR_REFRESH bids) stays a lower bound. On 128 px pairs of nips17 photo
    601 this left 21-54% of the blocks to read and took the auction from 1.8-5.2 s to 0.8-4.2 s
    (noise, JPEG, shift, re-arranged, rotation), with the same columns and prices.
    """
    n = cost.shape[0]
    classes = cost.shape[1]
    width = min(CACHED_CANDIDATES, classes - 1) if classes > 1 else 0
    prices = start_prices.copy()
    copy_prices = np.empty(n)
    for column in range(classes):
        first, last = _copies_kernel(offsets, column)
        copy_prices[first:last] = prices[column]
    copy_owner = np.empty(n, dtype=np.int64)
    seat = np.empty(n, dtype=np.int64)
    assigned = np.empty(n, dtype=np.int64)
    waiting = np.empty(n, dtype=np.int64)
    cached = np.zeros((n, width + 1), dtype=np.int64)  # the last slot: the bound's column
    cached_costs = np.zeros((n, width + 1), dtype=cost.dtype)  # theirs: one read, not one per column
    bound = np.full(n, -np.inf)  # below any value: the first bid of every row scans
    top_values = np.empty(width + 1)
    top_columns = np.zeros(width + 1, dtype=np.int64)
    blocked = classes - classes % SCAN_BLOCK
    price_floors = np.zeros(blocked // SCAN_BLOCK)
    bids = 0
    eps = eps_start
    while True:
        copy_owner[:] = -1
        assigned[:] = -1
        for k in range(n):
            waiting[k] = n - 1 - k
        top = n
        while top > 0:
            if bids % PRICE_FLOOR_REFRESH == 0:
                for block in range(len(price_floors)):
                    smallest = prices[block * SCAN_BLOCK]
                    for column in range(block * SCAN_BLOCK + 1, (block + 1) * SCAN_BLOCK):
                        smallest = min(smallest, prices[column])
                    price_floors[block] = smallest
            bids += 1
            top -= 1
            row = waiting[top]
            values = cost[row]
            best = np.inf
            second = np.inf
            best_column = 0
            for slot in range(width):
                column = cached[row, slot]
                value = cached_costs[row, slot] + prices[column]
                if value < second:
                    if value < best:
                        second = best
                        best = value
                        best_column = column
                    else:
                        second = value
            if not second <= bound[row]:
                # A full scan, keeping the width + 1 smallest values in order.
                worst = np.inf
                if bound[row] > -np.inf:
                    worst = -np.inf
                    for slot in range(width + 1):
                        column = cached[row, slot]
                        worst = max(worst, cached_costs[row, slot] + prices[column])
                    worst = np.nextafter(worst, np.inf)  # the cached columns pass the strict test
                for slot in range(width + 1):
                    top_values[slot] = np.inf
                for block in range(0, blocked, SCAN_BLOCK):
                    if cost_floors[row, block // SCAN_BLOCK] + price_floors[block // SCAN_BLOCK] >= worst:
                        continue
                    below = False
                    for column in range(block, block + SCAN_BLOCK):
                        below |= values[column] + prices[column] < worst
                    if below:
                        worst = _insert_smallest_kernel(
                            values, prices, block, block + SCAN_BLOCK, worst, top_values, top_columns
                        )
                _insert_smallest_kernel(values, prices, blocked, classes, worst, top_values, top_columns)
                for slot in range(width + 1):
                    cached[row, slot] = top_columns[slot]
                    cached_costs[row, slot] = values[top_columns[slot]]
                bound[row] = top_values[width]
                best = top_values[0]
                best_column = top_columns[0]
                second = top_values[1] if width > 0 else best  # a 1 x 1 problem
            second = min(second, _runner_up_kernel(best, best_column, prices, offsets, copy_prices))
            increment = second - best + eps
            top = _award_kernel(
                row, best_column, increment, prices, offsets, copy_prices, copy_owner, seat, assigned, waiting, top
            )
        if eps <= eps_end:
            return assigned, prices
        eps = max(eps_end, eps / scaling)


def _block_floors(cost, start, stop, out, column_minima):  # type: ignore[no-untyped-def]
    """out[row, b] = the smallest entry of block b (SCAN_BLOCK columns) of each row in [start, stop),
    and column_minima lowered to the smallest entry of each column among those rows; returns the
    largest entry of those rows (all columns)."""
    n = cost.shape[1]
    blocked = n - n % SCAN_BLOCK
    high = -np.inf
    for row in range(start, stop):
        values = cost[row]
        for column in range(n):  # the row is in cache now; a loop of its own vectorises
            column_minima[column] = min(column_minima[column], values[column])
        for block in range(0, blocked, SCAN_BLOCK):
            smallest = values[block]
            largest = values[block]
            for column in range(block, block + SCAN_BLOCK):
                smallest = min(smallest, values[column])
                largest = max(largest, values[column])
            out[row, block // SCAN_BLOCK] = smallest
            high = max(high, largest)
        for column in range(blocked, n):
            high = max(high, values[column])
    return high


def _row_minima(cost, prices, floors, price_floors, start, stop, out):  # type: ignore[no-untyped-def]
    """out[row] = min_j (c_ij + p_j) for the rows in [start, stop). Blocks with no value below the
    smallest so far are skipped by a vectorised test (a plain minimum does not vectorise), unread
    where the block's cost floor plus its price floor shows it (`floors` of no rows: never)."""
    n = cost.shape[1]
    blocked = n - n % SCAN_BLOCK
    bounded = floors.shape[0] > 0
    for row in range(start, stop):
        values = cost[row]
        smallest = np.inf
        for block in range(0, blocked, SCAN_BLOCK):
            if bounded and floors[row, block // SCAN_BLOCK] + price_floors[block // SCAN_BLOCK] >= smallest:
                continue
            below = False
            for column in range(block, block + SCAN_BLOCK):
                below |= values[column] + prices[column] < smallest
            if below:
                for column in range(block, block + SCAN_BLOCK):
                    smallest = min(smallest, values[column] + prices[column])
        for column in range(blocked, n):
            smallest = min(smallest, values[column] + prices[column])
        out[row] = smallest


def _edges_below(cost, row_duals, column_duals, absolute, relative, floors, dual_floors, start, stop):  # type: ignore[no-untyped-def]
    """(rows, columns) of the entries with c_ij - u_i - v_j <= absolute + relative * c_ij, for the
    rows in [start, stop), row by row. A vectorised test skips the blocks that hold none, unread where
    the block's cost floor and its floor of -v_j show it by a margin far above rounding (`floors` of
    no rows: never; 0 <= relative < 1)."""
    n = cost.shape[1]
    blocked = n - n % SCAN_BLOCK
    bounded = floors.shape[0] > 0
    rows = np.empty(4 * (stop - start) + 16, dtype=np.int64)
    columns = np.empty_like(rows)
    count = 0
    for row in range(start, stop):
        values = cost[row]
        dual = row_duals[row]
        for block in range(0, blocked + SCAN_BLOCK, SCAN_BLOCK):
            end = min(block + SCAN_BLOCK, n)
            if block < blocked:
                if (
                    bounded
                    and (1.0 - relative) * floors[row, block // SCAN_BLOCK] + dual_floors[block // SCAN_BLOCK] - dual
                    > absolute + FLOOR_MARGIN
                ):
                    continue
                # The test reads the block through slices: indexed as values[column], numba compiled it to
                # gathers, a pass 2-3.5x slower (128 px: 0.32-0.35 s against 0.10-0.11 s on one thread).
                found = False
                block_values = values[block : block + SCAN_BLOCK]
                block_duals = column_duals[block : block + SCAN_BLOCK]
                for offset in range(SCAN_BLOCK):
                    value = block_values[offset]
                    found |= value - dual - block_duals[offset] <= absolute + relative * value
                if not found:
                    continue
            for column in range(block, end):
                if values[column] - dual - column_duals[column] <= absolute + relative * values[column]:
                    if count == len(rows):
                        rows = np.concatenate((rows, np.empty_like(rows)))
                        columns = np.concatenate((columns, np.empty_like(columns)))
                    rows[count] = row
                    columns[count] = column
                    count += 1
    return rows[:count].copy(), columns[:count].copy()


def _cancel_and_repair(count, indptr, indices, costs, matched, column_duals, tolerance, scans):  # type: ignore[no-untyped-def]
    """A matching of the sparse graph's rows (CSR) to its columns, each column taking as many rows as it
    was given (one in an assignment problem; a column of identical copies, several), that no negative
    cycle improves, from the given one, and column duals v proving it: with u_i = c_i,matched(i) -
    v_matched(i), c_ij - u_i - v_j >= -tolerance on every edge.

    The condition reads v_j <= v_k + (c_ij - c_ik), k the column matched to row i: shortest paths over
    the columns, found by a label-correcting queue (Bellman-Ford) from the given duals, a column's scan
    relaxing the edges of each of its rows. Every (number of columns) relaxations the tree of last
    relaxations is searched for a cycle; a cycle there has negative cost, and moving each of its rows to the next
    column lowers the matching's cost (each column keeps its number of rows). Returns (matched, v,
    True), or (matched, v, False) past `scans` row scans or where a row's matched edge is missing."""
    classes = len(column_duals)
    matched = matched.copy()
    v = column_duals.copy()
    own_edge = np.full(count, -1, dtype=np.int64)
    edge_row = np.empty(indptr[count], dtype=np.int64)
    # Each column's rows, a doubly linked list.
    head = np.full(classes, -1, dtype=np.int64)
    following = np.full(count, -1, dtype=np.int64)
    preceding = np.full(count, -1, dtype=np.int64)
    for row in range(count):
        _link_kernel(row, matched[row], head, following, preceding)
        for edge in range(indptr[row], indptr[row + 1]):
            edge_row[edge] = row
            if indices[edge] == matched[row]:
                own_edge[row] = edge
        if own_edge[row] < 0:
            return matched, v, False
    parent = np.full(classes, -1, dtype=np.int64)  # per column: the edge of its last relaxation
    stamp = np.full(classes, -1, dtype=np.int64)
    cycle = np.empty(classes, dtype=np.int64)
    queue = np.empty(classes, dtype=np.int64)
    queued = np.ones(classes, dtype=np.bool_)
    for column in range(classes):
        queue[column] = column
    front = 0
    size = classes
    relaxations = 0
    while size > 0:
        column = queue[front]
        front = (front + 1) % classes
        size -= 1
        queued[column] = False
        row = head[column]
        while row >= 0:
            if scans == 0:
                return matched, v, False
            scans -= 1
            base = v[column] - costs[own_edge[row]]
            for edge in range(indptr[row], indptr[row + 1]):
                target = indices[edge]
                candidate = base + costs[edge]
                if target != column and candidate < v[target] - tolerance:
                    v[target] = candidate
                    parent[target] = edge
                    relaxations += 1
                    if not queued[target]:
                        queued[target] = True
                        queue[(front + size) % classes] = target
                        size += 1
            row = following[row]
        if relaxations < classes:
            continue
        relaxations = 0
        # Walk each column's chain of parents (the arc of edge (i, j) starts at i's matched column).
        stamp[:] = -1
        length = 0
        for start in range(classes):
            node = start
            while node >= 0 and stamp[node] < 0:
                stamp[node] = start
                node = -1 if parent[node] < 0 else matched[edge_row[parent[node]]]
            if node >= 0 and stamp[node] == start:
                first = node
                while True:
                    cycle[length] = node
                    length += 1
                    node = matched[edge_row[parent[node]]]
                    if node == first:
                        break
                break
        if length == 0:
            continue
        # Each row of the cycle moves to the column its edge reached (its rows are distinct: each
        # column of the cycle is reached from a different one).
        for index in range(length):
            node = cycle[index]
            edge = parent[node]
            row = edge_row[edge]
            _unlink_kernel(row, matched[row], head, following, preceding)
            _link_kernel(row, node, head, following, preceding)
            matched[row] = node
            own_edge[row] = edge
        parent[:] = -1
        for column in range(classes):
            if not queued[column]:
                queued[column] = True
                queue[(front + size) % classes] = column
                size += 1
    return matched, v, True


def _link(row, column, head, following, preceding):  # type: ignore[no-untyped-def]
    """Put `row` first in `column`'s list of rows."""
    following[row] = head[column]
    preceding[row] = -1
    if head[column] >= 0:
        preceding[head[column]] = row
    head[column] = row


def _unlink(row, column, head, following, preceding):  # type: ignore[no-untyped-def]
    """Take `row` out of `column`'s list of rows."""
    if preceding[row] >= 0:
        following[preceding[row]] = following[row]
    else:
        head[column] = following[row]
    if following[row] >= 0:
        preceding[following[row]] = preceding[row]


def _shortest_paths_finish(count, indptr, indices, costs, column_duals, hint):  # type: ignore[no-untyped-def]
    """Exact minimum-cost perfect matching of the sparse graph (CSR rows), by successive shortest
    paths (Dijkstra on reduced costs, Hungarian dual updates), warm-started from near-optimal column
    duals and a hint assignment. Returns columns[row] and the final column duals."""
    v = column_duals.copy()
    owner = np.full(count, -1, dtype=np.int64)
    matched = np.full(count, -1, dtype=np.int64)
    u = np.empty(count)
    for row in range(count):
        smallest = np.inf
        for edge in range(indptr[row], indptr[row + 1]):
            smallest = min(smallest, costs[edge] - v[indices[edge]])
        u[row] = smallest
    for row in range(count):
        for edge in range(indptr[row], indptr[row + 1]):
            column = indices[edge]
            if column == hint[row] and owner[column] < 0 and costs[edge] - v[column] <= u[row]:
                owner[column] = row
                matched[row] = column
    distance = np.full(count, np.inf)
    entry = np.zeros(count)  # for a reached row: the distance at which the search entered it
    via = np.full(count, -1, dtype=np.int64)  # for a column: the row the best path comes from
    done = np.zeros(count, dtype=np.bool_)
    touched = np.empty(count, dtype=np.int64)
    heap_keys = np.empty(0)
    for start in range(count):
        if matched[start] >= 0:
            continue
        touched_count = 0
        heap_keys = np.empty(16)
        heap_items = np.empty(16, dtype=np.int64)
        heap_size = 0
        row = start
        entry[row] = 0.0
        target = -1
        final = 0.0
        while True:
            for edge in range(indptr[row], indptr[row + 1]):
                column = indices[edge]
                if done[column]:
                    continue
                reduced = max(costs[edge] - u[row] - v[column], 0.0)
                candidate = entry[row] + reduced
                if candidate < distance[column]:
                    if distance[column] == np.inf:
                        touched[touched_count] = column
                        touched_count += 1
                    distance[column] = candidate
                    via[column] = row
                    if heap_size == heap_keys.shape[0]:
                        heap_keys = np.concatenate((heap_keys, np.empty(heap_size)))
                        heap_items = np.concatenate((heap_items, np.empty(heap_size, dtype=np.int64)))
                    position = heap_size
                    heap_size += 1
                    while position > 0 and heap_keys[(position - 1) // 2] > candidate:
                        heap_keys[position] = heap_keys[(position - 1) // 2]
                        heap_items[position] = heap_items[(position - 1) // 2]
                        position = (position - 1) // 2
                    heap_keys[position] = candidate
                    heap_items[position] = column
            column = -1
            while heap_size > 0:
                key = heap_keys[0]
                item = heap_items[0]
                heap_size -= 1
                last_key = heap_keys[heap_size]
                last_item = heap_items[heap_size]
                position = 0
                while True:
                    child = 2 * position + 1
                    if child >= heap_size:
                        break
                    if child + 1 < heap_size and heap_keys[child + 1] < heap_keys[child]:
                        child += 1
                    if heap_keys[child] >= last_key:
                        break
                    heap_keys[position] = heap_keys[child]
                    heap_items[position] = heap_items[child]
                    position = child
                heap_keys[position] = last_key
                heap_items[position] = last_item
                if not done[item] and key == distance[item]:
                    column = item
                    break
            if column < 0:
                raise ValueError("the graph has no perfect matching")
            done[column] = True
            if owner[column] < 0:
                target = column
                final = distance[column]
                break
            row = owner[column]
            entry[row] = distance[column]
        # Dual update: scanned columns (done) and the rows entered through them keep their edges tight.
        for index in range(touched_count):
            column = touched[index]
            if done[column]:
                v[column] -= final - distance[column]
                if owner[column] >= 0:
                    u[owner[column]] += final - distance[column]
        u[start] += final
        # Augment along the path.
        column = target
        while True:
            row = via[column]
            previous = matched[row]
            matched[row] = column
            owner[column] = row
            if row == start:
                break
            column = previous
        for index in range(touched_count):
            column = touched[index]
            distance[column] = np.inf
            done[column] = False
    return matched, v


def _graph_auction(count, indptr, indices, costs, assigned, prices, eps_start, eps_end, scaling, jump, bids, offsets):  # type: ignore[no-untyped-def]
    """The forward auction of _auction on a sparse graph (CSR rows) with its exact costs, carried on from
    an assignment (-1: none) and prices down to a smaller epsilon: each phase keeps the rows that meet
    its epsilon-complementary slackness and rebids the others. Column j has offsets[j + 1] - offsets[j]
    copies (_auction), which start at its price. A row with one edge raises its price by `jump`.
    Returns (assigned, prices, True), or (.., False) past `bids` bids (a graph without a perfect
    matching would bid forever)."""
    classes = len(prices)
    prices = prices.copy()
    assigned = assigned.copy()
    copy_prices = np.empty(count)
    copy_owner = np.full(count, -1, dtype=np.int64)
    seat = np.full(count, -1, dtype=np.int64)
    free = np.empty(classes, dtype=np.int64)  # each column's next copy to seat an assigned row on
    for column in range(classes):
        first, last = _copies_kernel(offsets, column)
        copy_prices[first:last] = prices[column]
        free[column] = first
    for row in range(count):
        column = assigned[row]
        if column >= 0 and free[column] < _copies_kernel(offsets, column)[1]:
            copy_owner[free[column]] = row
            seat[row] = free[column]
            free[column] += 1
        else:
            assigned[row] = -1
    waiting = np.empty(count, dtype=np.int64)
    eps = eps_start
    while True:
        top = 0
        for row in range(count):
            best = np.inf
            own = np.inf
            for edge in range(indptr[row], indptr[row + 1]):
                value = costs[edge] + prices[indices[edge]]
                best = min(best, value)
                if indices[edge] == assigned[row]:
                    own = costs[edge] + copy_prices[seat[row]]
            if own > best + eps:
                if assigned[row] >= 0:
                    copy_owner[seat[row]] = -1
                    seat[row] = -1
                assigned[row] = -1
                waiting[top] = row
                top += 1
        while top > 0:
            if bids == 0:
                return assigned, prices, False
            bids -= 1
            top -= 1
            row = waiting[top]
            best = np.inf
            second = np.inf
            best_column = -1
            for edge in range(indptr[row], indptr[row + 1]):
                value = costs[edge] + prices[indices[edge]]
                if value < second:
                    if value < best:
                        second = best
                        best = value
                        best_column = indices[edge]
                    else:
                        second = value
            if best_column < 0:
                return assigned, prices, False  # a row without edges
            second = min(second, _runner_up_kernel(best, best_column, prices, offsets, copy_prices))
            increment = (jump if second == np.inf else second - best) + eps
            top = _award_kernel(
                row, best_column, increment, prices, offsets, copy_prices, copy_owner, seat, assigned, waiting, top
            )
        if eps <= eps_end:
            return assigned, prices, True
        eps = max(eps_end, eps / scaling)


_insert_smallest_kernel = kernel(_insert_smallest)
_copies_kernel = kernel(_copies)
_award_kernel = kernel(_award)
_runner_up_kernel = kernel(_runner_up)
_link_kernel = kernel(_link)
_unlink_kernel = kernel(_unlink)
auction = kernel(_auction)
_block_floors_kernel = kernel(_block_floors)
_row_minima_kernel = kernel(_row_minima)
_edges_below_kernel = kernel(_edges_below)
shortest_paths_finish = kernel(_shortest_paths_finish)
cancel_and_repair = kernel(_cancel_and_repair)
graph_auction = kernel(_graph_auction)


def in_row_parts(work: Callable[[int, int], Any], rows: int, threads: int) -> list[Any]:
    """work(start, stop) over `threads` contiguous row ranges at once (the kernels release the GIL)."""
    if threads <= 1:
        return [work(0, rows)]
    bounds = np.linspace(0, rows, threads + 1).astype(np.int64)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda part: work(int(bounds[part]), int(bounds[part + 1])), range(threads)))


def block_order(points: np.ndarray) -> np.ndarray:
    """An order of the points (rows) in which each run of SCAN_BLOCK holds near ones: the set is halved
    at a multiple of SCAN_BLOCK along its principal axis, and each half again, down to one block.

    As the order of a cost matrix's columns it makes the block floors tight: a row's costs to one
    block's columns, and those columns' prices, lie close together, so a block's floor nears its values
    and the scans skip more blocks unread. Raster order puts a sky's and a tree's patches in one
    block. On the 128 px pairs of flat nips17 photos (602 shift, 820 JPEG) a full scan read 75 and 39
    of a row's 232 blocks instead of 197 and 189, and the auction took 6.5-9.0 s instead of 10.4-15.4 s
    (rows in block order as well: no further gain; blocks of 32 or 128 columns, or 16 or 32 cached
    candidates: slower; sorting by patch mean, one fixed axis, did not tighten the floors)."""
    points = np.asarray(points, dtype=np.float32)  # only an order: float32 halves the passes' time
    order = np.arange(len(points))
    parts = [(0, len(points))]
    while parts:
        start, stop = parts.pop()
        if stop - start <= SCAN_BLOCK:
            continue
        members = order[start:stop]
        centred = points[members] - points[members].mean(axis=0)
        # The principal axis, nearly: 3 power iterations (an exact eigenvector took 10x longer, 0.6-0.9 s
        # at 128 px, for no faster auction).
        axis = np.abs(centred).sum(axis=0)
        for _ in range(3):
            axis = centred.T @ (centred @ axis)
            axis /= max(float(np.linalg.norm(axis)), 1e-30)
        order[start:stop] = members[np.argsort(centred @ axis, kind="stable")]
        # The first half rounded up to whole blocks: every block but the last is whole.
        middle = start + SCAN_BLOCK * -(-(stop - start) // (2 * SCAN_BLOCK))
        parts += [(start, middle), (middle, stop)]
    return order


_NO_FLOORS = np.empty((0, 0))  # the kernels' floors when there are none: every block is read


def _block_minima(values: np.ndarray) -> np.ndarray:
    """The smallest of each block of SCAN_BLOCK values (the blocks of whole matrix rows)."""
    blocked = len(values) - len(values) % SCAN_BLOCK
    return values[:blocked].reshape(-1, SCAN_BLOCK).min(axis=1)


def row_minima(cost: np.ndarray, prices: np.ndarray, threads: int = 1, floors: np.ndarray | None = None) -> np.ndarray:
    """min_j (c_ij + p_j) of every row; `floors` (block_floors) let blocks be skipped unread."""
    out = np.empty(len(cost))
    floors = _NO_FLOORS if floors is None else floors
    price_floors = _block_minima(prices)
    in_row_parts(
        lambda start, stop: _row_minima_kernel(cost, prices, floors, price_floors, start, stop, out), len(cost), threads
    )
    return out


def edges_below(
    cost: np.ndarray,
    row_duals: np.ndarray,
    column_duals: np.ndarray,
    absolute: float,
    relative: float,
    threads: int = 1,
    floors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the entries with c_ij - u_i - v_j <= absolute + relative * c_ij, by row;
    `floors` (block_floors) let blocks be skipped unread."""
    floors = _NO_FLOORS if floors is None else floors
    dual_floors = _block_minima(-column_duals)
    parts = in_row_parts(
        lambda start, stop: _edges_below_kernel(
            cost, row_duals, column_duals, absolute, relative, floors, dual_floors, start, stop
        ),
        len(cost),
        threads,
    )
    return np.concatenate([rows for rows, _ in parts]), np.concatenate([columns for _, columns in parts])


def block_floors(cost: np.ndarray, threads: int = 1) -> tuple[np.ndarray, float, np.ndarray]:
    """The smallest entry of each block of SCAN_BLOCK columns of each row (n, n // SCAN_BLOCK), in
    the matrix's dtype, the range of the entries (largest minus smallest), and each column's smallest
    entry (in float64): one pass over the matrix."""
    n = len(cost)
    floors = np.empty((n, cost.shape[1] // SCAN_BLOCK), dtype=cost.dtype)

    def part(start: int, stop: int) -> tuple[float, np.ndarray]:
        column_minima = np.full(cost.shape[1], np.inf, dtype=cost.dtype)
        return _block_floors_kernel(cost, start, stop, floors, column_minima), column_minima

    parts = in_row_parts(part, n, threads)
    column_minima = np.minimum.reduce([minima for _, minima in parts]).astype(np.float64)
    return floors, float(max(high for high, _ in parts)) - float(column_minima.min()), column_minima


def tight_edges(
    cost: np.ndarray,
    prices: np.ndarray,
    assigned: np.ndarray,
    threads: int = 1,
    floors: np.ndarray | None = None,
    copies: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The edges whose reduced cost under (u, -prices), u_i = min_j (c_ij + p_j), is at most the gap;
    `copies`: how many rows each column takes (one each if None)."""
    n = len(cost)
    row_dual = row_minima(cost, prices, threads, floors)
    primal = float(np.sum(cost[np.arange(n), assigned], dtype=np.float64))
    gap = primal - (row_dual.sum() - (prices.sum() if copies is None else prices @ copies))
    # Rounding in the sums above is far below 1e-12 of the gap's scale; the margin only keeps the
    # auction's own edges (reduced cost <= gap in exact arithmetic) in the graph.
    return edges_below(cost, row_dual, -prices, gap + 1e-12 * (abs(primal) + 1.0), 0.0, threads, floors)


def min_cost_assignment(cost: np.ndarray, threads: int = 1, copies: np.ndarray | None = None) -> np.ndarray:
    """An exact minimum-cost perfect matching of a square float64 matrix: `columns[row]`. `threads`
    split the passes over the whole matrix (not the auction, which is sequential).

    With `copies`, column j of the (n, K) matrix stands for copies[j] identical columns (summing to n),
    and the result is an optimal transport plan of the rows onto the columns, copies[j] rows to column j:
    the assignment problem of the copies, solved without listing them (_auction), so its graphs and
    price wars shrink with them."""
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    n = cost.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if auction is None:
        if copies is not None:
            return _copies_listed(cost, copies, threads)
        from scipy.optimize import linear_sum_assignment  # only without numba: a half-second import

        return linear_sum_assignment(cost)[1].astype(np.int64)
    auctioned = _auction_and_tight_edges(cost, threads, copies)
    return _exact_matrix_finish(cost, auctioned, threads, auctioned.floors, copies)


@dataclass
class _Auctioned:
    """An auction's assignment and prices on a matrix, its tight graph (edges by row), the matrix's
    block floors and the range of its entries (largest minus smallest)."""

    assigned: np.ndarray
    prices: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    floors: np.ndarray
    top: float


def _exact_matrix_finish(
    cost: np.ndarray, auctioned: _Auctioned, threads: int, floors: np.ndarray | None, copies: np.ndarray | None = None
) -> np.ndarray:
    """The optimum of the exact float64 matrix from an auction's assignment, prices and tight graph:
    the assignment proved by repaired duals, else the network simplex where the graph is too dense for
    the searches (or its columns have copies), else the shortest-path finish on the graph. `floors`:
    this matrix's block floors, or None (those of a float32 copy may lie above its entries). Columns with
    copies that neither proves are listed copy by copy and solved as an assignment problem."""
    n = len(cost)
    assigned, prices, rows, columns = auctioned.assigned, auctioned.prices, auctioned.rows, auctioned.columns
    if (certified := _certified_optimum(cost, rows, columns, assigned, prices, threads, floors, copies)) is not None:
        return certified
    if (copies is not None or len(rows) > SIMPLEX_EDGES_PER_ROW * n) and (
        simplex := network_simplex(cost, copies)
    ) is not None:
        return simplex
    if copies is not None:
        return _copies_listed(cost, copies, threads)
    return _finish(n, rows, columns, lambda rows, columns: cost[rows, columns], prices, assigned)


def _copies_listed(cost: np.ndarray, copies: np.ndarray, threads: int) -> np.ndarray:
    """min_cost_assignment with `copies`, solved as the assignment problem of the copies listed one by one."""
    column_of_copy = np.repeat(np.arange(len(copies)), copies)
    return column_of_copy[min_cost_assignment(cost[:, column_of_copy], threads)]


def _offsets(copies: np.ndarray | None) -> np.ndarray | None:
    """Where each column's copies start among all copies, and their end (None: one copy each)."""
    return None if copies is None else np.concatenate(([0], np.cumsum(copies))).astype(np.int64)


def _auction_and_tight_edges(cost: np.ndarray, threads: int, copies: np.ndarray | None = None) -> _Auctioned:
    n = len(cost)
    floors, top, column_minima = block_floors(cost, threads)
    eps_end = FINAL_TOTAL_GAP / n
    # Prices start at minus the column minima (Jonker and Volgenant's column reduction: each column's
    # cheapest entry at value 0), not at 0. Side by side in process, the auction: moved pairs of nips17
    # photos 600-603 at 128 px 26.5 -> 21.2 s; 64 px, the darkest photos' pairs 10.35 -> 9.17 s, 96 pairs
    # of photos 700-707 and 860-863 5.96 -> 5.56 s; 128 px, photos 700-707 33.8 -> 32.1 s (blur and PGD
    # pairs 0.83-0.95x).
    start_prices = -column_minima
    assigned, prices = auction(
        cost, floors, start_prices, max(top / START_DIVISOR, eps_end), eps_end, SCALING, _offsets(copies)
    )
    edges = tight_edges(cost, prices, assigned, threads, floors, copies)
    return _Auctioned(assigned, prices, *edges, floors, top)


def _repaired(
    rows: np.ndarray,
    columns: np.ndarray,
    costs: np.ndarray,
    assigned: np.ndarray,
    prices: np.ndarray,
    copies: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """cancel_and_repair on the graph of edges (rows, columns) sorted by row, with their exact costs,
    from the auction's assignment and prices: (matched, column duals, whether they prove it).

    Where it gives up (near-tied graphs, whose auction assignment is thousands of tiny negative cycles
    from optimal), the auction goes on over the graph's exact costs down to REFINED_TOTAL_GAP, and the
    repair starts again from its assignment and the first auction's prices: the refined prices moved
    by more than the slack of entries outside the graph, whose pricing then failed (80 s of searches).
    Each round that the repair gives up on carries the auction on to a smaller gap. nips17 photo 820 and
    its JPEG copy resized in float32 at 128 px (730 tight edges per row): 2 s of graph auction and under
    1 s of repair instead of a 33.5 s shortest-path finish; photo 940's, in the second round."""
    n = len(assigned)
    indptr = np.searchsorted(rows, np.arange(n + 1))
    matched, duals, repaired = cancel_and_repair(
        n, indptr, columns, costs, assigned, -prices, REPAIR_TOLERANCE, REPAIR_SCANS_PER_COLUMN * n
    )
    if repaired:
        return matched, duals, True
    jump = float(costs.max() - costs.min()) + 1.0 if len(costs) else 1.0
    offsets = _offsets(copies)
    refined, refined_prices, bids = assigned, prices, GRAPH_BIDS_PER_ROW * n
    eps_start, eps_end = FINAL_TOTAL_GAP / n / SCALING, REFINED_TOTAL_GAP / n
    while eps_end * n >= SMALLEST_REFINED_TOTAL_GAP:
        refined, refined_prices, complete = graph_auction(
            n, indptr, columns, costs, refined, refined_prices, eps_start, eps_end, SCALING, jump, bids, offsets
        )
        if not complete:
            break
        matched, duals, repaired = cancel_and_repair(
            n, indptr, columns, costs, refined, -prices, REPAIR_TOLERANCE, REPAIR_SCANS_PER_COLUMN * n
        )
        if repaired:
            return matched, duals, True
        eps_start, eps_end = eps_end / SCALING, eps_end / REFINED_GAP_DIVISOR
    return assigned, -prices, False


def graph_optimum(
    rows: np.ndarray, columns: np.ndarray, costs: np.ndarray, assigned: np.ndarray, prices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The optimum of the sparse graph of edges (rows, columns) sorted by row, with their costs, from an
    auction's perfect matching of it and prices: (matched, column duals proving it). The duals repaired
    (_repaired), else successive shortest paths."""
    matched, column_duals, repaired = _repaired(rows, columns, costs, assigned, prices)
    if not repaired:
        indptr = np.searchsorted(rows, np.arange(len(assigned) + 1))
        matched, column_duals = shortest_paths_finish(len(assigned), indptr, columns, costs, column_duals, matched)
    return matched, column_duals


def _certified_optimum(
    cost: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    assigned: np.ndarray,
    prices: np.ndarray,
    threads: int,
    floors: np.ndarray | None = None,
    copies: np.ndarray | None = None,
) -> np.ndarray | None:
    """The auction's assignment, improved where needed and proved optimal by duals, or None.

    The auction's prices leave each matched edge within epsilon of tight. Shortest paths over the
    tight graph repair them into duals under which every matched edge is exactly tight, cancelling
    the negative cycles that show the assignment not yet optimal; a pass over the whole matrix then
    checks that no entry, in the graph or not, violates the duals. On degenerate problems (hundreds of
    tied entries per row) this takes milliseconds where the shortest-path finish took tens of seconds."""
    n = len(cost)
    matched, column_duals, repaired = _repaired(rows, columns, cost[rows, columns], assigned, prices, copies)
    if not repaired:
        return None
    smallest = row_minima(cost, -column_duals, threads, floors)
    if (smallest >= cost[np.arange(n), matched] - column_duals[matched] - CERTIFICATE_TOLERANCE).all():
        return matched
    return None


def network_simplex(cost: np.ndarray, copies: np.ndarray | None = None) -> np.ndarray | None:
    """An exact minimum-cost perfect matching of a square float64 matrix by POT's network simplex
    (`columns[row]`; with `copies`, the transport plan of min_cost_assignment), or None where POT is
    missing or stops short of optimality.

    It serves degenerate problems, where the auction and the shortest-path searches crawl: a dark
    image against its brightened copy (PGD's noise clipped at 0) has blocks where c_ij = a_i + b_j
    exactly, so hundreds of entries per row tie (a 64 x 64 pair took 66 s there; the simplex 3 s).
    """
    try:
        import ot  # imports torch: only here, not at start-up
    except ImportError:
        return None
    n = len(cost)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = np.ones(n) if copies is None else copies.astype(np.float64)
        plan, log = ot.emd(np.ones(n), weights, cost, numItermax=max(10**7, 1000 * n), log=True)
    if log["result_code"] != 1:  # 1: optimal
        return None
    return np.asarray(plan).argmax(axis=1).astype(np.int64)


def sorted_unique(*parts: np.ndarray) -> np.ndarray:
    """The distinct values of the arrays, sorted: np.unique (NumPy 2.4) took 15x longer on the edge keys
    of a degenerate pair (1.36M: 1.3 s against 0.09 s)."""
    keys = np.sort(np.concatenate(parts))
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def _with_assignment(graph_keys: np.ndarray, assignment_keys: np.ndarray) -> np.ndarray:
    """sorted_unique of a graph's keys (row x n + column), sorted and distinct as edges_below lists them,
    and an assignment's (sorted, distinct): a search, not a sort (the near-tied tight graph of nips17
    photo 820 against its JPEG copy at 128 px has 10.5M edges: 1.1 s to sort)."""
    positions = np.searchsorted(graph_keys, assignment_keys)
    present = np.zeros(len(assignment_keys), dtype=bool)
    inside = positions < len(graph_keys)
    present[inside] = graph_keys[positions[inside]] == assignment_keys[inside]
    return np.insert(graph_keys, positions[~present], assignment_keys[~present])


def _finish(n: int, rows: np.ndarray, columns: np.ndarray, exact_costs, prices, assigned) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The exact optimum over the certified edges (and the auction's own assignment, which lies among
    them but is added explicitly so that a perfect matching exists whatever the rounding)."""
    keys = _with_assignment(rows * n + columns, np.arange(n) * n + assigned)
    rows, columns = keys // n, keys % n
    indptr = np.searchsorted(rows, np.arange(n + 1))
    return shortest_paths_finish(n, indptr, columns, exact_costs(rows, columns), -prices, assigned)[0]


def _positions_in(keys, graph_keys):  # type: ignore[no-untyped-def]
    """For each of the sorted `keys`, its position among the sorted, distinct `graph_keys`, or -1 (a merge)."""
    positions = np.full(len(keys), -1, dtype=np.int64)
    position = 0
    for index in range(len(keys)):
        while position < len(graph_keys) and graph_keys[position] < keys[index]:
            position += 1
        if position < len(graph_keys) and graph_keys[position] == keys[index]:
            positions[index] = position
    return positions


positions_in = kernel(_positions_in)


def _listed_costs(
    edges: tuple[np.ndarray, np.ndarray],
    graph_keys: np.ndarray,
    graph_costs: np.ndarray,
    exact_costs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n: int,
) -> np.ndarray:
    """The exact costs of the edges (rows, columns), sorted by row and column as edges_below lists them:
    those in the graph (keys row x n + column, sorted) read from its costs, only the others computed.
    On near-tied pairs pricing's suspects are graph edges (nips17 photo 820 against its JPEG copy at
    128 px: all 6.8M of them, 0.46 s of exact costs)."""
    rows, columns = edges
    positions = positions_in(rows * n + columns, graph_keys)
    known = positions >= 0
    listed = np.empty(len(rows))
    listed[known] = graph_costs[positions[known]]
    listed[~known] = exact_costs(rows[~known], columns[~known])
    return listed


# Float32 entries are within one rounding (2^-24 relative) of means taken in float64 (their own error near
# 2^-46): 2^-22 leaves a margin of four.
FLOAT32_RELATIVE_ERROR = 2.0**-22
MAX_PRICING_ROUNDS = 20


def min_cost_assignment_within(
    cost: np.ndarray,
    exact_costs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    threads: int = 1,
    exact_matrix: Callable[[], np.ndarray] | None = None,
) -> np.ndarray:
    """An exact minimum-cost perfect matching of a large problem whose matrix is stored in float32.

    `cost` holds the costs rounded to float32; `exact_costs(rows, columns)` gives any edges' exact
    (float64) costs. The auction runs on the float32 matrix (half the memory traffic) and proposes
    the sparse graph of its tight edges; that graph is solved with exact costs (the auction's
    assignment with repaired duals, as in min_cost_assignment, else by successive shortest paths),
    and its optimal duals are checked against every entry (pricing): an entry that may violate them
    by more than its rounding is recomputed exactly, and true violations join the graph, which is
    solved again. When no entry violates the duals, they certify the matching optimal for the exact
    costs. Where the tight graph is degenerate (more than SIMPLEX_EDGES_PER_ROW edges per row) and
    `exact_matrix()` can give the float64 matrix (up to EXACT_MATRIX_SIZE), the problem is finished
    on it as min_cost_assignment finishes it (the 4 darkest nips17 photos' noisy copies at 64 px,
    before the block floors: 1.15 s per pair before, 1.00-1.11 s after; 0.78 s on the float64 route,
    whose auction was faster on their ties).
    """
    n = cost.shape[0]
    auctioned = _auction_and_tight_edges(cost, threads)
    assigned, prices, rows, columns = auctioned.assigned, auctioned.prices, auctioned.rows, auctioned.columns
    if exact_matrix is not None and len(rows) > SIMPLEX_EDGES_PER_ROW * n and n <= EXACT_MATRIX_SIZE:
        return _exact_matrix_finish(exact_matrix(), auctioned, threads, None)
    keys = _with_assignment(rows * n + columns, np.arange(n) * n + assigned)
    rows, columns = keys // n, keys % n
    costs = exact_costs(rows, columns)
    matched, column_duals = graph_optimum(rows, columns, costs, assigned, prices)
    for _ in range(MAX_PRICING_ROUNDS):
        row_duals = exact_costs(np.arange(n), matched) - column_duals[matched]
        # Entries that may violate the duals once their rounding is undone (the tight ones among them).
        suspects = edges_below(cost, row_duals, column_duals, 0.0, FLOAT32_RELATIVE_ERROR, threads, auctioned.floors)
        suspect_costs = _listed_costs(suspects, keys, costs, exact_costs, n)
        reduced = suspect_costs - row_duals[suspects[0]] - column_duals[suspects[1]]
        violated = reduced < -1e-12 * (auctioned.top + 1.0)
        if not violated.any():
            return matched
        keys = sorted_unique(keys, suspects[0][violated] * n + suspects[1][violated])
        rows, columns = keys // n, keys % n
        costs = exact_costs(rows, columns)
        matched, column_duals = shortest_paths_finish(
            n, np.searchsorted(rows, np.arange(n + 1)), columns, costs, column_duals, matched
        )
    raise RuntimeError("pricing did not converge")  # not seen; would mean the duals drift with rounding
