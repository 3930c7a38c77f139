from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from iwdctl import distances
from iwdctl.errors import InputError
from iwdctl.images import load_image
from iwdctl.iwd import analysis_size, analysis_view, exact_iwd, iwd, patch_cost_matrix, patches, sinkhorn_iwd

from .conftest import shared_data


def pot_iwd(x: torch.Tensor, y: torch.Tensor, patch: int = 7, stride: int = 1) -> float:
    """The definition, computed independently with POT: emd2 on the cityblock cost divided by d."""
    u, v = patches(x.double(), patch, stride).numpy(), patches(y.double(), patch, stride).numpy()
    cost = ot.dist(u, v, metric="cityblock") / u.shape[1]
    return float(ot.emd2([], [], cost, numItermax=10**7))


def test_cost_matrix_matches_cdist():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 23, 19, generator=generator, dtype=torch.float64)
    reference = torch.cdist(patches(x, 5, 1), patches(y, 5, 1), p=1) / 75
    assert torch.allclose(patch_cost_matrix(x, y, 5), reference, rtol=0, atol=1e-14)
    assert torch.allclose(
        patch_cost_matrix(x, y, 5, stride=2), torch.cdist(patches(x, 5, 2), patches(y, 5, 2), p=1) / 75
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_pairs_match_pot(seed):
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(2, 3, 20, 24, generator=generator, dtype=torch.float64)
    y = 0.5 * x + 0.5 * y
    assert exact_iwd(x, y, 5) == pytest.approx(pot_iwd(x, y, 5), rel=1e-9)
    assert exact_iwd(x, y, 3, 2) == pytest.approx(pot_iwd(x, y, 3, 2), rel=1e-9)


def test_real_pairs_match_pot_and_shift_beats_noise():
    image = load_image(shared_data("nips17", "images", "0c7ac4a8c9dfa802.png"))
    x = analysis_view(image[None].double(), 40)[0]
    generator = torch.Generator().manual_seed(0)
    noise = (x + (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1) * 8 / 255).clamp(0, 1)
    shifted = analysis_view(torch.roll(image, 3, dims=2)[None].double(), 40)[0]
    rolled = torch.roll(x, 3, dims=2)  # many identical patches: exercises the cancellation
    for y in (noise, shifted, rolled):
        assert exact_iwd(x, y) == pytest.approx(pot_iwd(x, y), rel=1e-9)
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
    # Permuting patch positions wholesale (a transpose keeps the patch multiset up to transposition) is not free,
    # but duplicating nothing: the value is strictly positive for different images.
    assert exact_iwd(x, y) > 0


def test_batched_api_and_sizes():
    generator = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 2, 3, 80, 100, generator=generator)
    values = iwd(x, y, size=32)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values[1].item() == pytest.approx(iwd(x[1], y[1], size=32).item())
    assert analysis_size(80, 100, 32) == (32, 40) and analysis_size(20, 30, 32) == (20, 30)
    assert analysis_size(80, 100, 0) == (80, 100)
    with pytest.raises(InputError, match="differ"):
        iwd(x[0], y[0, :, :50])
    with pytest.raises(InputError, match="smaller than"):
        iwd(torch.rand(3, 5, 5), torch.rand(3, 5, 5))


def test_sinkhorn_estimate_is_close_and_marked():
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(3, 24, 24, generator=generator, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(3, 24, 24, generator=generator, dtype=torch.float64)).clamp(0, 1)
    exact = exact_iwd(x, y)
    assert sinkhorn_iwd(x, y) == pytest.approx(exact, rel=0.05)
    from iwdctl.iwd import iwd_pair

    assert iwd_pair(x.float(), y.float(), size=0, approx=True).exact is False


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
