from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iwdctl.attacks.base import Attack
from iwdctl.criteria import Criterion, bounded_classification_loss
from iwdctl.errors import InputError
from iwdctl.images import quantize
from iwdctl.models import ImageClassifier
from iwdctl.runtime import frozen

SCALE_FACTOR = 0.75
COARSEST_SIDE = 25
PADDING = 5  # five unpadded 3x3 convolutions shrink each side by 5 pixels


@dataclass(frozen=True)
class Preset:
    """A training schedule. `scales` None trains every scale from --start-scale, else the finest few;
    `max_channels` caps the channel count (the paper's 128 at the finest scales costs 16x the 32)."""

    iterations: int
    scales: int | None
    max_channels: int
    description: str


PRESETS: dict[str, Preset] = {
    "paper": Preset(2000, None, 128, "the paper's schedule: 2000 iterations on every scale (for GPUs)"),
    "cpu": Preset(100, 3, 32, "100 iterations on the 3 finest scales, 32 channels"),
    "quick": Preset(30, 2, 32, "30 iterations on the 2 finest scales, 32 channels (demos and tests)"),
}


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=0), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2)
    )


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class ScaleGenerator(nn.Module):
    """One scale of the SinGAN pyramid: 4 conv blocks and a tanh head, residual on the coarser output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, channels), *[_block(channels, channels) for _ in range(3)])
        self.head = nn.Sequential(nn.Conv2d(channels, 3, 3, padding=0), nn.Tanh())
        self.apply(_init)

    def forward(self, noise: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(F.pad(noise + previous, (PADDING,) * 4))) + previous


class PatchCritic(nn.Module):
    """One scale's WGAN critic: 4 conv blocks and a conv head giving a map of patch scores."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, channels), *[_block(channels, channels) for _ in range(3)])
        self.head = nn.Conv2d(channels, 1, 3, padding=0)
        self.apply(_init)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Image sizes from the coarsest (shorter side about 25) to the working size, factor about 0.75."""
    shorter = min(height, width)
    if shorter <= COARSEST_SIDE:
        return [(height, width)]
    count = math.ceil(math.log(COARSEST_SIDE / shorter) / math.log(SCALE_FACTOR)) + 1
    factor = (COARSEST_SIDE / shorter) ** (1 / (count - 1))
    return [(round(height * factor ** (count - 1 - i)), round(width * factor ** (count - 1 - i))) for i in range(count)]


def channels_at(scale: int, max_channels: int = 128) -> int:
    """32 channels, doubling every 4 scales, at most 128 (or the preset's cap)."""
    return min(32 * 2 ** (scale // 4), max_channels)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    rho = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real.device)
    mixed = (rho * real + (1 - rho) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()


def critic_scores(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's patch scores of real and fake images from one pass over both.

    One pass makes BatchNorm normalize both with the same statistics. Scored apart, each batch would
    lose its own channel means (a constant shift of the input passes the unpadded convolutions as a
    constant per channel), and the critic would be blind to a global colour shift of the fakes.
    """
    scores = critic(torch.cat([real, fake]))
    return scores[: len(real)], scores[len(real) :]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


class IWDA(Attack):
    """IWDA: Li, Cao, Zhang, Xu, Chen and Tan, "Internal Wasserstein Distance for Adversarial Attack and
    Defense" (section 4, eq. 3-6, Algorithm 1).

    Distance: IWD. Per image, a SinGAN-style pyramid (scale factor 0.75, coarsest shorter side 25,
    finest = the classifier's input size) of generators g_n and patch critics f_n (5 layers of
    Conv3x3-BatchNorm-LeakyReLU(0.2), 32 channels doubling every 4 scales up to 128, no padding inside,
    input padded once by 5 pixels, weights N(0, 0.02)); each generator is residual on the upsampled
    coarser output (tanh head). Critic: WGAN-GP, gradient penalty lambda = 0.1 on interpolates.
    Generator: -E f(g) + alpha * reconstruction (SinGAN's, which calibrates each scale's noise
    amplitude to 0.1 x the RMSE of the upsampled reconstruction) + tau * L_c, where L_c = -CE(h(x~), y)
    untargeted and CE(h(x~), y_t) targeted on each scale's sample resized to the classifier's input,
    counted until the sample is adversarial by a logit margin kappa (beyond the paper: the unbounded
    cross-entropy otherwise drives samples far past the boundary, away from x).
    Adam lr 5e-4, betas (0.5, 0.999), 3 critic and 3 generator steps per iteration, lr x0.1 at 80%.
    `start_scale` S injects x (downsampled) at scale S: higher S stays closer to x, S = 0 lets the
    coarsest generator re-arrange the image freely. K samples come from K noise draws of one trained
    pyramid; up to `draws_per_sample` draws are tried per sample to find adversarial ones.
    Defaults: tau = 0.1, alpha = 10, lambda = 0.1, kappa = 1.0, preset "cpu" (see PRESETS), start_scale
    from the preset, steps (iterations per scale) from the preset.
    """

    name = "iwda"
    distance = "iwd"

    def __init__(
        self,
        model: ImageClassifier,
        tau: float = 0.1,
        preset: str = "cpu",
        start_scale: int | None = None,
        steps: int | None = None,
        alpha: float = 10.0,
        gp_weight: float = 0.1,
        lr: float = 5e-4,
        draws_per_sample: int = 8,
        kappa: float = 1.0,
    ) -> None:
        super().__init__(model)
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        self.preset = PRESETS[preset]
        self.tau, self.alpha, self.gp_weight, self.lr = tau, alpha, gp_weight, lr
        self.start_scale = start_scale
        self.iterations = steps or self.preset.iterations  # per scale
        self.draws_per_sample = draws_per_sample
        self.kappa = kappa

    def _first_scale(self, count: int) -> int:
        if self.start_scale is not None:
            if not 0 <= self.start_scale < count:
                raise InputError(f"--start-scale must be in 0..{count - 1} for this image's {count} scales")
            return self.start_scale
        return 0 if self.preset.scales is None else max(0, count - self.preset.scales)

    def classification_loss(self, images: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """L_c of the sample resized to the classifier's input, bounded by the margin `kappa`."""
        logits = self.model(_resize(images, (self.model.input_size, self.model.input_size)))
        return bounded_classification_loss(criterion, logits, self.kappa)

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        results = []
        for index in range(len(images)):
            pyramid = self.train(
                images[index : index + 1], criterion.select(slice(index, index + 1)), generators[index]
            )
            results.append(
                pyramid.sample(1, criterion.select(slice(index, index + 1)), generators[index], self.draws_per_sample)
            )
        return torch.cat(results)

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K samples of each image from K noise draws of one pyramid, trained once per image."""
        results = []
        for index, image_seeds in enumerate(seeds):
            generator = torch.Generator().manual_seed(int(image_seeds[0]))
            image_criterion = criterion.select(slice(index, index + 1))
            image = images[index : index + 1].detach().to(self.device)

            def draw(_: list[torch.Generator], image=image, image_criterion=image_criterion, generator=generator):
                pyramid = self.train(image, image_criterion, generator)
                return pyramid.sample(len(seeds[0]), image_criterion, generator, self.draws_per_sample)

            results.append(self._run(draw, []))
        return torch.stack(results)

    def train(self, image: torch.Tensor, criterion: Criterion, generator: torch.Generator) -> TrainedPyramid:
        sizes = pyramid_sizes(*image.shape[-2:])
        reals = [_resize(image, size).clamp(0, 1) for size in sizes]
        first = self._first_scale(len(sizes))
        pyramid = TrainedPyramid(self, reals, first)
        total = len(sizes) - first
        with frozen(self.model):
            for scale in range(first, len(sizes)):
                pyramid.train_scale(scale, criterion, generator, self.iterations)
                self.progress(scale - first + 1, total, "iwda scales")
        return pyramid


class TrainedPyramid:
    """The generators of one image, trained scale by scale, and how to sample from them."""

    def __init__(self, attack: IWDA, reals: list[torch.Tensor], first: int) -> None:
        self.attack = attack
        self.reals = reals
        self.first = first
        self.generators: list[ScaleGenerator] = []
        self.noise_amplitudes: list[float] = []
        self.reconstruction_noise: torch.Tensor | None = None

    def _start(self, count: int) -> torch.Tensor:
        """What scale `first` builds on: x at the coarser scale (upsampled), or zeros at scale 0."""
        real = self.reals[self.first]
        if self.first == 0:
            return torch.zeros(count, *real.shape[1:], device=real.device)
        return _resize(self.reals[self.first - 1], tuple(real.shape[-2:])).expand(count, -1, -1, -1)

    def _noise(self, scale: int, count: int, generator: torch.Generator) -> torch.Tensor:
        real = self.reals[scale]
        # The coarsest scale of a free re-arrangement draws one noise map for all channels (as SinGAN).
        channels = 1 if scale == 0 else 3
        noise = torch.randn(count, channels, *real.shape[-2:], generator=generator).to(real.device)
        return noise.expand(-1, 3, -1, -1)

    def run(self, count: int, generator: torch.Generator | None, upto: int) -> torch.Tensor:
        """Images at scale `upto` (exclusive of its own generator when `upto` is not trained yet)."""
        current = self._start(count)
        for offset, scale_generator in enumerate(self.generators[: upto - self.first]):
            scale = self.first + offset
            target_size = tuple(self.reals[scale].shape[-2:])
            previous = _resize(current, target_size) if offset else current
            if generator is None:  # the reconstruction path: fixed noise at scale 0, none elsewhere
                noise = self.reconstruction_noise if scale == 0 else torch.zeros_like(previous)
            else:
                noise = self._noise(scale, count, generator)
            current = scale_generator(self.noise_amplitudes[offset] * noise, previous)
        if upto < len(self.reals) and self.generators[: upto - self.first]:
            current = _resize(current, tuple(self.reals[upto].shape[-2:]))
        return current

    def train_scale(self, scale: int, criterion: Criterion, generator: torch.Generator, iterations: int) -> None:
        attack = self.attack
        real = self.reals[scale]
        channels = channels_at(scale, attack.preset.max_channels)
        device = real.device
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        scale_generator, critic = ScaleGenerator(channels).to(device), PatchCritic(channels).to(device)
        with torch.no_grad():
            reconstruction_previous = self.run(1, None, scale)
            if scale == 0:
                self.reconstruction_noise = (
                    torch.randn(1, 1, *real.shape[-2:], generator=generator).to(device).expand(-1, 3, -1, -1)
                )
                amplitude = 1.0
            else:
                amplitude = 0.1 * float(F.mse_loss(reconstruction_previous, real).sqrt())
        reconstruction_noise = self.reconstruction_noise if scale == 0 else torch.zeros_like(real)
        self.noise_amplitudes.append(amplitude)
        optimizer_g = torch.optim.Adam(scale_generator.parameters(), lr=attack.lr, betas=(0.5, 0.999))
        optimizer_d = torch.optim.Adam(critic.parameters(), lr=attack.lr, betas=(0.5, 0.999))
        milestone = [int(0.8 * iterations)]
        schedule_g = torch.optim.lr_scheduler.MultiStepLR(optimizer_g, milestone, 0.1)
        schedule_d = torch.optim.lr_scheduler.MultiStepLR(optimizer_d, milestone, 0.1)
        for _ in range(iterations):
            with torch.no_grad():
                previous = self.run(1, generator, scale)
            noise = amplitude * self._noise(scale, 1, generator)
            for _ in range(3):
                fake = scale_generator(noise, previous).detach()
                real_scores, fake_scores = critic_scores(critic, real, fake)
                critic_loss = -real_scores.mean() + fake_scores.mean()
                critic_loss = critic_loss + attack.gp_weight * gradient_penalty(critic, real, fake, generator)
                optimizer_d.zero_grad()
                critic_loss.backward()
                optimizer_d.step()
            for _ in range(3):
                fake = scale_generator(noise, previous)
                reconstruction = scale_generator(amplitude * reconstruction_noise, reconstruction_previous)
                loss = -critic_scores(critic, real, fake)[1].mean() + attack.alpha * F.mse_loss(reconstruction, real)
                loss = loss + attack.tau * attack.classification_loss(fake.clamp(0, 1), criterion)
                optimizer_g.zero_grad()
                loss.backward()
                optimizer_g.step()
            schedule_g.step()
            schedule_d.step()
        scale_generator.eval()
        for parameter in scale_generator.parameters():
            parameter.requires_grad_(False)
        self.generators.append(scale_generator)

    @torch.no_grad()
    def sample(
        self, count: int, criterion: Criterion, generator: torch.Generator, draws_per_sample: int
    ) -> torch.Tensor:
        """`count` samples at the finest scale, preferring draws whose 8-bit rounding is adversarial."""
        size = self.attack.model.input_size
        draws = quantize(self.run(count * draws_per_sample, generator, len(self.reals)).clamp(0, 1))
        logits = self.attack.model(_resize(draws, (size, size)))
        repeated = criterion.select(torch.zeros(len(draws), dtype=torch.long))
        order = torch.argsort((~repeated.is_adversarial(logits)).float(), stable=True)
        return draws[order[:count]]
