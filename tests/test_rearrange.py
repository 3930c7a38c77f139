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


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    names = ("0c7ac4a8c9dfa802", "629138193e021cdf")
    return torch.stack(
        [preprocess(load_image(shared_data("nips17", "images", f"{name}.png")), 224, 0.875) for name in names]
    )


def test_a_photo_is_re_arranged_by_whole_patches_at_the_move_of_least_iwd(photos):
    """The band moves one analysis pixel: a share of the analysis view's patches are matched to the
    patch one position over (content moved, not perturbed in place), and of the candidate moves
    that reach the l2 floor the one kept has the smallest exact IWD."""
    candidates = 3
    moved = rearrange(photos, [torch.Generator().manual_seed(seed) for seed in (1, 2)], 64, 7, candidates)
    views = analysis_view(torch.cat([photos, moved]).double(), 64).numpy()
    floor = REACH * photos[0].numel() ** 0.5
    for index in range(len(photos)):
        assert float((moved[index] - photos[index]).norm()) >= floor
        sigma = optimal_matching(views[2 + index], views[index], 7)
        offsets = sigma - np.arange(len(sigma))
        relocated = offsets != 0
        assert relocated.mean() > 0.04
        assert np.isin(offsets[relocated], (-58, -1, 1, 58)).mean() > 0.7  # one position over (58 per row)
        generator = torch.Generator().manual_seed(index + 1)
        original = photos[index].double().numpy()
        fields = [
            band_displacement(original, 3.5, draw % 2 == 0, draw % 4 < 2, generator) for draw in range(candidates)
        ]
        each = displace(photos[index].expand(candidates, -1, -1, -1), torch.from_numpy(np.stack(fields)))
        distances = [exact_iwd(views[index], view) for view in analysis_view(each.double(), 64).numpy()]
        far = [float((one - photos[index]).norm()) >= floor for one in each]
        if any(far):
            assert torch.equal(moved[index], each[min((d, i) for i, d in enumerate(distances) if far[i])[1]])
        else:  # the band spanning the whole image, drawn next
            field = band_displacement(original, 3.5, True, True, generator, 1.0)
            assert torch.equal(moved[index], displace(photos[index][None], torch.from_numpy(field)[None])[0])


def test_a_short_band_moves_only_its_share_of_the_rows():
    """With length 0.3 the displacement is zero outside one run of rows that spans 30% of the height;
    within it the band moves by the full analysis pixel."""
    image = np.random.default_rng(0).random((3, 96, 80))
    field = band_displacement(image, 2.0, True, True, torch.Generator().manual_seed(0), 0.3)
    moving = np.nonzero(np.abs(field).max(axis=(0, 2)) > 0)[0]
    assert np.all(np.diff(moving) == 1) and len(moving) <= round(0.3 * 96)
    assert np.abs(field).max() == 2.0 and np.all(field[1] == 0)


def test_a_move_too_short_falls_back_to_the_whole_image():
    """A nearly flat image: no short band moves it REACH * sqrt(3 H W) in l2, so the band spans the
    whole image, drawn after the short ones."""
    image = 0.5 + 0.01 * torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    moved = rearrange(image, [torch.Generator().manual_seed(1)], 64, 7, 2)
    generator = torch.Generator().manual_seed(1)
    original = image[0].double().numpy()
    for draw in range(2):
        band_displacement(original, 1.0, draw % 2 == 0, draw % 4 < 2, generator)
    whole = displace(image, torch.from_numpy(band_displacement(original, 1.0, True, True, generator, 1.0))[None])
    assert torch.equal(moved, whole)


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
