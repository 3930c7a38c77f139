"""The loop shared by the IWDA variants that optimize x~ directly (no per-image GAN)."""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from iwdctl.attacks.base import Attack, ImageJob
from iwdctl.criteria import Criterion, concatenate
from iwdctl.errors import InputError
from iwdctl.images import dither, quantize
from iwdctl.models import ImageClassifier

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# The logit margin kappa a rounding must clear, unless given. Where other readers' preprocessing is
# checked too (loader views: resizes the file may go through elsewhere), 1 logit also covers other
# implementations of those resizes; where the saved file is verified exactly as any reader gets it,
# 0.1 covers device and batch arithmetic. On the robust tiny6 models, whose clean margins are about
# 0.2-0.3 logits, a margin of 1 took 2.6-5.2x the IWD: on 40 correctly classified val images each
# (PGD-, free- and IWDD-trained; iwda-ot, all fooled either way) 0.065, 0.110 and 0.046 with 1, 0.018,
# 0.021 and 0.018 with 0.1 (PGD-10 at 8/255: 0.030, fooling a quarter). On lite0 (12 nips17 photos)
# 0.1 changed little: IWD 0.00120 -> 0.00118.
LOADER_VIEWS_MARGIN = 1.0
EXACT_READ_MARGIN = 0.1


def default_margin(model: ImageClassifier, loader_views: bool) -> float:
    """kappa where none is given: LOADER_VIEWS_MARGIN if the model's loader views are checked."""
    return LOADER_VIEWS_MARGIN if loader_views and model.loader_views else EXACT_READ_MARGIN


@dataclass(eq=False)
class SampleGroup:
    """The rows of one image's K samples: their starts can be drawn together, from one generator of
    the image's own (IWDAOT ranks one pool of moves per image, so that its samples start apart)."""

    generator: torch.Generator  # seeded like the image's first sample
    count: int  # K
    starts: torch.Tensor | None = None  # (K, 3, H, W): given (refine), or drawn by the subclass that draws them


@dataclass
class RowSpec:
    """One optimization to run: an image, its own generator, and which of the image's samples it is."""

    tag: Hashable
    image: torch.Tensor  # (3, H, W) on the device
    criterion: Criterion  # of this one row
    generator: torch.Generator
    group: SampleGroup
    sample: int  # 0 starts from x, the others from shifted copies (unless the subclass draws starts)


@dataclass
class _Row:
    tag: Hashable
    criterion: Criterion
    state: Any  # the subclass's per-image state of the patch loss
    tau: float
    lr: float
    step: int = 0  # optimizer steps taken
    best: torch.Tensor | None = None  # the verified adversarial rounding of least patch loss so far
    best_loss: float = float("inf")
    polished: int = 0  # optimizer steps taken since the first verified adversarial rounding


