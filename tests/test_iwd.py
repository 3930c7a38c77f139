from __future__ import annotations

import io

import numpy as np
import ot
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from scipy.optimize import linear_sum_assignment

from iwdctl import assignment, distances
from iwdctl.costs import cost_matrix, cost_matrix_torch, row_nearest
from iwdctl.errors import InputError
from iwdctl.images import load_image
from iwdctl.iwd import (
    _exactly_priced,
    analysis_size,
    analysis_view,
    estimate_iwd,
    exact_iwd,
    iwd,
    iwd_lower_bound,
    iwd_pair,
    optimal_matching,
    patch_array,
    patches,
    resize_array,
)

from .conftest import shared_data


def pot_iwd(x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1) -> float:
    """The definition, computed independently with POT: emd2 on the cityblock cost divided by d."""
    u, v = patches(x.double(), patch, stride).numpy(), patches(y.double(), patch, stride).numpy()
    cost = ot.dist(u, v, metric="cityblock") / u.shape[1]
    return float(ot.emd2([], [], cost, numItermax=10**7))


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, "JPEG", quality=quality)
    return torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).double() / 255


def _shuffled_blocks(x: torch.Tensor, block: int, generator: torch.Generator) -> torch.Tensor:
    """A crude re-arrangement: the image's blocks in a random order, then blurred at the seams."""
    channels, height, width = x.shape
    tiles = x[:, : height // block * block, : width // block * block].unfold(1, block, block).unfold(2, block, block)
    rows, cols = tiles.shape[1:3]
    order = torch.randperm(rows * cols, generator=generator)
    tiles = tiles.reshape(channels, rows * cols, block, block)[:, order].reshape(channels, rows, cols, block, block)
    out = x.clone()
    out[:, : rows * block, : cols * block] = tiles.permute(0, 1, 3, 2, 4).reshape(channels, rows * block, cols * block)
    return TF.gaussian_blur(out, [3, 3], [0.6, 0.6])


def perturbed_pairs(photo: torch.Tensor, size: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every kind of pair the benchmark measures, made from one photo, at analysis size `size`."""
    generator = torch.Generator().manual_seed(seed)
    x = photo.double()
    made = {
        "noise": (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1),
        "gaussian": (x + 0.03 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1),
        "blur": TF.gaussian_blur(x, [5, 5], [1.0, 1.0]),
        "jpeg": _jpeg(x, 30),
        "shift": torch.roll(x, (2, 3), dims=(1, 2)),
        "rotation": TF.rotate(x, 3.0, interpolation=TF.InterpolationMode.BILINEAR),
        "rearranged": _shuffled_blocks(x, photo.shape[-1] // 4, generator),
    }
    return {kind: tuple(analysis_view(torch.stack([x, y]), size)) for kind, y in made.items()}  # type: ignore[misc]


def test_cost_matrix_kernels_agree_with_cdist():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 23, 19, generator=generator, dtype=torch.float64)
    reference = (torch.cdist(patches(x, 5, 1), patches(y, 5, 1), p=1) / 75).numpy()
    for threads in (1, 2, 3):
        np.testing.assert_allclose(cost_matrix(x, y, 5, threads=threads), reference, rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        cost_matrix(x, y, 5, stride=2), (torch.cdist(patches(x, 5, 2), patches(y, 5, 2), p=1) / 75).numpy(), atol=1e-14
    )
    batched = cost_matrix_torch(torch.stack([x, y]), torch.stack([y, x]), 5)
    np.testing.assert_allclose(batched[0].numpy(), reference, atol=1e-14)
    np.testing.assert_allclose(batched[1].numpy(), reference.T, atol=1e-14)


def test_cost_matrix_of_selected_patches_equals_indexing_the_whole():
    generator = np.random.default_rng(0)
    x, y = generator.random((2, 3, 17, 15))
    count = 13 * 11
    whole = cost_matrix(x, y, 5)
    selections = [
        (np.arange(count), np.arange(count)),
        (np.flatnonzero(generator.random(count) < 0.3), np.flatnonzero(generator.random(count) < 0.6)),  # increasing
        (generator.permutation(count)[:50], generator.permutation(count)[:70]),  # any order
        (np.array([4]), generator.permutation(count)),
    ]
    for rows, columns in selections:
        for threads in (1, 2):
            for dtype in (np.float32, np.float64):
                got = cost_matrix(x, y, 5, threads=threads, dtype=dtype, rows=rows, columns=columns)
                assert got.dtype == dtype
                assert np.array_equal(got, whole.astype(dtype)[np.ix_(rows, columns)])
        # The torch route (other strides, GPUs) selects the same entries.
        assert np.array_equal(
            cost_matrix(
                torch.from_numpy(x), torch.from_numpy(y), 5, stride=2, rows=rows[:3] % 42, columns=columns[:4] % 42
            ),
            cost_matrix(x, y, 5, stride=2)[np.ix_(rows[:3] % 42, columns[:4] % 42)],
        )
    assert np.array_equal(cost_matrix(x, y, 5, rows=selections[1][0]), whole[selections[1][0]])


def test_block_order_puts_near_patches_in_one_block():
    """Two well-separated clusters, shuffled: every block of the order holds patches of one cluster."""
    generator = np.random.default_rng(1)
    points = np.concatenate(
        [generator.random((assignment.SCAN_BLOCK * 3, 12)), 5 + generator.random((assignment.SCAN_BLOCK * 2, 12))]
    )
    labels = np.repeat([0, 1], [assignment.SCAN_BLOCK * 3, assignment.SCAN_BLOCK * 2])
    shuffle = generator.permutation(len(points))
    order = assignment.block_order(points[shuffle])
    assert np.array_equal(np.sort(order), np.arange(len(points)))
    blocks = labels[shuffle][order].reshape(-1, assignment.SCAN_BLOCK)
    assert (blocks == blocks[:, :1]).all()


@pytest.mark.parametrize("route", ["float64", "float32", "float32 in block order"])
def test_pairs_with_identical_patches_match_pot(monkeypatch, route):
    """Flat regions give identical patches on both sides, matched to each other first; the rest of the
    matrix is solved on both routes (the float32 one forced at 36 px), its columns in block order too."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    if route.startswith("float32"):
        monkeypatch.setattr(engine, "FLOAT32_ASSIGNMENT_SIZE", 0)
    if route.endswith("block order"):
        monkeypatch.setattr(engine, "BLOCK_ORDER_PATCHES", 0)
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)
    photo = load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png")).double()
    photo[:, :100, :] = torch.tensor([0.4, 0.6, 0.9], dtype=torch.float64)[:, None, None]  # a flat "sky"
    for kind, (x, y) in perturbed_pairs(photo, 36, seed=5).items():
        if kind in ("noise", "gaussian"):
            continue  # noise leaves no patch identical
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind
        if kind == "shift":  # the case this test exists for: some patches identical on both sides
            assert (patches(x, 7, 1)[:, None] == patches(y, 7, 1)[None]).all(dim=2).any()


@pytest.mark.parametrize("route", ["float64", "float32"])
def test_an_image_against_a_copy_with_a_band_moved_matches_pot(monkeypatch, route):
    """A band moved by whole pixels (iwdctl.rearrange's moves) leaves most patches identical: the few
    left get their costs entry by entry (DIRECT_COSTS_SHARE), and the lower bound is the exact value."""
    import importlib

    from iwdctl.rearrange import band_displacement, displace

    engine = importlib.import_module("iwdctl.iwd")
    if route == "float32":
        monkeypatch.setattr(engine, "FLOAT32_ASSIGNMENT_SIZE", 0)
    photo = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))[None].double()
    generator = torch.Generator().manual_seed(3)
    for number in range(3):
        field = band_displacement(photo[0].numpy(), photo.shape[-1] / 40, number % 2 == 0, number < 2, generator)
        moved = displace(photo, torch.from_numpy(np.ascontiguousarray(field))[None])
        x, y = analysis_view(torch.cat([photo, moved]), 40)
        keep_u, keep_v, _, _ = engine._unshared(patch_array(x.numpy(), 7, 1), patch_array(y.numpy(), 7, 1))
        assert 0 < keep_u.mean() <= engine.DIRECT_COSTS_SHARE and keep_u.sum() == keep_v.sum()
        exact = exact_iwd(x, y)
        assert exact == pytest.approx(pot_iwd(x, y), rel=1e-9)
        assert iwd_lower_bound(x, y) == exact


