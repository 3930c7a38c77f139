"""The re-arrangement the default IWDA starts from: seams, moves by whole analysis pixels, choice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from iwdctl.images import load_image, preprocess
from iwdctl.iwd import analysis_view, exact_iwd, optimal_matching
from iwdctl.rearrange import REACH, band_displacement, displace, rearrange, seam_path
from tests.conftest import shared_data


def test_seam_path_is_the_cheapest_connected_path():
    generator = np.random.default_rng(3)
    cost = generator.random((5, 4))
    cost[2, 1] = np.inf
    best = min(
        (
            path
            for path in itertools.product(range(4), repeat=5)
            if all(abs(a - b) <= 1 for a, b in itertools.pairwise(path))
        ),
        key=lambda path: sum(cost[row, column] for row, column in enumerate(path)),
    )
    assert tuple(seam_path(cost)) == best


def test_compiled_seams_choose_as_the_numpy_programme(monkeypatch):
    import iwdctl.rearrange as module

    generator = np.random.default_rng(4)
    # Ties (few distinct values) and forbidden columns (band_displacement's): the same leftmost choices.
    cost = generator.integers(0, 3, (6, 9, 30, 17)).astype(np.float64)
    cost[..., 2:5] = np.inf
    cost[1, 2, :, 12:] = np.inf
    compiled = seam_path(cost)
    monkeypatch.setattr(module, "_seam_kernel", None)
    assert np.array_equal(compiled, seam_path(cost))


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    names = ("0c7ac4a8c9dfa802", "629138193e021cdf")
    return torch.stack(
        [preprocess(load_image(shared_data("nips17", "images", f"{name}.png")), 224, 0.875) for name in names]
    )


def _expected_choice(image: torch.Tensor, pool: torch.Tensor, count: int, floor: float) -> list[int]:
    """rearrange's choice among `pool` (draw order) recomputed with every exact IWD: moves reaching
    the floor in increasing IWD, each the floor away from those taken, then the others by reach."""
    distinct = [draw for draw in range(len(pool)) if not any(torch.equal(pool[draw], pool[o]) for o in range(draw))]
    views = analysis_view(torch.cat([image[None], pool]).double(), 64).numpy()
    distances = {draw: exact_iwd(views[0], views[1 + draw]) for draw in distinct}
    lengths = {draw: float((pool[draw] - image).norm()) for draw in distinct}
    reached = sorted((d for d in distinct if lengths[d] >= floor), key=lambda d: (distances[d], d))
    kept: list[int] = []
    for draw in reached:
        if len(kept) < count and all(float((pool[draw] - pool[other]).norm()) >= floor for other in kept):
            kept.append(draw)
    rest = sorted(set(distinct) - set(reached), key=lambda d: (-lengths[d], d))
    ranking = kept + [d for d in reached if d not in kept] + rest
    return [ranking[rank % len(ranking)] for rank in range(count)]


def test_a_photo_is_re_arranged_by_whole_patches_at_the_moves_of_least_iwd(photos):
    """The band moves one analysis pixel: a share of the analysis view's patches are matched to the
    patch one position over (content moved, not perturbed in place). Of the pool of moves drawn from
    the image's generator, those that reach the l2 floor are taken in increasing exact IWD (every one
    computed here, where the function prunes with a lower bound), each the floor away from those
    taken before; the first is the one `count` = 1 keeps."""
    candidates, count = 6, 3
    seeds = (1, 2)
    moved = rearrange(photos, [torch.Generator().manual_seed(seed) for seed in seeds], 64, 7, candidates, count)
    assert moved.shape == (len(photos), count, *photos.shape[1:])
    single = rearrange(photos, [torch.Generator().manual_seed(seed) for seed in seeds], 64, 7, candidates)
    assert torch.equal(single[:, 0], moved[:, 0])
    views = analysis_view(torch.cat([photos, moved.flatten(0, 1)]).double(), 64).numpy()
    floor = REACH * photos[0].numel() ** 0.5
    for index, seed in enumerate(seeds):
        for first, second in itertools.combinations(moved[index], 2):
            assert float((first - second).norm()) >= floor
        assert all(float((one - photos[index]).norm()) >= floor for one in moved[index])
        sigma = optimal_matching(views[len(photos) + count * index], views[index], 7)
        offsets = sigma - np.arange(len(sigma))
        relocated = offsets != 0
        assert relocated.mean() > 0.04
        assert np.isin(offsets[relocated], (-58, -1, 1, 58)).mean() > 0.7  # one position over (58 per row)
        generator = torch.Generator().manual_seed(seed)
        original = photos[index].double().numpy()
        fields = [
            band_displacement(original, 3.5, draw % 2 == 0, draw % 4 < 2, generator) for draw in range(candidates)
        ]
        pool = displace(photos[index].expand(candidates, -1, -1, -1), torch.from_numpy(np.stack(fields)))
        apart: list[torch.Tensor] = []  # moves reaching the floor, each the floor from those before (draw order)
        for one in pool:
            if float((one - photos[index]).norm()) >= floor and all(float((one - o).norm()) >= floor for o in apart):
                apart.append(one)
        if len(apart) < count:
            # The first photo is smooth: whole-image bands, drawn next, join the pool.
            fields += [
                band_displacement(original, 3.5, draw % 2 == 0, draw % 4 < 2, generator, 1.0)
                for draw in range(candidates)
            ]
            pool = displace(photos[index].expand(len(fields), -1, -1, -1), torch.from_numpy(np.stack(fields)))
        expected = _expected_choice(photos[index], pool, count, floor)
        for rank in range(count):
            assert torch.equal(moved[index, rank], pool[expected[rank]])


def test_a_short_band_moves_only_its_share_of_the_rows():
    """With length 0.3 the displacement is zero outside one run of rows that spans 30% of the height;
    within it the band moves by the full analysis pixel."""
    image = np.random.default_rng(0).random((3, 96, 80))
    field = band_displacement(image, 2.0, True, True, torch.Generator().manual_seed(0), 0.3)
    moving = np.nonzero(np.abs(field).max(axis=(0, 2)) > 0)[0]
    assert np.all(np.diff(moving) == 1) and len(moving) <= round(0.3 * 96)
    assert np.abs(field).max() == 2.0 and np.all(field[1] == 0)


def test_moves_too_short_fall_back_to_whole_image_bands():
    """A nearly flat image: no short band moves it REACH * sqrt(3 H W) in l2, so bands spanning the
    whole image, drawn after the short ones, join the pool; the farthest-reaching come first when
    none reaches the floor either, and the samples are different moves."""
    image = 0.5 + 0.01 * torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    moved = rearrange(image, [torch.Generator().manual_seed(1)], 64, 7, 2, 2)[0]
    generator = torch.Generator().manual_seed(1)
    original = image[0].double().numpy()
    fields = [band_displacement(original, 1.0, draw % 2 == 0, draw % 4 < 2, generator) for draw in range(2)]
    fields += [band_displacement(original, 1.0, draw % 2 == 0, draw % 4 < 2, generator, 1.0) for draw in range(2)]
    each = displace(image.expand(4, -1, -1, -1), torch.from_numpy(np.stack(fields)))
    lengths = [float((one - image[0]).norm()) for one in each]
    assert max(lengths) < REACH * image[0].numel() ** 0.5
    farthest = sorted(range(4), key=lambda draw: (-lengths[draw], draw))
    assert farthest[0] >= 2 and farthest[1] >= 2  # the whole-image bands reach further
    assert torch.equal(moved[0], each[farthest[0]]) and torch.equal(moved[1], each[farthest[1]])


def test_iwda_ot_samples_are_each_re_arranged_differently(tiny_model, tiny_batch):
    from iwdctl.attacks import IWDAOT
    from iwdctl.criteria import Misclassification

    images, labels = tiny_batch
    attack = IWDAOT(tiny_model, steps=2)
    samples = attack.sample(images[:1], Misclassification(labels[:1]), [[1, 2, 3]])[0]
    assert all(float((sample - images[0]).norm()) > 0.5 for sample in samples)
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])
    still = IWDAOT(tiny_model, steps=2, moves=0).sample(images[:1], Misclassification(labels[:1]), [[1, 2]])[0]
    assert float((still[0] - images[0]).norm()) < 0.5  # without moves sample 0 perturbs x
