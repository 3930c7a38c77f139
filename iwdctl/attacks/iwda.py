from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from iwdctl.attacks.base import Attack, ImageJob
from iwdctl.attacks.iwda_ot import IWDAOT
from iwdctl.attacks.patch_attack import default_margin
from iwdctl.criteria import Criterion, bounded_classification_loss
from iwdctl.distances import IWD
from iwdctl.errors import InputError
from iwdctl.images import quantize
from iwdctl.models import ImageClassifier
from iwdctl.rearrange import rearrange
from iwdctl.runtime import autocast, check_precision, frozen

SCALE_FACTOR = 0.75
COARSEST_SIDE = 25
PADDING = 5  # five unpadded 3x3 convolutions shrink each side by 5 pixels
# Images whose pyramids train together on a GPU by default (IWDA's docstring).
GPU_IMAGES_AT_ONCE = 16
# Steps of exact-IWD descent once a GAN sample is adversarial, and the Adam step size (IWDA's docstring).
REFINE_STEPS = 50
REFINE_LR = 0.5 / 255
# Refined draws per sample, of which the adversarial one of least IWD is kept (IWDA's docstring).
REFINED_CANDIDATES = 2
# Samples past the first build on x re-arranged: the best of this many moves (iwdctl.rearrange), ranked
# by exact IWD at this analysis size and patch (iwda-ot's defaults).
REARRANGE_MOVES = 64
REARRANGE_SIZE = 64
REARRANGE_PATCH = 7


@dataclass(frozen=True)
class Preset:
    """A training schedule. `scales` None trains every scale from --start-scale, else the finest few,
    with x injected below them, and never at scale 0 when there are more: a few hundred iterations do
    not learn an image from noise (on tiny6's 2-scale pyramids the `cpu` preset from scale 0 drew
    coloured noise, not the scene); `max_channels` caps the channel count (the paper's 128 at the
    finest scales costs 16x the 32). `classifies`: the generator's loss carries tau * L_c even when
    the refinement follows (which always carries it). A few iterations do not learn an adversarial
    re-synthesis: the classification term drifts the samples instead (IWDA's docstring), so the
    short presets leave it to the refinement and their GAN re-synthesises x alone."""

    iterations: int
    scales: int | None
    max_channels: int
    classifies: bool
    description: str