def test_shared_patches_are_grouped_as_sorting_the_rows_groups_them():
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    generator = np.random.default_rng(0)
    for terms in (1, 2, 3):
        u, v = generator.integers(0, 3, (300, terms)) / 2, generator.integers(0, 3, (250, terms)) / 2
        keep_u, keep_v, group_u, group_v = engine._unshared(u, v)
        _, reference = np.unique(np.concatenate([u, v]), axis=0, return_inverse=True)
        reference = reference.ravel()
        groups = np.concatenate([group_u, group_v])
        # The same partition (labels aside), and what is left on the two sides has no patch in common.
        assert np.array_equal(groups[:, None] == groups[None], reference[:, None] == reference[None])
        assert not {patch.tobytes() for patch in u[keep_u]} & {patch.tobytes() for patch in v[keep_v]}
        assert len(u) - keep_u.sum() == len(v) - keep_v.sum() > 0
    u, v = generator.random((300, 12)), generator.random((250, 12))
    keep_u, keep_v, _, _ = engine._unshared(u, v)  # nothing shared: the quick answer
    assert keep_u.all() and keep_v.all()


def test_pair_cost_matrix_equals_the_definition_and_the_listed_costs():
    from iwdctl.costs import pair_cost_matrix, pair_costs

    generator = np.random.default_rng(1)
    u, v = generator.random((37, 147)), generator.random((29, 147))
    rows, columns = np.repeat(np.arange(37), 29), np.tile(np.arange(29), 37)
    listed = pair_costs(u, v, rows, columns).reshape(37, 29)
    for threads in (1, 2, 5):
        dense = pair_cost_matrix(u, v, threads)
        assert np.array_equal(dense, listed)  # both sum each entry in order
        np.testing.assert_allclose(dense, np.abs(u[:, None] - v[None]).mean(axis=2), rtol=1e-14)
    assert pair_cost_matrix(u, v, 2, np.float32).dtype == np.float32


def test_pair_cost_matrix_without_numba(monkeypatch):
    from iwdctl import costs

    monkeypatch.setattr(costs, "_dense_kernel", None)
    generator = np.random.default_rng(2)
    u, v = generator.random((300, 147)), generator.random((200, 147))  # more rows than one chunk
    np.testing.assert_allclose(costs.pair_cost_matrix(u, v), np.abs(u[:, None] - v[None]).mean(axis=2), rtol=1e-14)


@pytest.mark.parametrize("seed", range(6))
def test_assignment_is_optimal_on_hard_matrices(seed):
    """Random, tied and low-rank matrices: the auction + exact finish equals SciPy's optimum."""
    rng = np.random.default_rng(seed)
    n = [1, 2, 7, 60, 150, 300][seed]
    matrices = [
        rng.random((n, n)),
        rng.integers(0, 3, (n, n)).astype(np.float64),  # many ties
        np.abs(rng.random((n, 1)) - rng.random((1, n))),  # 1-D transport: highly degenerate
        np.full((n, n), 0.25),
    ]
    for cost in matrices:
        for threads in (1, 3):  # the passes over the whole matrix split by rows
            columns = assignment.min_cost_assignment(cost, threads)
            assert sorted(columns.tolist()) == list(range(n))
            rows, expected = linear_sum_assignment(cost)
            optimum = cost[rows, expected].sum()
            assert cost[np.arange(n), columns].sum() == pytest.approx(optimum, rel=1e-12, abs=1e-12)


def test_assignment_without_numba_falls_back_to_scipy(monkeypatch):
    monkeypatch.setattr(assignment, "auction", None)
    cost = np.random.default_rng(0).random((40, 40))
    rows, expected = linear_sum_assignment(cost)
    assert cost[np.arange(40), assignment.min_cost_assignment(cost)].sum() == pytest.approx(cost[rows, expected].sum())
    transport, copies = _transport_problem(0)  # columns with copies: the copies listed, for SciPy
    columns = assignment.min_cost_assignment(transport, 1, copies)
    assert np.array_equal(np.bincount(columns, minlength=len(copies)), copies)
    optimum = ot.emd2(np.ones(len(transport)), copies.astype(np.float64), transport)
    assert transport[np.arange(len(transport)), columns].sum() == pytest.approx(optimum, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_pairs_match_pot(seed):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(2, 3, 20, 24, generator=generator, dtype=torch.float64)
    y = 0.5 * x + 0.5 * y
    assert exact_iwd(x, y, 5) == pytest.approx(pot_iwd(x, y, 5), rel=1e-9)
    assert exact_iwd(x, y, 3, 2) == pytest.approx(pot_iwd(x, y, 3, 2), rel=1e-9)


@pytest.mark.parametrize("name", ["0c7ac4a8c9dfa802", "629138193e021cdf", "c83cfca4bc9dd3c7"])
def test_every_kind_of_pair_matches_pot(name):
    """Noise, Gaussian noise, blur, JPEG, shifts, rotations and re-arrangements of real photos, to 1e-9."""
    path = shared_data("nips17", "images", f"{name}.png")
    for kind, (x, y) in perturbed_pairs(load_image(path), 36, seed=len(name)).items():
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind


def test_the_lower_bound_never_exceeds_the_exact_value():
    """Every kind of pair, and a pair against itself: the nearest-patch bound is at most POT's value,
    and within a factor of 4 of it (a bound that said nothing would prune nothing)."""
    photo = load_image(shared_data("nips17", "images", "629138193e021cdf.png"))
    for kind, (x, y) in perturbed_pairs(photo, 36, seed=3).items():
        exact = pot_iwd(x, y)
        assert exact / 4 < iwd_lower_bound(x, y) <= exact, kind
    assert iwd_lower_bound(x, x) == 0.0


def test_optimal_matching_is_a_permutation_of_pot_cost():
    """The matching itself (shared patches first, then the assignment) costs exactly POT's optimum."""
    photo = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))
    for kind, (x, y) in perturbed_pairs(photo, 30, seed=4).items():
        matching = optimal_matching(x, y)
        assert sorted(matching.tolist()) == list(range(len(matching))), kind
        u, v = patches(x, 7, 1), patches(y, 7, 1)
        value = float((u - v[torch.from_numpy(matching)]).abs().mean(dim=1).mean())
        assert value == pytest.approx(pot_iwd(x, y), rel=1e-9), kind


