"""Distances between a reference image and a perturbed one, as small objects (foolbox style).

Each takes batches (N, 3, H, W) in [0, 1] and returns a float64 tensor of N values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from iwdctl.iwd import iwd

if TYPE_CHECKING:
    import torch


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
        return ssim_values(reference.double(), perturbed.double(), self.window, self.sigma)


def ssim_values(x: Any, y: Any, window: int = 11, sigma: float = 1.5) -> Any:
    """SSIM (see the class) of float64 batches (N, 3, H, W): torch tensors or NumPy arrays alike."""
    size = min(window, *x.shape[-2:])
    weights = [math.exp(-((offset - (size - 1) / 2) ** 2) / (2 * sigma**2)) for offset in range(size)]
    total = math.fsum(weights)
    gauss = [weight / total for weight in weights]

    def shifted(image: Any, axis: int, offset: int, length: int) -> Any:
        index = [slice(None)] * image.ndim
        index[axis] = slice(offset, offset + length)
        return image[tuple(index)]

    def blur(image: Any) -> Any:
        # The Gaussian window is separable: two 1-D passes of shifted, weighted sums (float64 conv2d
        # has no fast kernel on a CPU; these are 5x faster).
        for axis in (-2, -1):
            length = image.shape[axis] - size + 1
            passed = shifted(image, axis, 0, length) * gauss[0]
            for offset in range(1, size):
                passed += shifted(image, axis, offset, length) * gauss[offset]
            image = passed
        return image

    mu_x, mu_y, xx, yy, xy = (blur(image) for image in (x, y, x * x, y * y, x * y))
    c1, c2 = 0.01**2, 0.03**2
    var_x, var_y, covariance = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(ssim_map.shape[0], -1).mean(-1)


class IWD:
    """The internal Wasserstein distance (see iwdctl.iwd): exact unless `approx`."""

    name = "iwd"

    def __init__(self, patch: int = 7, stride: int = 1, size: int = 64, approx: bool | None = None) -> None:
        self.patch, self.stride, self.size, self.approx = patch, stride, size, approx

    def __call__(self, reference: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        return iwd(reference, perturbed, self.patch, self.stride, self.size, self.approx)
