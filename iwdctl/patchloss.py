"""Differentiable patch-distribution losses used by the IWD attacks and defense."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def patch_sets(images: torch.Tensor, patch: int, stride: int = 1) -> torch.Tensor:
    """(N, C, H, W) -> (N, C k^2, P): every k x k patch at the stride, flattened, one per column."""
    return F.unfold(images, patch, stride=stride)


def sorted_rows(values: torch.Tensor) -> torch.Tensor:
    """`values` sorted along the last axis, differentiable. On the CPU NumPy's vectorised sort finds
    the order (measured on (1024, 3025) floats: values 10x, the order 3x faster than torch.sort)."""
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.sort(dim=-1).values
    array = values.detach().numpy()
    if not values.requires_grad:
        return torch.from_numpy(np.sort(array, axis=-1))
    return values.gather(-1, torch.from_numpy(np.argsort(array, axis=-1)))


def sliced_wasserstein(reference: torch.Tensor, candidate: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Per-sample sliced 1-Wasserstein distance between two equally large point sets.

    reference, candidate: (N, d, P) (P points as columns); projections: (N, d, M) unit directions.
    Each direction's W1 between the projected sets is the mean gap between their sorted values.
    """
    directions = projections.transpose(1, 2)
    with torch.no_grad():
        projected_reference = sorted_rows(torch.bmm(directions, reference))
    projected_candidate = sorted_rows(torch.bmm(directions, candidate))
    return (projected_reference - projected_candidate).abs().mean(dim=(1, 2))


def random_directions(generators: list[torch.Generator], dim: int, count: int, device: torch.device) -> torch.Tensor:
    """(N, dim, count) random unit vectors, one independent set per sample."""
    draws = torch.stack([torch.randn(dim, count, generator=generator) for generator in generators]).to(device)
    return draws / draws.norm(dim=1, keepdim=True)


def pyramid_patch_loss(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    generators: list[torch.Generator],
    patch: int = 7,
    levels: int = 3,
    projections: int = 64,
    max_patches: int = 4096,
) -> torch.Tensor:
    """Sliced Wasserstein between the k x k patch distributions of two images over a pyramid.

    Level l halves the resolution l times; at each level the patch stride is chosen so that at
    most `max_patches` patches are compared (the sort dominates the cost). Returns (N,) losses.
    """
    total = torch.zeros(len(reference), device=reference.device)
    for level in range(levels):
        if level:
            reference = F.avg_pool2d(reference, 2)
            candidate = F.avg_pool2d(candidate, 2)
        if min(reference.shape[-2:]) < patch:
            break
        height, width = reference.shape[-2:]
        stride = 1
        while ((height - patch) // stride + 1) * ((width - patch) // stride + 1) > max_patches:
            stride += 1
        directions = random_directions(generators, reference.shape[1] * patch * patch, projections, reference.device)
        total = total + sliced_wasserstein(
            patch_sets(reference, patch, stride), patch_sets(candidate, patch, stride), directions
        )
    return total
