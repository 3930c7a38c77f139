"""Distances between a reference image and a perturbed one, as small objects (foolbox style).

Each takes batches (N, 3, H, W) in [0, 1] and returns a float64 tensor of N values.
"""

from __future__ import annotations

from typing import Protocol

import torch

from iwdctl.iwd import iwd


class Distance(Protocol):
    name: str

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor: ...


class L2:
    """sqrt(sum (x - x~)^2) over all values, at native size."""

    name = "l2"

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        return (reference.double() - perturbed.double()).flatten(1).norm(dim=1)


class Linf:
    """max |x - x~| over all values, at native size."""

    name = "linf"

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        return (reference.double() - perturbed.double()).flatten(1).abs().amax(dim=1)


class SSIM:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03.

    Computed per channel over the valid window positions and averaged, data range 1. Images
    smaller than the window use a window of their shorter side.
    """

    name = "ssim"

    def __init__(self, window: int = 11, sigma: float = 1.5) -> None:
        self.window, self.sigma = window, sigma

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        x, y = reference.double(), perturbed.double()
        size = min(self.window, *x.shape[-2:])
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        gauss = torch.exp(-(coordinates**2) / (2 * self.sigma**2))
        gauss = gauss / gauss.sum()

        def blur(image: torch.Tensor) -> torch.Tensor:
            # The Gaussian window is separable: two 1-D passes of shifted, weighted sums (float64 conv2d
            # has no fast kernel on a CPU; these are 5x faster).
            for dim in (2, 3):
                length = image.shape[dim] - size + 1
                passed = image.narrow(dim, 0, length) * float(gauss[0])
                for offset in range(1, size):
                    passed.add_(image.narrow(dim, offset, length), alpha=float(gauss[offset]))
                image = passed
            return image

        # The five maps blurred in one batch.
        mu_x, mu_y, xx, yy, xy = blur(torch.cat([x, y, x * x, y * y, x * y])).split(len(x))
        c1, c2 = 0.01**2, 0.03**2
        var_x, var_y, covariance = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        return ssim_map.flatten(1).mean(dim=1)


class IWD:
    """The internal Wasserstein distance (see iwdctl.iwd): exact unless `approx`."""

    name = "iwd"

    def __init__(self, patch: int = 7, stride: int = 1, size: int = 64, approx: bool | None = None) -> None:
        self.patch, self.stride, self.size, self.approx = patch, stride, size, approx

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        return iwd(reference, perturbed, self.patch, self.stride, self.size, self.approx)
