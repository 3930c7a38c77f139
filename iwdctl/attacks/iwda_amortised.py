from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion
from iwdctl.errors import InputError
from iwdctl.images import quantize
from iwdctl.models import ImageClassifier

GENERATOR_PREFIX = "generator."


class ConditionalGenerator(nn.Module):
    """IWDD's amortised generator g(x, z): image-to-image, residual, with one noise channel.

    x~ = clamp(x + 0.5 * tanh(net([x, z])), 0, 1); the patch critic, not an l_p ball, keeps x~ close.
    Fully convolutional, so it applies to images of any size.
    """

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for in_channels in (4, channels, channels):
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (images + 0.5 * torch.tanh(self.net(torch.cat([images, noise], dim=1)))).clamp(0, 1)


def load_generator(path: str | os.PathLike[str]) -> ConditionalGenerator:
    """The generator saved with an IWDD checkpoint (`iwdctl defend --method iwdd`), in eval mode."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable safetensors checkpoint") from error
    generator_state = {
        key.removeprefix(GENERATOR_PREFIX): value for key, value in state.items() if key.startswith(GENERATOR_PREFIX)
    }
    if not generator_state:
        raise InputError(f"{path}: holds no IWDD generator (train one with `iwdctl defend --method iwdd`)")
    try:
        generator = ConditionalGenerator(generator_state["net.0.weight"].shape[0])  # its channel count
        generator.load_state_dict(generator_state)
    except (KeyError, RuntimeError) as error:
        raise InputError(f"{path}: its generator does not fit ConditionalGenerator ({error})") from error
    return generator.requires_grad_(False).eval()


class AmortisedIWDA(Attack):
    """Amortised IWDA: the conditional generator of IWDD (Li et al., "Internal Wasserstein Distance for
    Adversarial Attack and Defense", section 5, Algorithm 2) attacks new images in one forward pass.

    Distance: IWD (the generator was trained against a patch critic; no l_p ball). Each sample takes the
    first of `draws_per_sample` noise draws whose 8-bit rounding is adversarial, else the draw with the
    largest margin. How close x~ stays to x is whatever the generator learned: see the README for the
    shipped IWDD generator's measured success and IWD. Defaults: draws_per_sample = 8.
    """

    name = "iwda-amortised"
    distance = "iwd"

    def __init__(self, model: ImageClassifier, generator: str | os.PathLike[str], draws_per_sample: int = 8) -> None:
        super().__init__(model)
        self.generator = load_generator(generator).to(self.device)
        self.draws_per_sample = draws_per_sample

    @torch.no_grad()
    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        draws = self.draws_per_sample
        results = []
        for index, (image, generator) in enumerate(zip(images, generators)):
            noise = torch.randn(draws, 1, *image.shape[-2:], generator=generator).to(self.device)
            candidates = quantize(self.generator(image.expand(draws, -1, -1, -1), noise))
            margins = criterion.select(torch.full((draws,), index, dtype=torch.long)).margin(self.model(candidates))
            # The first adversarial draw when there is one (draw order is the seed's), else the closest.
            best = int((margins > 0).nonzero()[0, 0]) if (margins > 0).any() else int(margins.argmax())
            results.append(candidates[best])
        return torch.stack(results)