class PatchDistributionAttack(Attack):
    """x~ optimized (Adam) for tau * L_c(h(x~)) + D(x, x~), D a patch-distribution distance given by
    the subclass, L_c = max(-margin, -kappa) a margin loss of the criterion.

    An 8-bit rounding counts as adversarial when its logit margin is at least `kappa` under the model's
    own preprocessing and, with `loader_views`, under every other common way of loading the saved PNG
    into the same network (see iwdctl.models.LoaderView); kappa None: default_margin. Each image stops
    `polish` steps after its first adversarial rounding and returns the adversarial rounding whose step
    had the least D, as C&W and DDN keep lowering the distance once the boundary is crossed: the margin
    term's gradient vanishes above `kappa`, so those steps descend D alone until the margin falls back.
    An image not yet adversarial has its tau multiplied by `escalate` every `escalate_every` steps (0:
    never), and its Adam step size too, up to `max_lr`, so robust models, which need large changes, are
    fooled too while the others take fine steps. With `sample` and K > 1, sample 0 starts from x and the
    others from x translated by up to `shift` pixels (reflected at the border) plus uniform noise of
    `start_noise`: diverse examples of the same scene.

    Rows run independently (each with its own step count, tau, step size and Adam moments), so
    `stream` refills the row of a finished image with the next image at once: every step carries a
    full batch, and an image's result does not depend on which images shared its steps.
    """

    distance = "iwd"
    start_noise: ClassVar[float] = 0.0

    def __init__(
        self,
        model: ImageClassifier,
        tau: float,
        kappa: float | None,
        steps: int,
        lr: float,
        patch: int,
        shift: int,
        escalate: float,
        escalate_every: int,
        loader_views: bool,
        polish: int = 0,
        max_lr: float | None = None,
    ) -> None:
        super().__init__(model)
        if polish < 0:
            raise InputError(f"polish must be at least 0, not {polish}")
        self.tau, self.steps, self.lr = tau, steps, lr
        self.kappa = default_margin(model, loader_views) if kappa is None else kappa
        self.max_lr = lr if max_lr is None else max_lr
        self.polish = polish
        self.patch, self.shift = patch, shift
        self.escalate, self.escalate_every = escalate, escalate_every
        self.loader_views = loader_views

    @abstractmethod
    def admit(self, image: torch.Tensor, generator: torch.Generator) -> Any:
        """The per-image state of the patch loss D(x, .) for x (3, H, W)."""

    @abstractmethod
    def patch_loss(self, candidate: torch.Tensor, states: Sequence[Any], steps: Sequence[int]) -> torch.Tensor:
        """(n,) D(x_i, candidate_i) of n rows, given each row's state and its optimizer step."""

    # ----- the three entry points ----------------------------------------------------------------

    def forward(self, images: torch.Tensor, criterion: Criterion, generators: list[torch.Generator]) -> torch.Tensor:
        return self.refine(images, None, criterion, generators)

    def refine(
        self,
        images: torch.Tensor,
        starts: torch.Tensor | None,
        criterion: Criterion,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """`forward` from given starts (N, 3, H, W), e.g. another attack's examples (None: the attack's
        own starts). A start already adversarial by the margin takes `polish` steps that lower D."""
        specs = [
            RowSpec(
                index,
                images[index],
                criterion.select(slice(index, index + 1)),
                generator,
                SampleGroup(
                    torch.Generator().manual_seed(generator.initial_seed()),
                    1,
                    None if starts is None else starts[index : index + 1].detach().to(self.device),
                ),
                0,
            )
            for index, generator in enumerate(generators)
        ]
        results = dict(self._optimize(iter(specs), len(specs)))
        return torch.stack([results[index] for index in range(len(specs))])

    def sample(self, images: torch.Tensor, criterion: Criterion, seeds: Sequence[Sequence[int]]) -> torch.Tensor:
        """K samples of each image: the first starts from x, the others from shifted copies."""
        jobs = [
            ImageJob(index, image, criterion.select(slice(index, index + 1)), image_seeds)
            for index, (image, image_seeds) in enumerate(zip(images, seeds))
        ]
        results = dict((job.key, samples) for job, samples in self.stream(jobs, len(jobs)))
        return torch.stack([results[index] for index in range(len(jobs))])

    def stream(self, jobs: Iterable[ImageJob], capacity: int) -> Iterator[tuple[ImageJob, torch.Tensor]]:
        """Up to `capacity` images (K rows each) in flight; a finished image's rows are refilled at once."""
        source = iter(jobs)
        first = next(source, None)
        if first is None:
            return
        by_number: dict[int, ImageJob] = {}
        outputs: dict[int, dict[int, torch.Tensor]] = {}

        def specs() -> Iterator[RowSpec]:
            for number, job in enumerate(itertools.chain([first], source)):
                by_number[number] = job
                image = job.image.detach().to(self.device)
                group = SampleGroup(torch.Generator().manual_seed(int(job.seeds[0])), len(job.seeds))
                for index, seed in enumerate(job.seeds):
                    generator = torch.Generator().manual_seed(int(seed))
                    yield RowSpec((number, index), image, job.criterion, generator, group, index)

        for (number, index), result in self._optimize(specs(), capacity * len(first.seeds)):
            outputs.setdefault(number, {})[index] = result
            job = by_number[number]
            if len(outputs[number]) == len(job.seeds):
                done = outputs.pop(number)
                del by_number[number]
                yield job, torch.stack([done[k] for k in range(len(job.seeds))])

    # ----- the loop ------------------------------------------------------------------------------

    def starts(self, specs: Sequence[RowSpec]) -> torch.Tensor:
        """(n, 3, H, W) where the admitted rows' optimizations start: their group's starts where it has
        them, else x for sample 0 and shifted copies for the others."""
        return torch.stack(
            [
                spec.group.starts[spec.sample]
                if spec.group.starts is not None
                else self._start(spec.image, spec.generator, spec.sample > 0)
                for spec in specs
            ]
        )

    def _start(self, image: torch.Tensor, generator: torch.Generator, shifted: bool) -> torch.Tensor:
        if not shifted:
            return image.clone()
        dy, dx = (torch.randint(-self.shift, self.shift + 1, (2,), generator=generator)).tolist()
        pad = self.shift
        padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
        height, width = image.shape[-2:]
        moved = padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        if self.start_noise:
            noise = torch.rand(image.shape, generator=generator) * 2 - 1
            moved = moved + noise.to(image.device) * self.start_noise
        return moved.clamp(0, 1)

    def verified(self, images: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """(n,) whether each 8-bit image is adversarial as the loop verifies its roundings: by the margin
        kappa, under every loader view where they are checked."""
        return self._margin(images, criterion) >= self.kappa

    def _margin(self, images: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """The criterion's margin, the smallest over the model's loader views when they are checked.

        Its gradient is that of each row's smallest view alone, so the views are scored without a
        graph and only the smallest runs again with one: the same gradient, with one backward pass
        instead of one per view.
        """
        if not self.loader_views:
            return criterion.margin(self.model(images))
        inputs = self.model.view_inputs(images)
        with torch.no_grad():
            margins = torch.stack([criterion.margin(self.model.network_logits(view)) for view in inputs])
        if not (torch.is_grad_enabled() and images.requires_grad):
            return margins.amin(dim=0)
        smallest = margins.argmin(dim=0)
        chosen = torch.stack(inputs)[smallest, torch.arange(len(images), device=images.device)]
        return criterion.margin(self.model.network_logits(chosen))

    def _optimize(self, specs: Iterator[RowSpec], capacity: int) -> Iterator[tuple[Hashable, torch.Tensor]]:
        """(tag, result) of each row as it finishes, with at most `capacity` rows in flight."""
        with self.attacking():
            yield from self._rows(specs, capacity)

    def _rows(self, specs: Iterator[RowSpec], capacity: int) -> Iterator[tuple[Hashable, torch.Tensor]]:
        live: list[_Row] = []
        variable = exp_avg = exp_avg_sq = torch.empty(0, device=self.device)
        exhausted = False
        beta1, beta2 = ADAM_BETAS
        while True:
            admitted = []
            while not exhausted and len(live) + len(admitted) < capacity:
                spec = next(specs, None)
                exhausted = spec is None
                if spec is not None:
                    admitted.append(spec)
            if admitted:
                starts = self.starts(admitted)
                live += [
                    _Row(spec.tag, spec.criterion, self.admit(spec.image, spec.generator), self.tau, self.lr)
                    for spec in admitted
                ]
                variable = torch.cat([variable, starts]) if len(variable) else starts
                zeros = torch.zeros_like(starts)
                exp_avg = torch.cat([exp_avg, zeros]) if len(exp_avg) else zeros
                exp_avg_sq = torch.cat([exp_avg_sq, zeros]) if len(exp_avg_sq) else zeros.clone()
            if not live:
                return
            for row in live:
                if self.escalate_every and row.step and row.step % self.escalate_every == 0 and row.best is None:
                    row.tau *= self.escalate  # not adversarial yet after another escalate_every steps
                    row.lr = min(row.lr * self.escalate, self.max_lr)
            variable.requires_grad_(True)
            candidate = variable.clamp(0, 1)
            criterion = concatenate([row.criterion for row in live])
            margin = self._margin(candidate, criterion)
            with torch.no_grad():
                rounded = quantize(candidate)
                finished = margin > self.kappa
                if finished.any():
                    # The rows that may be done are rounded with error diffusion: their analysis views,
                    # and so D, stay closer to the candidate's than under the nearest rounding.
                    checked = finished.nonzero()[:, 0]
                    rounded[checked] = dither(candidate[checked])
                    finished[checked] = self.verified(rounded[checked], criterion.select(checked))
                finished_rows = finished.tolist()
            spent = [row.step >= self.steps for row in live]
            # D steps the rows that go on and, while polishing, ranks the adversarial roundings.
            scored = [
                index
                for index in range(len(live))
                if (finished_rows[index] and self.polish) or not (spent[index] or finished_rows[index])
            ]
            distances = (
                self.patch_loss(
                    candidate[scored], [live[index].state for index in scored], [live[index].step for index in scored]
                )
                if scored
                else candidate.new_zeros(0)
            )
            distance_of = dict(zip(scored, distances.detach().tolist()))
            done = []
            for index, row in enumerate(live):
                if finished_rows[index] and (row.best is None or distance_of.get(index, 0.0) < row.best_loss):
                    row.best, row.best_loss = rounded[index].detach(), distance_of.get(index, 0.0)
                done.append(spent[index] or (row.best is not None and row.polished >= self.polish))
            results = [
                (row.tag, rounded[index] if row.best is None else row.best)
                for index, row in enumerate(live)
                if done[index]
            ]
            keep = torch.tensor([not value for value in done], device=self.device)
            kept = keep.nonzero()[:, 0]
            if len(kept):
                rows = [live[index] for index in kept.tolist()]
                tau = torch.tensor([row.tau for row in rows], device=self.device)
                position = {index: place for place, index in enumerate(scored)}
                loss = tau * torch.clamp(-margin[kept], min=-self.kappa)
                loss = loss + distances[[position[index] for index in kept.tolist()]]
                (gradient,) = torch.autograd.grad(loss.sum(), variable)
                with torch.no_grad():
                    # Adam (torch.optim.Adam's arithmetic) with a step count per row.
                    gradient = gradient[kept]
                    # Polishing restarts Adam: the margin's large gradients would otherwise scale
                    # D's steps down (second moment) and keep pushing along the margin (first moment).
                    steps = torch.tensor(
                        [row.step + 1 if row.best is None else row.polished + 1 for row in rows], dtype=torch.float64
                    )
                    restart = torch.tensor(
                        [row.best is not None and row.polished == 0 for row in rows], device=self.device
                    )[:, None, None, None]
                    correction1 = (1 - beta1**steps).float().to(self.device)[:, None, None, None]
                    correction2 = (1 - beta2**steps).sqrt().float().to(self.device)[:, None, None, None]
                    exp_avg = exp_avg[kept].masked_fill(restart, 0).lerp(gradient, 1 - beta1)
                    exp_avg_sq = exp_avg_sq[kept].masked_fill(restart, 0).mul(beta2)
                    exp_avg_sq = exp_avg_sq.addcmul(gradient, gradient, value=1 - beta2)
                    denominator = (exp_avg_sq.sqrt() / correction2).add(ADAM_EPS)
                    lr = torch.tensor([row.lr for row in rows], device=self.device)[:, None, None, None]
                    variable = variable.detach()[kept] - lr / correction1 * exp_avg / denominator
                for row in rows:
                    row.step += 1
                    row.polished += row.best is not None
                live = rows
            else:
                live = []
                variable = exp_avg = exp_avg_sq = torch.empty(0, device=self.device)
            yield from results