PRESETS: dict[str, Preset] = {
    "paper": Preset(2000, None, 128, True, "the paper's schedule: 2000 iterations on every scale (for GPUs)"),
    "cpu": Preset(
        8, 3, 32, False, "8 iterations on the 3 finest scales, 32 channels (about 1 minute per 224 px image)"
    ),
    "quick": Preset(4, 3, 32, False, "4 iterations on the 3 finest scales, 32 channels (demos and tests)"),
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


def stack_by_image(copies: Sequence[nn.Module]) -> nn.Module:
    """B copies of one network (different weights) as one: the B images lie side by side along the
    channels, (N, B x C, H, W), and every convolution is grouped by image, so one pass and one optimizer
    step serve all B while each image's weights see only its own channels. BatchNorm's per-channel
    statistics are then each image's own, as in B separate networks; Adam is elementwise."""
    first, count = copies[0], len(copies)
    if isinstance(first, nn.Sequential):
        return nn.Sequential(*(stack_by_image([each[i] for each in copies]) for i in range(len(first))))
    if isinstance(first, nn.Conv2d):
        stacked: nn.Module = nn.Conv2d(
            first.in_channels * count,
            first.out_channels * count,
            first.kernel_size,
            first.stride,
            first.padding,
            groups=count,
            bias=first.bias is not None,
        )
    elif isinstance(first, nn.BatchNorm2d):
        stacked = nn.BatchNorm2d(first.num_features * count, first.eps, first.momentum)
    elif isinstance(first, (nn.LeakyReLU, nn.Tanh)):
        return first
    else:
        raise TypeError(f"cannot stack {type(first).__name__} by image")
    with torch.no_grad():
        for name, tensor in [*stacked.named_parameters(), *stacked.named_buffers()]:
            if tensor.dim():  # not BatchNorm's scalar batch counter
                tensor.copy_(torch.cat([getattr(each, name) for each in copies]))
    return stacked


class _PerImageNetwork(nn.Module):
    body: nn.Module
    head: nn.Module

    @classmethod
    def stacked(cls, copies: Sequence[_PerImageNetwork]) -> _PerImageNetwork:
        """The networks of B images as one (`stack_by_image`)."""
        network = copy.deepcopy(copies[0])
        network.body = stack_by_image([each.body for each in copies])
        network.head = stack_by_image([each.head for each in copies])
        return network


class ScaleGenerator(_PerImageNetwork):
    """One scale of the SinGAN pyramid: 4 conv blocks and a tanh head, residual on the coarser output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(3, channels), *[_block(channels, channels) for _ in range(3)])
        self.head = nn.Sequential(nn.Conv2d(channels, 3, 3, padding=0), nn.Tanh())
        self.apply(_init)

    def forward(self, noise: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(F.pad(noise + previous, (PADDING,) * 4))) + previous


class PatchCritic(_PerImageNetwork):
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
    """WGAN-GP's penalty (lambda excluded) of one critic, mean over the batch."""
    rho = torch.rand(real.shape[0], 1, generator=generator).to(real.device)
    return stacked_gradient_penalty(critic, real, fake, rho)


def stacked_gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, rho: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP's penalty on the interpolates rho x real + (1 - rho) x fake of B images stacked along the
    channels (`stack_by_image`), rho (N, B): each image's gradient norm is its own; mean over the N
    samples, summed over the images (so each image's critic gets its own penalty's gradient)."""
    count = rho.shape[1]
    weights = rho.repeat_interleave(real.shape[1] // count, dim=1)[:, :, None, None]
    mixed = (weights * real + (1 - weights) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    norms = gradient.reshape(len(gradient), count, -1).norm(dim=2)
    return ((norms - 1) ** 2).mean(dim=0).sum()


def critic_scores(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's patch scores of real and fake images from one pass over both.

    One pass makes BatchNorm normalize both with the same statistics. Scored apart, each batch would
    lose its own channel means (a constant shift of the input passes the unpadded convolutions as a
    constant per channel), and the critic would be blind to a global colour shift of the fakes.
    """
    scores = critic(torch.cat([real, fake])).float()  # float32 under bf16 autocast too
    return scores[: len(real)], scores[len(real) :]


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)