def test_the_device_route_matches_pot(monkeypatch):
    """The GPU route (torch cost matrix, row-minima certificate, else the CPU solver), run on the CPU."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")  # the module: `iwdctl.iwd` is the function

    photo = load_image(shared_data("nips17", "images", "629138193e021cdf.png"))
    monkeypatch.setattr(
        engine,
        "_assignment",
        lambda x, y, u, v, ku, kv, p, s, t: engine._device_assignment(x, y, ku, kv, p, s),
    )
    for kind, (x, y) in perturbed_pairs(photo, 30, seed=9).items():
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind


@pytest.mark.parametrize("ordered", [False, True], ids=["raster order", "block order"])
@pytest.mark.parametrize("name", ["0c7ac4a8c9dfa802", "c83cfca4bc9dd3c7"])
def test_the_float32_matrix_route_matches_pot(monkeypatch, name, ordered):
    """Large problems store the matrix in float32 and certify with exact costs, their columns in block
    order; forced here at 40 px, with the fast path off so that every kind goes through the auction.
    The matching is read back through the order: its own cost is POT's optimum."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "FLOAT32_ASSIGNMENT_SIZE", 0)
    monkeypatch.setattr(engine, "BLOCK_ORDER_PATCHES", 0 if ordered else 10**9)
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)
    photo = load_image(shared_data("nips17", "images", f"{name}.png"))
    for kind, (x, y) in perturbed_pairs(photo, 40, seed=11).items():
        expected = pot_iwd(x, y)
        assert exact_iwd(x, y) == pytest.approx(expected, rel=1e-9), kind
        matching = torch.from_numpy(optimal_matching(x, y))
        value = float((patches(x, 7, 1) - patches(y, 7, 1)[matching]).abs().mean(dim=1).mean())
        assert value == pytest.approx(expected, rel=1e-9), kind


def test_the_float32_route_without_the_repair_matches_pot(monkeypatch):
    """Where the repaired duals cannot prove the auction's assignment (forced here), the float32 route
    solves its tight graph by successive shortest paths and prices the whole matrix: still POT's."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "FLOAT32_ASSIGNMENT_SIZE", 0)
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)
    monkeypatch.setattr(assignment, "cancel_and_repair", lambda n, *args: (None, None, False))
    photo = load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png"))
    for kind, (x, y) in perturbed_pairs(photo, 36, seed=2).items():
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind


@pytest.mark.parametrize("failures", [1, 2])
def test_the_graph_auction_goes_on_until_the_repair_proves_the_optimum(monkeypatch, failures):
    """The first repairs forced to give up: the auction goes on over the tight graph, each round to a
    REFINED_GAP_DIVISOR-fold smaller gap, and the repair that follows proves the optimum, on both
    routes and every kind of pair: POT's value."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    repair, graph_auction = assignment.cancel_and_repair, assignment.graph_auction
    calls: list[bool] = []
    gaps: list[float] = []

    def failing_first(n, indptr, indices, costs, matched, duals, *rest):  # type: ignore[no-untyped-def]
        calls.append(len(calls) < failures)
        if calls[-1]:
            return matched, duals, False
        return repair(n, indptr, indices, costs, matched, duals, *rest)

    def recorded(count, *args):  # type: ignore[no-untyped-def]
        gaps.append(args[6] * count)  # eps_end times the rows: the total gap
        return graph_auction(count, *args)

    monkeypatch.setattr(assignment, "cancel_and_repair", failing_first)
    monkeypatch.setattr(assignment, "graph_auction", recorded)
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)
    photo = load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png"))
    expected_gaps = [assignment.REFINED_TOTAL_GAP / assignment.REFINED_GAP_DIVISOR**k for k in range(failures)]
    for float32_size in (0, 10**9):
        monkeypatch.setattr(engine, "FLOAT32_ASSIGNMENT_SIZE", float32_size)
        for kind, (x, y) in perturbed_pairs(photo, 36, seed=2 + failures).items():
            calls.clear()
            gaps.clear()
            assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind
            if calls:  # identical pairs skip the solver
                assert len(calls) == failures + 1, kind
                assert gaps == pytest.approx(expected_gaps), kind


def test_the_sparse_route_certifies_pairs_whose_patches_stay_in_place():
    """Noise, blur and JPEG pairs are solved on each patch's nearest patches, and certified: the
    matching it returns costs POT's optimum."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    photo = load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png"))
    for kind, (x, y) in perturbed_pairs(photo, 40, seed=5).items():
        if kind not in ("noise", "gaussian", "blur", "jpeg"):
            continue
        u, v = patches(x, 7, 1).numpy(), patches(y, 7, 1).numpy()
        for threads in (1, 2):
            matching = engine._sparse_optimum(x.numpy(), y.numpy(), u, v, 7, threads)
            assert matching is not None, kind
            value = float(np.abs(u - v[matching]).mean(axis=1).mean())
            assert value == pytest.approx(pot_iwd(x, y), rel=1e-9), kind


@pytest.mark.parametrize(("candidates", "pricing"), [((2, 3), 0), ((3, 4), 0), ((2, 3), 3)])
def test_the_sparse_route_refuses_what_it_cannot_certify(monkeypatch, candidates, pricing):
    """With few candidates on noisy pairs the sparse graph's optimum is often not the true one: the
    certificate must refuse those (None), or pricing must add the edges that make it optimal; whatever
    it returns is optimal."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "SPARSE_CANDIDATES", candidates)
    monkeypatch.setattr(engine, "SPARSE_DISTINCT_SHARE", 0.0)
    monkeypatch.setattr(engine, "SPARSE_PRICING_ROUNDS", pricing)
    solved: list[np.ndarray] = []

    def recording(*args):  # type: ignore[no-untyped-def]
        result = assignment.shortest_paths_finish(*args)
        solved.append(result[0])
        return result

    monkeypatch.setattr(engine, "shortest_paths_finish", recording)
    accepted = suboptimal_first = 0
    for seed in range(60):
        generator = torch.Generator().manual_seed(seed)
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 10, 10, generator=generator, dtype=torch.float64), 3, 1, 1)[
            0
        ]
        y = (x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
        u, v = patches(x, 3, 1).numpy(), patches(y, 3, 1).numpy()
        cost = cost_matrix(x, y, 3)
        optimum = cost[linear_sum_assignment(cost)].sum()
        solved.clear()
        matching = engine._sparse_optimum(x.numpy(), y.numpy(), u, v, 3, 1)
        suboptimal_first += bool(solved) and cost[np.arange(len(cost)), solved[0]].sum() > optimum * (1 + 1e-9)
        if matching is not None:
            accepted += 1
            assert cost[np.arange(len(cost)), matching].sum() == pytest.approx(optimum, rel=1e-12), seed
    # Graphs whose own optimum was not the true one occurred: refused without pricing, repaired with it.
    assert accepted > 0 and suboptimal_first > 0


def test_the_sparse_route_adds_the_diagonal_where_candidates_miss_a_column(monkeypatch):
    """Where some patch of y is nobody's candidate, the patches at the same place join the graph (a
    perfect matching exists): such pairs are certified, and what the route returns is optimal."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "SPARSE_CANDIDATES", (1, 2))
    monkeypatch.setattr(engine, "SPARSE_DISTINCT_SHARE", 0.0)
    uncovered = certified = 0
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 10, 10, generator=generator, dtype=torch.float64), 3, 1, 1)[
            0
        ]
        y = (x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
        _, nearest = row_nearest(x, y, 3, 3)
        if len(np.unique(nearest[:, :2])) == len(nearest):
            continue
        uncovered += 1
        u, v = patches(x, 3, 1).numpy(), patches(y, 3, 1).numpy()
        cost = cost_matrix(x, y, 3)
        matching = engine._sparse_optimum(x.numpy(), y.numpy(), u, v, 3, 1)
        if matching is not None:
            certified += 1
            optimum = cost[linear_sum_assignment(cost)].sum()
            assert cost[np.arange(len(cost)), matching].sum() == pytest.approx(optimum, rel=1e-12), seed
    # Before the diagonal every one of these was refused at once.
    assert uncovered > 30 and certified > 0


def test_row_nearest_agrees_with_the_matrix():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 19, 23, generator=generator, dtype=torch.float64)
    reference = cost_matrix(x, y, 5) * 75
    for threads in (1, 3):
        sums, columns = row_nearest(x, y, 5, 6, threads)
        np.testing.assert_allclose(sums, np.sort(reference, axis=1)[:, :6], rtol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(reference, columns, axis=1), sums, rtol=1e-5)


def test_real_pairs_shift_beats_noise():
    image = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))
    x = analysis_view(image[None].double(), 40)[0]
    generator = torch.Generator().manual_seed(0)
    noise = (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1)
    rolled = torch.roll(x, 3, dims=2)  # many identical patches: exercises the cancellation
    assert exact_iwd(x, rolled) == pytest.approx(pot_iwd(x, rolled), rel=1e-9)
    # The property IWD rests on: a shift moves pixels far in l2 but barely changes the patches.
    assert (rolled - x).norm() > (noise - x).norm()
    assert exact_iwd(x, rolled) < 0.5 * exact_iwd(x, noise)


def test_metric_properties():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 18, 18, generator=generator, dtype=torch.float64)
    assert exact_iwd(x, x) == 0.0
    assert exact_iwd(x, y) == pytest.approx(exact_iwd(y, x), rel=1e-12)
    identity = (patches(x, 7, 1) - patches(y, 7, 1)).abs().mean(dim=1).mean().item()
    assert exact_iwd(x, y) <= identity + 1e-15
    assert exact_iwd(x, y) > 0


def test_batched_api_and_sizes():
    generator = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 2, 3, 80, 100, generator=generator)
    values = iwd(x, y, size=32)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values[1].item() == pytest.approx(iwd(x[1], y[1], size=32).item())
    assert iwd(x[0], y[0], size=32, device="cpu").item() == pytest.approx(values[0].item())
    assert analysis_size(80, 100, 32) == (32, 40) and analysis_size(20, 30, 32) == (20, 30)
    assert analysis_size(80, 100, 0) == (80, 100)
    with pytest.raises(InputError, match="differ"):
        iwd(x[0], y[0, :, :50])
    with pytest.raises(InputError, match="smaller than"):
        iwd(torch.rand(3, 5, 5), torch.rand(3, 5, 5))


def test_the_estimate_is_a_matching_within_rounding_of_iwd():
    """The estimate is the float64 cost of a matching priced against the whole float32 matrix: never
    below IWD, above it by float32 rounding at most (ties resolved differently), on every kind of pair,
    and its certified bound little more than that rounding."""
    photo = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))
    for kind, (x, y) in perturbed_pairs(photo, 24, seed=5).items():
        exact = exact_iwd(x, y)
        estimate, bound = estimate_iwd(x, y, tolerance=0.0)  # pricing to the end: no row breaks the duals
        assert abs(estimate - exact) <= bound * exact, kind
        assert -1e-15 <= estimate - exact <= 1e-6 * exact, kind
        assert bound < 1e-3, kind  # float32 rounding, in units of the largest cost (noise: IWD 0.0014)
        estimate, bound = estimate_iwd(x, y)  # to the default tolerance, 1e-3, plus that rounding
        assert -1e-15 <= estimate - exact <= bound * exact and bound < 2e-3, kind
    value = iwd_pair(x.float(), y.float(), size=0, approx=True)
    assert value.exact is False and 0 < value.bound < 1e-3
    assert estimate_iwd(x, x) == (0.0, 0.0)  # a matching of zero cost: exact, not an infinite relative bound


def test_the_matchings_pricing_reaches_iwd_from_a_thin_graph(monkeypatch):
    """With one candidate per row and column the first graph holds little besides the diagonal; the
    rounds that add the candidates of rows and columns breaking the duals still end at IWD (another
    photo, 36 px)."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "CANDIDATES", 1)
    monkeypatch.setattr(engine, "MATCHING_ROUNDS", 100)
    photo = load_image(shared_data("nips17", "images", "001b5e6f1b89fd3b.png"))
    for kind, (x, y) in perturbed_pairs(photo, 36, seed=6).items():
        exact = exact_iwd(x, y)
        estimate, bound = estimate_iwd(x, y, tolerance=0.0)
        assert -1e-15 <= estimate - exact <= 1e-6 * exact, kind
        assert abs(estimate - exact) <= bound * exact and bound < 1e-3, kind


def test_without_numba_the_estimate_is_the_sinkhorn_brackets_lower_end(monkeypatch):
    """Without the matching, the estimate is the lower end of a certified bracket: IWD <= estimate x
    (1 + bound), and the estimate exceeds IWD by float32 rounding at most, which the bound covers."""
    import importlib

    monkeypatch.setattr(importlib.import_module("iwdctl.iwd"), "graph_auction", None)
    photo = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))
    for kind, (x, y) in perturbed_pairs(photo, 24, seed=5).items():
        exact = exact_iwd(x, y)
        estimate, bound = estimate_iwd(x, y)
        assert abs(estimate - exact) <= bound * exact, kind
        assert exact <= estimate * (1 + bound), kind  # the lower end: IWD lies above it, within the bound
        assert estimate - exact <= 1e-5 * exact, kind  # above IWD by float32 rounding only (blur: 1.8e-6)
        if kind in ("noise", "gaussian", "blur", "jpeg"):
            assert bound < 1e-3, kind  # moved patches (shift, rotation, re-arrangement) converge slower