def _side_by_side(images: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, H, W) -> (N, B x 3, H, W): the layout of stacked networks (`stack_by_image`)."""
    return images.transpose(0, 1).flatten(1, 2)


def _by_image(stacked: torch.Tensor, count: int) -> torch.Tensor:
    """(N, B x 3, H, W) -> (B, N, 3, H, W)."""
    return stacked.unflatten(1, (count, -1)).transpose(0, 1)


class IWDA(Attack):
    """IWDA: Li, Cao, Zhang, Xu, Chen and Tan, "Internal Wasserstein Distance for Adversarial Attack and
    Defense" (section 4, eq. 3-6, Algorithm 1).

    Distance: IWD. Per image, a SinGAN-style pyramid (scale factor 0.75, coarsest shorter side 25,
    finest = the classifier's input size) of generators g_n and patch critics f_n (5 layers of
    Conv3x3-BatchNorm-LeakyReLU(0.2), 32 channels doubling every 4 scales up to 128, no padding inside,
    input padded once by 5 pixels, weights N(0, 0.02)); each generator is residual on the upsampled
    coarser output (tanh head). As in SinGAN's code, a scale whose channel count equals the coarser
    one's starts from that scale's trained generator and critic; beyond the paper, the first scale
    trained above injected x starts as the identity (its head at zero).
    Critic: WGAN-GP, gradient penalty lambda = 0.1 on interpolates.
    Generator: -E f(g) + alpha * reconstruction (SinGAN's, which calibrates each scale's noise
    amplitude to 0.1 x the RMSE of the upsampled reconstruction) + tau * L_c, where L_c = -CE(h(x~), y)
    untargeted and CE(h(x~), y_t) targeted on each scale's sample resized to the classifier's input,
    counted until the sample is adversarial by a logit margin kappa (beyond the paper: the unbounded
    cross-entropy otherwise drives samples far past the boundary, away from x).
    Adam lr 5e-4, betas (0.5, 0.999), 3 critic and 3 generator steps per iteration, lr x0.1 at 80%.
    `start_scale` S injects x (downsampled) at scale S: higher S stays closer to x, S = 0 lets the
    coarsest generator re-arrange the image freely. K samples come from one trained pyramid; up to
    `draws_per_sample` noise draws are tried per sample to find adversarial ones. Where x is injected,
    sample k > 0 builds on x re-arranged instead (SinGAN's editing: the k-th move of a pool chosen as
    iwda-ot's starts are, iwdctl.rearrange), so the samples move content apart: from noise draws
    alone, on nips17 rows 800-803 against lite0 (preset cpu, `--num 4`, targeted), they lay 4.5 apart
    in l2 (PGD's l2 to x: 7.9); built on re-arranged x, 15.2 apart, at IWD 0.0023-0.0052 per moved
    sample (PGD: 0.0044-0.0048); untargeted (the first 3 photos) 17.6 apart at 0.0019-0.0024.

    Beyond the paper, each sample is then refined by `refine` steps of descent on the exact IWD
    (IWDAOT's loop started from the sample, Adam step 0.5/255): the critic only estimates IWD, and
    a short schedule leaves the generator's drift in the sample. The loop holds the sample adversarial
    by the margin kappa under every loader view (its margin term acts whenever the margin falls
    below) and returns the adversarial rounding of least IWD: from a sample already that adversarial
    it never raises the patch loss; from one that is not, it runs the whole loop (tau * L_c + the
    exact IWD: eq. 4 with the exact IWD for the critic's estimate), escalating tau as iwda-ot does.
    The scene stays re-synthesised (large l2). On 6 nips17 photos against lite0 (preset cpu,
    untargeted) it took the mean IWD from 0.0076 to 0.0024 with 12 iterations per scale and to
    0.0013 with 8 (PGD: 0.0046), l2 14; targeted, the GAN's samples lay further out (IWD 0.022-0.027)
    and it only reached 0.015-0.027. Hence the short presets drop tau * L_c from the generator's loss
    when the refinement follows (Preset.classifies): a few iterations learn a drift that fools the
    classifier, not an adversarial re-synthesis, so their GAN re-synthesises x and the refinement
    attacks. Targeted, on nips17 rows 800-803 (lite0, preset cpu), the mean IWD was 0.0184 with
    tau = 0.1 in the generator's loss, 0.0067 with 0.01 and 0.0021 without (PGD: 0.0046), l2 21,
    15 and 11; untargeted, on rows 300-311, 0.0029 with it (above PGD's on 2 photos) and 0.00057
    without (below PGD's on every photo; PGD: 0.0048), l2 15.8 and 13.4; all fooled.
    `candidates` draws are refined per sample and the verified adversarial one of least exact IWD is
    kept (restarts, as for PGD): where the draw is not yet adversarial, the targeted loop's escalation
    can end far out (the first nips17 photo, targeted: IWD 0.014 from one draw, 0.004 from another).
    On the first 6 nips17 photos against lite0 (preset cpu), 2 candidates took the mean IWD from
    0.00060 to 0.00021 untargeted and from 0.00470 to 0.00216 targeted (PGD on these photos: 0.0046),
    at 40-48 s and 40-43 s per image instead of 38 s and 36 s (two runs). On the robust tiny6 models
    (32 px) the two draws differ little: IWD within 0.5% of one draw's, at 1.1-1.3x its time.

    Up to `images_at_once` images train together: their networks are stacked (`stack_by_image`,
    grouped convolutions), so one optimizer step serves them all and a GPU is kept busy; each image
    keeps its own weights, noise and losses, drawn from its own generator. The float rounding of a
    grouped convolution can differ from a single one's, and GAN training amplifies such differences,
    so images trained together give samples that are reproducible for the same grouping but not
    bitwise equal to those trained alone. Hence one at a time on a CPU (where stacking gains little
    at 224 px), so that outputs do not depend on batch size or sharding, and 16 on a GPU.
    `precision` "bf16" runs the GAN's passes (generators, critics, gradient penalty, classifier) under
    bfloat16 autocast, with float32 weights, optimizer state, losses and images (a generator's output is
    float32: its residual adds the float32 input); its samples then differ from float32's as any
    rounding change does after GAN training. Meant for GPUs: on the 2-core CPU without bfloat16 units
    it is slower. The refinement stays float32.
    Defaults: tau = 0.1, alpha = 10, lambda = 0.1, kappa as iwda-ot's (1.0 where loader views are
    checked, else 0.1: default_margin), preset "cpu" (see PRESETS), start_scale
    from the preset, steps (iterations per scale) from the preset, images_at_once = 16 on CUDA, else 1,
    refine = 50, precision "fp32", candidates = 2.
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
        kappa: float | None = None,
        images_at_once: int | None = None,
        refine: int = REFINE_STEPS,
        precision: str = "fp32",
        candidates: int = REFINED_CANDIDATES,
    ) -> None:
        # Its classifier batches do not depend on the job (an image's training steps, its draws), so
        # padding them to a batch-invariant granule buys nothing and costs 16x the classifier (on 2
        # cores 23 s per image); and a padded job's numerics would differ from a lone image's, which
        # GAN training amplifies into another sample.
        super().__init__(model.batch_invariant(1))
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        if images_at_once is not None and images_at_once < 1:
            raise InputError(f"images_at_once must be at least 1, not {images_at_once}")
        if refine < 0:
            raise InputError(f"refine must be at least 0, not {refine}")
        if candidates < 1:
            raise InputError(f"candidates must be at least 1, not {candidates}")
        check_precision(precision)
        self.precision = precision
        self.preset = PRESETS[preset]
        self.alpha, self.gp_weight, self.lr = alpha, gp_weight, lr
        # The generator's weight on L_c: the refinement carries it where it follows a short preset.
        self.gan_tau = tau if self.preset.classifies or not refine else 0.0
        self.start_scale = start_scale
        self.iterations = steps or self.preset.iterations  # per scale
        self.draws_per_sample = draws_per_sample
        self.kappa = default_margin(self.model, True) if kappa is None else kappa
        self.images_at_once = images_at_once or (GPU_IMAGES_AT_ONCE if self.device.type == "cuda" else 1)
        self.refiner = (
            IWDAOT(self.model, tau=tau, kappa=self.kappa, moves=0, polish=refine, lr=REFINE_LR, max_lr=REFINE_LR)
            if refine
            else None
        )
        # Without the refinement the draws are already ranked (adversarial first): nothing to choose.
        self.candidates = candidates if self.refiner is not None else 1

    def _first_scale(self, count: int) -> int:
        if self.start_scale is not None:
            if not 0 <= self.start_scale < count:
                raise InputError(f"--start-scale must be in 0..{count - 1} for this image's {count} scales")
            return self.start_scale
        if self.preset.scales is None or count == 1:
            return 0
        return max(1, count - self.preset.scales)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The GAN's passes at the attack's precision (the refinement always runs in float32)."""
        return autocast(self.precision, self.device)

    def classification_loss(self, stacked: torch.Tensor, criterion: Criterion, count: int) -> torch.Tensor:
        """L_c of `count` images' samples (N, B x 3, H, W) resized to the classifier's input, bounded by
        the margin `kappa`: each image's mean over its samples, summed over the images."""
        images = _by_image(stacked, count)
        flat = images.flatten(0, 1)
        logits = self.model(_resize(flat, (self.model.input_size, self.model.input_size)))
        rows = torch.arange(len(images), device=flat.device).repeat_interleave(images.shape[1])
        return bounded_classification_loss(criterion.select(rows), logits, self.kappa) * len(images)

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        return self._samples(images, criterion, generators, 1)[:, 0]

    def _samples(
        self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator], count: int
    ) -> torch.Tensor:
        """`count` refined samples of each image (B, count, 3, H, W), `images_at_once` trained together."""
        results = []
        for start in range(0, len(images), self.images_at_once):
            part = slice(start, start + self.images_at_once)
            part_images, part_criterion, part_generators = images[part], criterion.select(part), generators[part]
            pyramid = self.train(part_images, part_criterion, part_generators)
            starts = None
            if count > 1 and pyramid.first > 0:
                # Samples past the first build on x re-arranged (iwda-ot's starts): K noise draws of a
                # short schedule re-synthesise fine detail only, so they would lie a few l2 apart.
                moved = rearrange(
                    part_images, part_generators, REARRANGE_SIZE, REARRANGE_PATCH, REARRANGE_MOVES, count - 1
                )
                starts = torch.cat([part_images[:, None], moved.to(part_images)], dim=1)
            samples = pyramid.sample(
                count * self.candidates, part_criterion, part_generators, self.draws_per_sample, starts
            )
            if self.refiner is not None:
                rows = torch.arange(len(part_images), device=images.device).repeat_interleave(samples.shape[1])
                flat = self.refiner.refine(
                    part_images[rows],
                    samples.flatten(0, 1),
                    part_criterion.select(rows),
                    [part_generators[row] for row in rows.tolist()],
                )
                samples = self._least_iwd(part_images, flat.view_as(samples), part_criterion, count)
            results.append(samples)
        return torch.cat(results)

    def _least_iwd(self, images: torch.Tensor, refined: torch.Tensor, criterion: Criterion, count: int) -> torch.Tensor:
        """Of each sample's `candidates` refined draws (B, count x candidates, 3, H, W), consecutive per
        sample, the verified adversarial one of least exact IWD to x (the first where none is): (B, count,
        3, H, W)."""
        if self.candidates == 1:
            return refined
        flat = refined.flatten(0, 1)
        rows = torch.arange(len(images), device=flat.device).repeat_interleave(refined.shape[1])
        with torch.no_grad():
            verified = self.refiner.verified(flat, criterion.select(rows)).cpu()
        distances = IWD(self.refiner.patch, size=self.refiner.size)(images[rows].cpu(), flat.cpu())
        # Unverified draws rank after every verified one; ties keep the draw order.
        ranks = torch.where(verified, distances, distances + math.inf).view(len(images), count, self.candidates)
        chosen = torch.argsort(ranks, dim=2, stable=True)[:, :, 0]
        grouped = refined.view(len(images), count, self.candidates, *refined.shape[2:])
        return grouped[torch.arange(len(images))[:, None], torch.arange(count)[None], chosen.to(refined.device)]

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K samples of each image from K noise draws of one pyramid, trained once per image (its
        generator seeded by the image's first seed)."""
        count = len(seeds[0])

        def draw(generators: list[torch.Generator]) -> torch.Tensor:
            return self._samples(images.detach().to(self.device), criterion, generators, count)

        return self._run(draw, [image_seeds[0] for image_seeds in seeds])

    def stream(self, jobs: Iterable[ImageJob], capacity: int) -> Iterator[tuple[ImageJob, torch.Tensor]]:
        return super().stream(jobs, min(capacity, self.images_at_once))

    def train(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> TrainedPyramid:
        """The pyramids of B images (B, 3, H, W), trained together scale by scale."""
        sizes = pyramid_sizes(*images.shape[-2:])
        reals = [_side_by_side(_resize(images, size).clamp(0, 1)[:, None]) for size in sizes]
        first = self._first_scale(len(sizes))
        pyramid = TrainedPyramid(self, reals, first, len(images))
        total = len(sizes) - first
        with frozen(self.model):
            for scale in range(first, len(sizes)):
                pyramid.train_scale(scale, criterion, generators, self.iterations)
                self.progress(scale - first + 1, total, "iwda scales")
        return pyramid


class TrainedPyramid:
    """The generators of B images, trained scale by scale, and how to sample from them. Images lie side
    by side along the channels: every tensor here is (N, B x 3, H, W), N samples of each image."""

    def __init__(self, attack: IWDA, reals: list[torch.Tensor], first: int, count: int) -> None:
        self.attack = attack
        self.reals = reals
        self.first = first
        self.count = count
        self.generators: list[ScaleGenerator] = []
        self.noise_amplitudes: list[torch.Tensor] = []  # (1, B x 3, 1, 1): each image's own
        self.reconstruction_noise: torch.Tensor | None = None
        self.critic: PatchCritic | None = None  # the last trained scale's, where the next one starts

    def _start(self, samples: int, starts: torch.Tensor | None = None) -> torch.Tensor:
        """What scale `first` builds on: x at the coarser scale (upsampled), or zeros at scale 0. With
        `starts` (B, S, 3, H, W), S images per image in place of x: consecutive runs of samples / S
        samples build on each."""
        real = self.reals[self.first]
        if self.first == 0:
            return torch.zeros(samples, *real.shape[1:], device=real.device)
        size = tuple(real.shape[-2:])
        if starts is None:
            return _resize(self.reals[self.first - 1], size).expand(samples, -1, -1, -1)
        coarser = tuple(self.reals[self.first - 1].shape[-2:])
        views = _resize(_resize(starts.flatten(0, 1), coarser).clamp(0, 1), size).unflatten(0, starts.shape[:2])
        return _side_by_side(views.repeat_interleave(samples // starts.shape[1], dim=1))

    def _noise(self, scale: int, samples: int, generators: list[torch.Generator]) -> torch.Tensor:
        height, width = self.reals[scale].shape[-2:]
        # The coarsest scale of a free re-arrangement draws one noise map for all channels (as SinGAN).
        channels = 1 if scale == 0 else 3
        maps = [torch.randn(samples, channels, height, width, generator=generator) for generator in generators]
        return torch.cat([noise.expand(-1, 3, -1, -1) for noise in maps], dim=1).to(self.reals[scale].device)

    def run(
        self,
        samples: int,
        generators: list[torch.Generator] | None,
        upto: int,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images at scale `upto` (exclusive of its own generator when `upto` is not trained yet), built
        on x or on `starts` (`_start`)."""
        current = self._start(samples, starts)
        for offset, scale_generator in enumerate(self.generators[: upto - self.first]):
            scale = self.first + offset
            target_size = tuple(self.reals[scale].shape[-2:])
            previous = _resize(current, target_size) if offset else current
            if generators is None:  # the reconstruction path: fixed noise at scale 0, none elsewhere
                noise = self.reconstruction_noise if scale == 0 else torch.zeros_like(previous)
            else:
                noise = self._noise(scale, samples, generators)
            with self.attack.autocast():
                current = scale_generator(self.noise_amplitudes[offset] * noise, previous)
        if upto < len(self.reals) and self.generators[: upto - self.first]:
            current = _resize(current, tuple(self.reals[upto].shape[-2:]))
        return current

    def _per_image_mean(self, values: torch.Tensor) -> torch.Tensor:
        """(N, B x C, ...) -> each image's mean, (B,)."""
        return values.unflatten(1, (self.count, -1)).transpose(0, 1).flatten(1).mean(dim=1)

    def _new_networks(self, scale: int, generators: list[torch.Generator]) -> tuple[ScaleGenerator, PatchCritic]:
        """This scale's stacked generator and critic: each image's from its own seed, or, as SinGAN does
        when the channel count is unchanged, the coarser scale's trained networks as the start."""
        channels = channels_at(scale, self.attack.preset.max_channels)
        scale_generators, critics = [], []
        for generator in generators:  # each image's networks from its own seed, as if trained alone
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            scale_generators.append(ScaleGenerator(channels))
            critics.append(PatchCritic(channels))
        device = self.reals[scale].device
        scale_generator = ScaleGenerator.stacked(scale_generators).to(device)
        critic = PatchCritic.stacked(critics).to(device)
        if self.generators and channels_at(scale - 1, self.attack.preset.max_channels) == channels:
            assert self.critic is not None  # trained with the coarser scale's generator
            scale_generator.load_state_dict(self.generators[-1].state_dict())
            critic.load_state_dict(self.critic.state_dict())
        elif scale == self.first > 0:
            # Built on x (injected below), the generator starts as the identity: its residual head at
            # zero. From N(0, 0.02) the head adds noise of about 0.2 per pixel, which short schedules
            # do not train away.
            with torch.no_grad():
                scale_generator.head[0].weight.zero_()
                scale_generator.head[0].bias.zero_()
        return scale_generator, critic

    def train_scale(self, scale: int, criterion: Criterion, generators: list[torch.Generator], iterations: int) -> None:
        """Algorithm 1 at one scale: 3 critic and 3 generator steps per iteration."""
        attack = self.attack
        real = self.reals[scale]
        device = real.device
        scale_generator, critic = self._new_networks(scale, generators)
        with torch.no_grad():
            reconstruction_previous = self.run(1, None, scale)
            if scale == 0:
                maps = [torch.randn(1, 1, *real.shape[-2:], generator=generator) for generator in generators]
                self.reconstruction_noise = torch.cat([noise.expand(-1, 3, -1, -1) for noise in maps], dim=1).to(device)
                amplitude = torch.ones(1, real.shape[1], 1, 1, device=device)
            else:
                error = self._per_image_mean((reconstruction_previous - real) ** 2).sqrt()
                amplitude = (0.1 * error).repeat_interleave(3)[None, :, None, None]
        reconstruction_noise = self.reconstruction_noise if scale == 0 else torch.zeros_like(real)
        self.noise_amplitudes.append(amplitude)
        optimizer_g = torch.optim.Adam(scale_generator.parameters(), lr=attack.lr, betas=(0.5, 0.999))
        optimizer_d = torch.optim.Adam(critic.parameters(), lr=attack.lr, betas=(0.5, 0.999))
        milestone = [int(0.8 * iterations)]
        schedule_g = torch.optim.lr_scheduler.MultiStepLR(optimizer_g, milestone, 0.1)
        schedule_d = torch.optim.lr_scheduler.MultiStepLR(optimizer_d, milestone, 0.1)
        # Every loss is summed over the images, so each image's networks get its own loss's gradient.
        for _ in range(iterations):
            with torch.no_grad():
                previous = self.run(1, generators, scale)
                noise = amplitude * self._noise(scale, 1, generators)
                # The generator does not change during the critic's steps: one fake serves all three.
                with attack.autocast():
                    fakes = scale_generator(noise, previous)
            for _ in range(3):
                rho = torch.cat([torch.rand(1, 1, generator=generator) for generator in generators], dim=1)
                with attack.autocast():
                    real_scores, fake_scores = critic_scores(critic, real, fakes)
                    critic_loss = (self._per_image_mean(fake_scores) - self._per_image_mean(real_scores)).sum()
                    critic_loss = critic_loss + attack.gp_weight * stacked_gradient_penalty(
                        critic, real, fakes, rho.to(device)
                    )
                optimizer_d.zero_grad()
                critic_loss.backward()
                optimizer_d.step()
            for _ in range(3):
                with attack.autocast():
                    fake = scale_generator(noise, previous)
                    reconstruction = scale_generator(amplitude * reconstruction_noise, reconstruction_previous)
                    adversarial = -self._per_image_mean(critic_scores(critic, real, fake)[1])
                    fidelity = attack.alpha * self._per_image_mean((reconstruction - real) ** 2)
                    loss = (adversarial + fidelity).sum()
                    if attack.gan_tau:
                        classification = attack.classification_loss(fake.clamp(0, 1), criterion, self.count)
                        loss = loss + attack.gan_tau * classification
                optimizer_g.zero_grad()
                loss.backward()
                optimizer_g.step()
            schedule_g.step()
            schedule_d.step()
        scale_generator.eval()
        for parameter in scale_generator.parameters():
            parameter.requires_grad_(False)
        self.generators.append(scale_generator)
        self.critic = critic

    @torch.no_grad()
    def sample(
        self,
        samples: int,
        criterion: Criterion,
        generators: list[torch.Generator],
        draws_per_sample: int,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`samples` samples of each image at the finest scale, (B, samples, 3, H, W), preferring draws
        whose 8-bit rounding is adversarial. With `starts` (B, S, 3, H, W) in place of x (`_start`),
        each start gives samples / S of them, from its own draws."""
        size = self.attack.model.input_size
        groups = 1 if starts is None else starts.shape[1]
        made = self.run(samples * draws_per_sample, generators, len(self.reals), starts)
        draws = _by_image(quantize(made), self.count)
        flat = draws.flatten(0, 1)
        rows = torch.arange(self.count, device=flat.device).repeat_interleave(draws.shape[1])
        adversarial = criterion.select(rows).is_adversarial(self.attack.model(_resize(flat, (size, size))))
        grouped = draws.unflatten(1, (groups, -1)).flatten(0, 1)  # (B x S, draws of each start, ...)
        order = torch.argsort((~adversarial.view(len(grouped), -1)).float(), dim=1, stable=True)
        chosen = [group[group_order[: samples // groups]] for group, group_order in zip(grouped, order)]
        return torch.stack(chosen).unflatten(0, (self.count, groups)).flatten(1, 2)