def test_other_distances():
    generator = torch.Generator().manual_seed(6)
    x, y = torch.rand(2, 2, 3, 16, 16, generator=generator, dtype=torch.float64)
    assert torch.allclose(distances.L2()(x, y), (x - y).flatten(1).norm(dim=1))
    assert torch.allclose(distances.Linf()(x, y), (x - y).flatten(1).abs().max(dim=1).values)
    ssim = distances.SSIM()
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ssim(x, y) < 0.2).all()
    assert ssim(x, (x + 0.01).clamp(0, 1))[0] > ssim(x, (x + 0.1).clamp(0, 1))[0]
    np.testing.assert_allclose(distances.IWD(patch=3, size=0)(x, y).numpy(), [exact_iwd(a, b, 3) for a, b in zip(x, y)])


def test_ssim_equals_a_direct_windowed_computation():
    """SSIM (Wang et al. 2004) computed window by window with the 2-D Gaussian weights, in numpy."""
    generator = torch.Generator().manual_seed(8)
    x = torch.rand(1, 3, 17, 15, generator=generator, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    coordinates = np.arange(11) - 5.0
    gauss = np.exp(-(coordinates**2) / (2 * 1.5**2))
    weights = np.outer(gauss, gauss) / gauss.sum() ** 2
    values = []
    for channel in range(3):
        a, b = x[0, channel].numpy(), y[0, channel].numpy()
        for top in range(17 - 10):
            for left in range(15 - 10):
                wa, wb = a[top : top + 11, left : left + 11], b[top : top + 11, left : left + 11]
                mu_a, mu_b = (weights * wa).sum(), (weights * wb).sum()
                var_a = (weights * wa * wa).sum() - mu_a**2
                var_b = (weights * wb * wb).sum() - mu_b**2
                cov = (weights * wa * wb).sum() - mu_a * mu_b
                c1, c2 = 0.01**2, 0.03**2
                values.append(
                    (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
                )
    assert float(distances.SSIM()(x, y)[0]) == pytest.approx(float(np.mean(values)), rel=1e-12)


@pytest.mark.parametrize(("source", "target"), [((299, 299), (64, 64)), ((224, 300), (64, 86)), ((40, 50), (64, 77))])
def test_the_numpy_resize_equals_torch(source, target):
    """The CPU path resizes NumPy arrays; it must equal torch's antialiased bilinear interpolation."""
    generator = torch.Generator().manual_seed(sum(source))
    images = torch.rand(2, 3, *source, generator=generator, dtype=torch.float64)
    reference = torch.nn.functional.interpolate(images, size=target, mode="bilinear", antialias=True).clamp(0, 1)
    np.testing.assert_allclose(resize_array(images.numpy(), target), reference.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_patch_array_equals_unfold(stride):
    image = torch.rand(3, 17, 21, generator=torch.Generator().manual_seed(stride), dtype=torch.float64)
    np.testing.assert_array_equal(patch_array(image.numpy(), 5, stride), patches(image, 5, stride).numpy())


def test_numpy_and_tensor_inputs_give_the_same_iwd():
    photo = load_image(shared_data("nips17", "images", "629138193e021cdf.png"))
    noisy = (photo + 0.03 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    from_tensors = iwd_pair(photo, noisy, size=40, device="cpu")
    from_arrays = iwd_pair(photo.numpy(), noisy.numpy(), size=40, device="cpu")
    assert from_arrays.value == pytest.approx(from_tensors.value, rel=1e-12)
    view = analysis_view(torch.stack([photo, noisy]).double(), 40)
    assert from_arrays.value == pytest.approx(pot_iwd(view[0], view[1]), rel=1e-9)


def test_a_half_size_probe_spares_moved_pairs_the_sweep(monkeypatch):
    """Large problems probe a half-size copy first: a rotated pair is refused after the probe alone,
    a noisy one still goes the sparse route, and both values stay POT's."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "SPARSE_PROBE_PATCHES", 500)
    sweeps: list[int] = []

    def recording(x, y, patch, count, threads=1, offsets=None):  # type: ignore[no-untyped-def]
        sweeps.append(count)
        return row_nearest(x, y, patch, count, threads, offsets)

    monkeypatch.setattr(engine, "row_nearest", recording)
    pairs = perturbed_pairs(load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png")), 48, seed=2)
    for kind, sparse in (("noise", True), ("rotation", False)):
        x, y = (view.numpy() for view in pairs[kind])
        sweeps.clear()
        matching = engine._sparse_optimum(x, y, engine.patch_array(x, 7, 1), engine.patch_array(y, 7, 1), 7, 1)
        assert (matching is not None) == sparse, kind
        assert sweeps[0] == 1 and (len(sweeps) > 1) == sparse, (kind, sweeps)
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(*pairs[kind]), rel=1e-9), kind


def test_shared_patches_are_found_and_their_absence_is_quick():
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    x = analysis_view(load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))[None].double(), 32)[0]
    u = patch_array(x.numpy(), 7, 1)
    rolled = patch_array(torch.roll(x, 3, dims=2).numpy(), 7, 1)
    keep_u, keep_v, _, _ = engine._unshared(u, rolled)
    assert 0 < keep_u.sum() < len(u) and keep_u.sum() == keep_v.sum()
    noisy = patch_array((x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).numpy(), 7, 1)
    keep_u, keep_v, _, _ = engine._unshared(u, noisy)
    assert keep_u.all() and keep_v.all()


def test_listed_costs_equal_the_definition():
    from iwdctl.costs import pair_costs

    generator = np.random.default_rng(0)
    u, v = generator.random((50, 27)), generator.random((40, 27))
    rows, columns = generator.integers(0, 50, 300), generator.integers(0, 40, 300)
    np.testing.assert_allclose(pair_costs(u, v, rows, columns), np.abs(u[rows] - v[columns]).mean(axis=1), rtol=1e-14)


def test_degenerate_pairs_are_certified_without_the_searches(monkeypatch):
    """A dark photo against its noisy copy (noise clipped at 0) has blocks of exactly tied entries:
    the auction leaves hundreds of tight edges per row, where the shortest-path finish crawled (35 s
    for one 64 x 64 pair) and the network simplex took seconds. The auction's assignment is proved
    optimal by repaired duals instead, with neither of them called, and the value stays POT's."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)  # the dense route, always
    tight_per_row: list[float] = []
    tight = assignment.tight_edges

    def recording(cost, prices, assigned, *rest):  # type: ignore[no-untyped-def]
        rows, columns = tight(cost, prices, assigned, *rest)
        tight_per_row.append(len(rows) / len(cost))
        return rows, columns

    def refused(*args):  # type: ignore[no-untyped-def]
        raise AssertionError("the certificate should have sufficed")

    monkeypatch.setattr(assignment, "tight_edges", recording)
    monkeypatch.setattr(assignment, "network_simplex", refused)
    monkeypatch.setattr(assignment, "_finish", refused)
    dark = perturbed_pairs(load_image(shared_data("nips17", "images", "65c1808390bd18c5.png")), 40, seed=3)
    for kind in ("noise", "gaussian"):
        x, y = dark[kind]
        tight_per_row.clear()
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9), kind
        assert tight_per_row and tight_per_row[0] > 100, kind  # the degenerate case it is for


@pytest.mark.parametrize("seed", range(3))
def test_cycle_cancelling_reaches_the_optimum_from_any_matching(seed):
    """From a random matching and zero duals, on the complete graph, the repair cancels negative cycles
    until its duals prove the matching optimal (the optimum of SciPy)."""
    rng = np.random.default_rng(seed)
    n = [5, 40, 90][seed]
    cost = [rng.random((n, n)), rng.integers(0, 4, (n, n)) / 4.0, np.abs(rng.random((n, 1)) - rng.random((1, n)))][seed]
    rows, columns = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    start = rng.permutation(n)
    matched, duals, repaired = assignment.cancel_and_repair(
        n, np.arange(n + 1) * n, columns, cost[rows, columns], start, np.zeros(n), 1e-15, 10**6
    )
    assert repaired and sorted(matched.tolist()) == list(range(n))
    best = linear_sum_assignment(cost)[1]
    assert cost[np.arange(n), matched].sum() == pytest.approx(cost[np.arange(n), best].sum(), rel=1e-12, abs=1e-12)
    row_duals = cost[np.arange(n), matched] - duals[matched]
    assert (cost - row_duals[:, None] - duals[None, :]).min() >= -1e-12


def _sparse_graph(rng: np.random.Generator, n: int, extra: int) -> tuple[np.ndarray, ...]:
    """CSR rows of a random graph holding a planted perfect matching, integer costs 0-9, and the
    planted matching."""
    planted = rng.permutation(n)
    row_columns = [np.unique(np.append(rng.choice(n, extra), planted[row])) for row in range(n)]
    indptr = np.concatenate(([0], np.cumsum([len(columns) for columns in row_columns])))
    indices = np.concatenate(row_columns)
    return indptr, indices, rng.integers(0, 10, len(indices)).astype(np.float64), planted


@pytest.mark.parametrize("seed", range(3))
def test_the_graph_auction_ends_optimal_on_integer_costs(seed):
    """Carried on from a matching and zero prices over a sparse graph, the auction ends with a perfect
    matching whose rows are each within the final epsilon of their best edge; with integer costs and
    n x epsilon < 1 that makes it optimal (Bertsekas): SciPy's optimum over the graph."""
    rng = np.random.default_rng(seed)
    n = [7, 60, 150][seed]
    indptr, indices, costs, planted = _sparse_graph(rng, n, [1, 3, 6][seed])
    eps_end = 0.5 / n
    assigned, prices, complete = assignment.graph_auction(
        n, indptr, indices, costs, planted, np.zeros(n), 4.0, eps_end, 4.0, 10.0, 10**6, None
    )
    assert complete and sorted(assigned.tolist()) == list(range(n))
    own = []
    for row in range(n):
        edges = slice(indptr[row], indptr[row + 1])
        values = costs[edges] + prices[indices[edges]]
        position = int(np.flatnonzero(indices[edges] == assigned[row])[0])
        assert values[position] <= values.min() + eps_end + 1e-9
        own.append(costs[edges][position])
    dense = np.full((n, n), 1e6)
    dense[np.repeat(np.arange(n), np.diff(indptr)), indices] = costs
    rows, best = linear_sum_assignment(dense)
    assert sum(own) == dense[rows, best].sum()


def test_the_graph_auction_stops_where_the_graph_has_no_perfect_matching():
    # Rows 0 and 1 have only column 0: they would outbid each other forever.
    indptr, indices = np.array([0, 1, 2, 4]), np.array([0, 0, 1, 2])
    _, _, complete = assignment.graph_auction(
        3, indptr, indices, np.ones(4), np.arange(3), np.zeros(3), 1.0, 0.01, 4.0, 2.0, 1000, None
    )
    assert not complete


def test_a_failed_repair_is_tried_again_after_the_graph_auction(monkeypatch):
    """Where the repair gives up (forced here, once), the auction goes on over the tight graph and the
    repair starts again from its assignment and the first auction's prices (the refined ones move by
    more than entries outside the graph allow): the matching is optimal."""
    calls: list[np.ndarray] = []
    repair = assignment.cancel_and_repair

    def failing_once(n, indptr, indices, costs, matched, duals, *rest):  # type: ignore[no-untyped-def]
        calls.append(duals.copy())
        if len(calls) == 1:
            return matched, duals, False
        return repair(n, indptr, indices, costs, matched, duals, *rest)

    monkeypatch.setattr(assignment, "cancel_and_repair", failing_once)
    cost = np.abs(np.random.default_rng(11).random((300, 1)) - np.random.default_rng(12).random((1, 300)))
    auctioned = assignment._auction_and_tight_edges(cost, 1)
    rows, columns = auctioned.rows, auctioned.columns
    matched, duals, repaired = assignment._repaired(
        rows, columns, cost[rows, columns], auctioned.assigned, auctioned.prices
    )
    assert repaired and len(calls) == 2 and np.array_equal(calls[1], -auctioned.prices)
    best = linear_sum_assignment(cost)[1]
    assert cost[np.arange(300), matched].sum() == pytest.approx(cost[np.arange(300), best].sum(), rel=1e-12)
    row_duals = cost[np.arange(300), matched] - duals[matched]
    assert (cost[rows, columns] - row_duals[rows] - duals[columns]).min() >= -1e-13


def test_listed_costs_read_the_graph_and_compute_only_the_rest():
    """Pricing's suspects take the costs of those in the graph from it; only the others are computed."""
    rng = np.random.default_rng(8)
    n = 40
    cost = rng.random((n, n))
    graph_keys = np.sort(rng.choice(n * n, 300, replace=False))
    listed_keys = np.sort(np.concatenate((rng.choice(graph_keys, 50, replace=False), rng.choice(n * n, 50))))
    listed_keys = np.unique(listed_keys)
    asked: list[int] = []

    def exact_costs(rows, columns):  # type: ignore[no-untyped-def]
        asked.extend((rows * n + columns).tolist())
        return cost[rows, columns]

    listed = assignment._listed_costs(
        (listed_keys // n, listed_keys % n), graph_keys, cost.ravel()[graph_keys], exact_costs, n
    )
    assert np.array_equal(listed, cost.ravel()[listed_keys])
    assert sorted(asked) == sorted(set(listed_keys.tolist()) - set(graph_keys.tolist()))
    assert np.array_equal(assignment.positions_in(np.array([], dtype=np.int64), graph_keys), np.empty(0))


def test_the_certificate_checks_the_whole_matrix(monkeypatch):
    """Duals repaired on a graph that lacks the better entries prove nothing: the pass over the whole
    matrix refuses the matching. On the complete graph the same call finds the optimum (from this
    far-off start, with more scans than the auction's near-optimal starts are given)."""
    monkeypatch.setattr(assignment, "REPAIR_SCANS_PER_COLUMN", 10**4)
    rng = np.random.default_rng(7)
    n = 50
    cost = rng.random((n, n))
    diagonal = np.arange(n)  # the identity: not optimal for a random matrix
    assert assignment._certified_optimum(cost, diagonal, diagonal, diagonal, np.zeros(n), 1) is None
    best = linear_sum_assignment(cost)[1]
    full_rows, full_columns = np.repeat(np.arange(n), n), np.tile(np.arange(n), n)
    certified = assignment._certified_optimum(cost, full_rows, full_columns, diagonal, np.zeros(n), 1)
    assert certified is not None
    assert cost[diagonal, certified].sum() == pytest.approx(cost[diagonal, best].sum(), rel=1e-12)


def test_the_network_simplex_is_an_optimal_matching():
    cost = np.random.default_rng(4).random((300, 300))
    columns = assignment.network_simplex(cost)
    assert columns is not None and sorted(columns) == list(range(300))
    rows, best = linear_sum_assignment(cost)
    assert cost[np.arange(300), columns].sum() == pytest.approx(cost[rows, best].sum(), rel=1e-12)


@pytest.mark.parametrize("route", ["float64", "float32"])
def test_a_dense_tight_graph_goes_to_the_network_simplex(monkeypatch, route):
    """Where the certificate fails and the auction leaves more tight edges per row than the searches
    handle well, the whole matrix goes to the network simplex; the matching stays optimal. The float32
    route builds the exact matrix for it."""
    calls: list[np.ndarray] = []
    simplex = assignment.network_simplex

    def recording(cost, copies=None):  # type: ignore[no-untyped-def]
        calls.append(cost)
        return simplex(cost, copies)

    monkeypatch.setattr(assignment, "network_simplex", recording)
    monkeypatch.setattr(assignment, "SIMPLEX_EDGES_PER_ROW", 0)
    monkeypatch.setattr(assignment, "_certified_optimum", lambda *args: None)
    monkeypatch.setattr(assignment, "cancel_and_repair", lambda n, *args: (None, None, False))
    cost = np.random.default_rng(5).random((200, 200))
    if route == "float64":
        columns = assignment.min_cost_assignment(cost)
    else:
        columns = assignment.min_cost_assignment_within(
            cost.astype(np.float32), lambda rows, columns: cost[rows, columns], exact_matrix=lambda: cost
        )
    rows, best = linear_sum_assignment(cost)
    assert len(calls) == 1 and calls[0].dtype == np.float64 and np.array_equal(calls[0], cost)
    assert cost[np.arange(200), columns].sum() == pytest.approx(cost[rows, best].sum(), rel=1e-12)


def test_exact_pricing_lists_the_violated_rows_negative_and_smallest_reduced_costs():
    # The sparse route's exact pricing of rows float32 cannot clear: a row with a violated entry brings
    # every violated entry and its 16 smallest reduced costs; a row without one brings nothing.
    rng = np.random.default_rng(7)
    u, v = rng.random((40, 12)), rng.random((40, 12))
    costs = np.abs(u[:, None] - v[None]).mean(axis=2)
    reduced_free = costs - np.sort(costs, axis=1)[:, 2:3]  # each row's third smallest at 0: two violated
    row_duals, column_duals = np.sort(costs, axis=1)[:, 2], np.zeros(40)
    row_duals[5] = costs[5].min() - 0.01  # no entry of row 5 is violated
    rows = np.array([3, 5, 17, 39])
    found = _exactly_priced(u, v, rows, row_duals, column_duals)
    expected = []
    for row in (3, 17, 39):
        negative = np.flatnonzero(reduced_free[row] < -1e-13)
        assert len(negative) == 2
        expected += [row * 40 + column for column in np.union1d(negative, np.argsort(reduced_free[row])[:16])]
    assert sorted(found.tolist()) == expected and len(expected) == 48
    assert len(_exactly_priced(u, v, np.empty(0, dtype=np.int64), row_duals, column_duals)) == 0


def test_sorted_unique_equals_numpy_unique():
    rng = np.random.default_rng(3)
    parts = [np.sort(rng.integers(0, 50, 40)), rng.integers(0, 50, 30), np.empty(0, dtype=np.int64)]
    assert np.array_equal(assignment.sorted_unique(*parts), np.unique(np.concatenate(parts)))
    assert len(assignment.sorted_unique(np.empty(0, dtype=np.int64))) == 0


def test_a_graph_with_the_assignment_added_is_the_sorted_union():
    """_with_assignment merges an assignment's edges into a tight graph's without sorting: the union,
    sorted, whether the graph holds all, some or none of them, or is empty."""
    rng = np.random.default_rng(9)
    n = 50
    assignment_keys = np.arange(n) * n + rng.permutation(n)
    for share in (0.0, 0.5, 1.0):
        extra = rng.integers(0, n * n, 300)
        kept = assignment_keys[rng.random(n) < share]
        graph = np.unique(np.concatenate((extra, kept)))
        merged = assignment._with_assignment(graph, assignment_keys)
        assert np.array_equal(merged, np.unique(np.concatenate((graph, assignment_keys))))
    assert np.array_equal(assignment._with_assignment(np.empty(0, dtype=np.int64), assignment_keys), assignment_keys)


def test_pair_costs_on_threads_equal_one_thread():
    from iwdctl import costs

    generator = np.random.default_rng(6)
    u, v = generator.random((300, 147)), generator.random((200, 147))
    count = 3 * costs.LISTED_COSTS_PER_THREAD + 7  # long enough to be split over 2 and over 3 threads
    rows, columns = generator.integers(0, 300, count), generator.integers(0, 200, count)
    one = costs.pair_costs(u, v, rows, columns)
    assert np.array_equal(costs.pair_costs(u, v, rows, columns, threads=2), one)
    assert np.array_equal(costs.pair_costs(u, v, rows, columns, threads=3), one)
    np.testing.assert_allclose(one[:50], np.abs(u[rows[:50]] - v[columns[:50]]).mean(axis=1), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tied", [False, True])
def test_block_floors_skip_only_blocks_that_cannot_matter(dtype, tied):
    """The passes read a block only where its cost floor (plus a price or dual floor) does not rule it
    out: the auction's columns and prices, the row minima and the edges below a threshold are those
    of reading every block (floors of -inf), on matrices with and without exact ties, whose size is
    not a multiple of the block."""
    rng = np.random.default_rng(7)
    n = 5 * assignment.SCAN_BLOCK + 17
    # Points on a line, the columns' in order: far blocks have high floors (as far patches do).
    rows, columns = rng.random(n), np.sort(rng.random(n))
    cost = np.abs(rows[:, None] - columns[None]) + 0.1 * rng.random((n, n))
    cost = (np.round(cost * 12) / 12 if tied else cost).astype(dtype)
    floors, top, column_minima = assignment.block_floors(cost, threads=2)
    assert floors.shape == (n, n // assignment.SCAN_BLOCK) and top == pytest.approx(float(cost.max() - cost.min()))
    blocked = n - n % assignment.SCAN_BLOCK
    assert np.array_equal(floors, cost[:, :blocked].reshape(n, -1, assignment.SCAN_BLOCK).min(axis=2))
    assert column_minima.dtype == np.float64 and np.array_equal(column_minima, cost.min(axis=0))
    unbounded = np.full_like(floors, -np.inf)
    eps_end = assignment.FINAL_TOTAL_GAP / n
    skipping = assignment.auction(cost, floors, -column_minima, top / 32, eps_end, assignment.SCALING, None)
    reading = assignment.auction(cost, unbounded, -column_minima, top / 32, eps_end, assignment.SCALING, None)
    assert np.array_equal(skipping[0], reading[0]) and np.array_equal(skipping[1], reading[1])
    assigned, prices = skipping
    row_minima = assignment.row_minima(cost, prices, 2, floors)
    assert np.array_equal(row_minima, (cost + prices).min(axis=1))
    for absolute, relative in [(1e-3, 0.0), (0.0, 2.0**-22), (0.05, 0.01)]:
        skipped = assignment.edges_below(cost, row_minima, -prices, absolute, relative, 2, floors)
        read = assignment.edges_below(cost, row_minima, -prices, absolute, relative, 2)
        assert len(read[0]) >= n and all(np.array_equal(a, b) for a, b in zip(skipped, read))


def _transport_problem(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A cost matrix of 150 rows onto columns that stand for 1-12 identical columns each (summing to
    150): random, tied (quarters) or degenerate (|a_i - b_j|) costs."""
    rng = np.random.default_rng(seed)
    copies = rng.integers(1, 13, 60)
    copies = copies[: int(np.searchsorted(np.cumsum(copies), 150))]
    copies = np.append(copies, 150 - copies.sum()) if copies.sum() < 150 else copies
    shape = (150, len(copies))
    kind = seed % 3
    cost = [
        rng.random(shape),
        rng.integers(0, 4, shape) / 4.0,
        np.abs(rng.random((150, 1)) - rng.random((1, shape[1]))),
    ][kind]
    return cost, copies


@pytest.mark.parametrize("route", ["repair", "graph auction", "network simplex", "copies listed"])
@pytest.mark.parametrize("seed", range(3))
def test_columns_with_copies_are_solved_as_a_transport_problem(monkeypatch, seed, route):
    """min_cost_assignment with `copies`: each column takes as many rows as it has copies, at POT's optimal
    transport cost, on every route: the repair proves it at once; proves it after the graph auction
    (the repair fails once); else the network simplex on the columns with their copies; else the
    copies listed one by one as an assignment problem (POT missing)."""
    cost, copies = _transport_problem(seed)
    repair = assignment.cancel_and_repair
    calls: list[bool] = []

    def failing(count, indptr, indices, costs, matched, duals, *rest):  # type: ignore[no-untyped-def]
        calls.append(route == "graph auction" and len(calls) > 0)
        if not calls[-1] and route != "repair":
            return matched, duals, False
        return repair(count, indptr, indices, costs, matched, duals, *rest)

    monkeypatch.setattr(assignment, "cancel_and_repair", failing)
    if route == "copies listed":
        monkeypatch.setattr(assignment, "network_simplex", lambda cost, copies=None: None)
    columns = assignment.min_cost_assignment(cost, 1, copies)
    assert np.array_equal(np.bincount(columns, minlength=len(copies)), copies)
    optimum = ot.emd2(np.ones(150), copies.astype(np.float64), cost)
    assert cost[np.arange(150), columns].sum() == pytest.approx(optimum, rel=1e-12, abs=1e-12)
    listed = np.repeat(np.arange(len(copies)), copies)
    assert optimum == pytest.approx(cost[:, listed][linear_sum_assignment(cost[:, listed])].sum(), rel=1e-12)
    if route == "graph auction":
        assert calls == [False, True]


@pytest.mark.parametrize("seed", range(3))
def test_cycle_cancelling_with_copies_reaches_the_optimal_transport(seed):
    """From any plan that gives each column its number of rows, on the complete graph, the repair
    cancels negative cycles (each column keeping its rows' number) until its duals prove it optimal."""
    cost, copies = _transport_problem(seed)
    n, columns = cost.shape
    start = np.random.default_rng(seed).permutation(np.repeat(np.arange(columns), copies))
    edge_columns = np.tile(np.arange(columns), n)
    matched, duals, repaired = assignment.cancel_and_repair(
        n, np.arange(n + 1) * columns, edge_columns, cost.ravel(), start, np.zeros(columns), 1e-15, 10**7
    )
    assert repaired and np.array_equal(np.bincount(matched, minlength=columns), copies)
    optimum = ot.emd2(np.ones(n), copies.astype(np.float64), cost)
    assert cost[np.arange(n), matched].sum() == pytest.approx(optimum, rel=1e-12, abs=1e-12)
    row_duals = cost[np.arange(n), matched] - duals[matched]
    assert (cost - row_duals[:, None] - duals[None, :]).min() >= -1e-12


def test_the_graph_auction_with_copies_ends_optimal_on_integer_costs():
    """The graph auction over columns with copies (each column's copies priced in a heap) ends with every
    column holding its copies' number of rows, each row within the final epsilon of its best edge: on
    integer costs with n x epsilon < 1, POT's optimal transport over the graph."""
    rng = np.random.default_rng(4)
    n, columns = 120, 30
    copies = np.full(columns, 4)
    planted = rng.permutation(np.repeat(np.arange(columns), copies))
    row_columns = [np.unique(np.append(rng.choice(columns, 4), planted[row])) for row in range(n)]
    indptr = np.concatenate(([0], np.cumsum([len(row) for row in row_columns])))
    indices = np.concatenate(row_columns)
    costs = rng.integers(0, 10, len(indices)).astype(np.float64)
    offsets = np.concatenate(([0], np.cumsum(copies)))
    assigned, prices, complete = assignment.graph_auction(
        n, indptr, indices, costs, planted, np.zeros(columns), 4.0, 0.5 / n, 4.0, 10.0, 10**6, offsets
    )
    assert complete and np.array_equal(np.bincount(assigned, minlength=columns), copies)
    dense = np.full((n, columns), 1e6)
    dense[np.repeat(np.arange(n), np.diff(indptr)), indices] = costs
    assert dense[np.arange(n), assigned].sum() == pytest.approx(ot.emd2(np.ones(n), copies * 1.0, dense), abs=1e-9)


@pytest.mark.parametrize("flat", ["y", "x"])
def test_a_copy_with_a_flat_region_is_solved_onto_its_distinct_patches(monkeypatch, flat):
    """A copy whose top half is one flat colour (a dark photo's JPEG copy, in effect) has hundreds of
    identical patches that x does not share: the problem goes to the transport onto the distinct
    patches (the transposed one where x holds them), and the value stays POT's."""
    import importlib

    engine = importlib.import_module("iwdctl.iwd")
    monkeypatch.setattr(engine, "_sparse_optimum", lambda *args: None)
    planned = []
    plan = engine._plan_of_copies

    def recording(*args):  # type: ignore[no-untyped-def]
        planned.append(len(np.unique(args[6])))
        return plan(*args)

    monkeypatch.setattr(engine, "_plan_of_copies", recording)
    photo = load_image(shared_data("nips17", "images", "c83cfca4bc9dd3c7.png")).double()
    x = analysis_view(photo[None], 40)[0]
    generator = torch.Generator().manual_seed(6)
    y = (x + 0.02 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    y[:, :20] = torch.tensor([0.1, 0.12, 0.08], dtype=torch.float64)[:, None, None]
    if flat == "x":
        x, y = y, x
    assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9)
    assert planned and planned[0] <= engine.DISTINCT_SHARE * 34 * 34
