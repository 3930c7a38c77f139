"""`iwdctl defend`: adversarial training (natural, PGD, free, IWDD) with resumable, atomic checkpoints.

Checkpoints are safetensors with metadata (see iwdctl.models.save_classifier); the training state
(optimizers, schedule, RNG, epoch and step, the free-training perturbation, IWDD's generator and
critic) lies beside them as `<out>.state.pt`, written atomically and loaded with weights_only=True.
Under torchrun the global batch is split over processes (DDP; gloo on CPU, nccl on CUDA); rank 0
alone writes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iwdctl.attacks.iwda import PatchCritic, critic_scores, gradient_penalty
from iwdctl.attacks.iwda_amortised import GENERATOR_PREFIX, ConditionalGenerator
from iwdctl.attacks.pgd import PGD
from iwdctl.criteria import Misclassification, bounded_classification_loss
from iwdctl.data import ImageDataset, Sample, default_workers, from_workers
from iwdctl.errors import InputError
from iwdctl.files import write_atomic, write_text_atomic
from iwdctl.images import is_image_file
from iwdctl.models import ARCHITECTURES, ImageClassifier, save_classifier
from iwdctl.runtime import (
    ProgressCallback,
    autocast,
    batchnorm_statistics_kept,
    check_precision,
    frozen,
    no_progress,
)

METHODS = ("natural", "pgd", "free", "iwdd")
SCHEDULES = ("multistep", "cosine")


def projected_start(images: torch.Tensor, samples: torch.Tensor, eps: float) -> torch.Tensor:
    """IWDD's start of the refine steps: the generator's samples projected onto the eps-ball around x."""
    return images + (samples - images).clamp(-eps, eps)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the paper's (SGD, momentum 0.9, weight decay 5e-4, lr 0.1)."""

    data: str
    out: str
    method: str = "natural"
    arch: str = "preact_resnet18_w16"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 8 / 255
    pgd_steps: int = 7
    replays: int = 4
    beta: float = 0.1
    refine_steps: int | None = None  # IWDD: PGD steps refining the generator's samples (None: pgd_steps)
    sample_weight: float = 0.0  # IWDD: weight of the CE on the generator's raw, unrefined samples
    tau: float = 0.1
    alpha: float = 10.0
    kappa: float = 1.0
    seed: int = 0
    save_every: int = 0
    schedule: str = "multistep"
    precision: str = "fp32"  # bf16: forward and backward passes under bfloat16 autocast

    def validate(self) -> None:
        check_precision(self.precision)
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.method not in METHODS:
            raise InputError(f"unknown training method {self.method!r}; known: {', '.join(METHODS)}")
        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("--epochs and --batch-size must be at least 1")
        if self.refine_steps is not None and self.refine_steps < 0:
            raise InputError(f"--refine-steps must be at least 0, not {self.refine_steps}")
        if self.sample_weight < 0 or self.beta < 0:
            raise InputError("--beta and --sample-weight must be at least 0")

    @property
    def pgd_alpha(self) -> float:
        return 2.5 * self.eps / self.pgd_steps  # Madry et al.'s step: 2.5 eps / K

    @property
    def iwdd_refine_steps(self) -> int:
        return self.pgd_steps if self.refine_steps is None else self.refine_steps

    @property
    def iwdd_refine_alpha(self) -> float:
        return 2.5 * self.eps / max(1, self.iwdd_refine_steps)  # Madry et al.'s step for IWDD's R steps


@dataclass
class ImageSet:
    """One split: its image files and labels, and the decoded images when they are held in memory.

    `images` is None when the split is streamed from disk (too large for memory): `gather` then decodes
    the requested images in DataLoader workers ahead of the training loop.
    """

    samples: list[Sample]
    labels: torch.Tensor
    class_names: list[str]
    input_size: int
    images: torch.Tensor | None = None  # (N, 3, S, S) in [0, 1], on the CPU or the training device

    def gather(self, index_batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each index batch, in order: indexed in memory, or decoded from disk."""
        if self.images is not None:
            for indices in index_batches:
                yield self.images[indices.to(self.images.device)]
            return
        dataset = ImageDataset(self.samples, self.input_size, 1.0)
        workers = default_workers()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[indices.tolist() for indices in index_batches],
            num_workers=workers,
            prefetch_factor=4 if workers else None,
        )
        for images, _, _ in from_workers(loader):
            yield images

    def statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation over at most STATISTICS_IMAGES images (a fixed choice)."""
        count = len(self.labels)
        chosen = torch.arange(count)
        if count > STATISTICS_IMAGES:
            chosen = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:STATISTICS_IMAGES].sort()[0]
        images = torch.cat([batch.cpu() for batch in self.gather(chosen.split(1024))])
        return images.mean(dim=(0, 2, 3)).tolist(), images.std(dim=(0, 2, 3)).tolist()


STATISTICS_IMAGES = 10_000


def fits_on(device: torch.device, size: int) -> bool:
    """Whether `size` bytes of data may live on `device`: a quarter of the free GPU memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return size < free // 4


def data_input_size(folder: Path) -> int:
    """The shorter side of the first training image: the input size of the CIFAR-style nets, which
    keep a stride-1 stem and pool adaptively (32 for tiny6, 64 for imagenette64)."""
    from PIL import Image

    for path in sorted(folder.rglob("*")):
        if path.is_file() and is_image_file(path):
            with Image.open(path) as image:
                return min(image.size)
    raise InputError(f"{folder}: no training images")


def fits_in_memory(size: int) -> bool:
    """Whether `size` bytes of decoded images may be held in host memory: a quarter of it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return size < total // 4


def load_split(root: Path, split: str, input_size: int, class_names: list[str] | None = None) -> ImageSet:
    """An ImageFolder split (`train/` or `val/`) at the input size: decoded into memory when it fits
    (a quarter of host memory), else streamed from disk by `ImageSet.gather`."""
    folder = root / split
    if not folder.is_dir():
        raise InputError(f"{root}: needs {split}/ with one folder per class (ImageFolder layout)")
    classes = sorted(child.name for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise InputError(f"{folder}: no class folders")
    if class_names is not None and classes != class_names:
        raise InputError(f"{folder}: classes {classes} differ from train/'s {class_names}")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(path for path in (folder / name).rglob("*") if path.is_file() and is_image_file(path))
        if not files:
            raise InputError(f"{folder / name}: class folder without images")
        samples += [Sample(file, str(file.relative_to(folder).with_suffix("")), index) for file in files]
    labels = torch.tensor([sample.label for sample in samples])
    split_set = ImageSet(samples, labels, classes, input_size)
    if fits_in_memory(len(samples) * 3 * input_size * input_size * 4):
        split_set.images = torch.cat(list(split_set.gather(torch.arange(len(samples)).split(1024))))
    return split_set


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip (the standard CIFAR augmentation)."""
    count, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator).to(images.device)
    flips = (torch.rand(count, generator=generator) < 0.5).to(images.device)
    # All crops in one gather (no per-image loop): row and column indices per image, columns reversed
    # for the flipped ones.
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    columns = offsets[:, 1:] + torch.arange(width, device=images.device)
    columns = torch.where(flips[:, None], columns.flip(1), columns)
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channel = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], columns[:, None, None, :]]


@dataclass
class EpochMetrics:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float
    lr: float


class Trainer:
    """One training run; `fit` resumes from the state file when asked to."""

    def __init__(
        self, config: TrainConfig, rank: int = 0, world_size: int = 1, device: torch.device | None = None
    ) -> None:
        config.validate()
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")
        architecture = ARCHITECTURES[config.arch]
        root = Path(config.data)
        if not root.is_dir():
            raise InputError(f"{root}: no such data folder")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise InputError(f"{root}: needs train/ and val/ with one folder per class (ImageFolder layout)")
        input_size = architecture.input_size or data_input_size(root / "train")
        self.train_set = load_split(root, "train", input_size)
        self.val_set = load_split(root, "val", input_size, self.train_set.class_names)
        held = [split.images for split in (self.train_set, self.val_set) if split.images is not None]
        if len(held) == 2 and fits_on(self.device, sum(images.nbytes for images in held)):
            # Minibatches are then gathered and augmented on the device, without host transfers.
            self.train_set = replace(self.train_set, images=self.train_set.images.to(self.device))
            self.val_set = replace(self.val_set, images=self.val_set.images.to(self.device))
        mean, std = self.train_set.statistics()
        torch.manual_seed(config.seed)
        self.model = ImageClassifier(
            architecture.build(len(self.train_set.class_names)),
            arch=config.arch,
            class_names=self.train_set.class_names,
            input_size=input_size,
            crop_pct=1.0,
            mean=mean,
            std=std,
        ).to(self.device)
        self.network: nn.Module = self.model
        if world_size > 1:
            self.network = nn.parallel.DistributedDataParallel(self.model)
        # Free training runs epochs / m passes, each minibatch replayed m times.
        self.passes = max(1, math.ceil(config.epochs / config.replays)) if config.method == "free" else config.epochs
        self.steps_per_epoch = math.ceil(len(self.train_set.labels) / config.batch_size)
        replays = config.replays if config.method == "free" else 1
        total_steps = self.passes * self.steps_per_epoch * replays
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        # multistep: lr x0.1 at 50% and 75% of the optimizer steps; cosine: annealed to 0 over them.
        self.scheduler: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
            if config.schedule == "cosine"
            else torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer, [int(0.5 * total_steps), int(0.75 * total_steps)], 0.1
            )
        )
        self.epoch, self.step = 0, 0
        self.free_delta: torch.Tensor | None = None
        self.history: list[EpochMetrics] = []
        if config.method == "iwdd":
            torch.manual_seed(config.seed + 1)
            self.generator = ConditionalGenerator(16).to(self.device)
            self.critic = PatchCritic(16).to(self.device)
            self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=5e-4, betas=(0.5, 0.999))
            self.optimizer_d = torch.optim.Adam(self.critic.parameters(), lr=5e-4, betas=(0.5, 0.999))

    # ----- state -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return Path(self.config.out).with_suffix(".state.pt")

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "config": asdict(self.config),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": [asdict(metrics) for metrics in self.history],
        }
        if self.free_delta is not None:
            state["free_delta"] = self.free_delta
        if self.config.method == "iwdd":
            state["generator"] = self.generator.state_dict()
            state["critic"] = self.critic.state_dict()
            state["optimizer_g"] = self.optimizer_g.state_dict()
            state["optimizer_d"] = self.optimizer_d.state_dict()
        return state

    def save_state(self) -> None:
        if self.rank == 0:
            state = self.state()
            write_atomic(self.state_path, lambda temporary: torch.save(state, temporary))

    def load_state(self) -> bool:
        if not self.state_path.exists():
            return False
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as error:
            raise InputError(f"{self.state_path}: unreadable training state ({type(error).__name__})") from error
        saved = state["config"]
        mismatched = [
            key
            for key in ("method", "arch", "epochs", "batch_size", "seed")
            if saved.get(key) != getattr(self.config, key)
        ]
        if mismatched:
            raise InputError(f"{self.state_path}: was written by another run (differs in {', '.join(mismatched)})")
        self.model.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = [EpochMetrics(**metrics) for metrics in state["history"]]
        self.free_delta = state.get("free_delta")
        if self.config.method == "iwdd":
            self.generator.load_state_dict(state["generator"])
            self.critic.load_state_dict(state["critic"])
            self.optimizer_g.load_state_dict(state["optimizer_g"])
            self.optimizer_d.load_state_dict(state["optimizer_d"])
        return True

    # ----- training ----------------------------------------------------------------------------

    def _batches(self, epoch: int, first_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Generator]]:
        """This rank's share of each global minibatch of `epoch` from `first_step` on, augmented on the
        device; deterministic per step, so a resumed epoch continues with the same minibatches."""
        order = torch.randperm(
            len(self.train_set.labels), generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        )
        size = self.config.batch_size
        steps = range(first_step, self.steps_per_epoch)
        shares = [order[step * size : (step + 1) * size][self.rank :: self.world_size] for step in steps]
        for step, indices, images in zip(steps, shares, self.train_set.gather(shares)):
            generator = torch.Generator().manual_seed(hash((self.config.seed, epoch, step)) % 2**63)
            images = augment(images.to(self.device), generator)
            yield images, self.train_set.labels[indices].to(self.device), generator

    def _average_gradients(self, module: nn.Module) -> None:
        """Under torchrun, average a module's gradients over processes, as DDP does for the classifier.

        IWDD's generator and critic are not wrapped in DDP: the critic's gradient penalty needs a double
        backward, which DDP does not support. Averaged by hand, every process keeps the same GAN.
        """
        if self.world_size > 1:
            for parameter in module.parameters():
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= self.world_size

    def _sgd_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def _train_step(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[float, float]:
        method = self.config.method
        if method in ("natural", "pgd"):
            if method == "pgd":
                attack = PGD(
                    self.model, self.config.eps, self.config.pgd_alpha, self.config.pgd_steps, random_start=True
                )
                seeds = torch.randint(0, 2**31 - 1, (len(images),), generator=generator).tolist()
                images = attack(images, Misclassification(labels), seeds)
            self.model.train()
            logits = self.network(images)
            loss = F.cross_entropy(logits, labels)
            self._sgd_step(loss)
            return loss.item(), (logits.argmax(1) == labels).float().mean().item()
        if method == "free":
            return self._free_step(images, labels)
        return self._iwdd_step(images, labels, generator)

    def _free_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """Shafahi et al.: replay the minibatch m times, one perturbation carried across replays and batches."""
        eps = self.config.eps
        if (
            self.free_delta is None
            or self.free_delta.shape[1:] != images.shape[1:]
            or len(self.free_delta) < len(images)
        ):
            self.free_delta = torch.zeros(self.config.batch_size, *images.shape[1:], device=self.device)
        delta = self.free_delta[: len(images)].clone()
        self.model.train()
        loss_value = accuracy = 0.0
        for _ in range(self.config.replays):
            delta.requires_grad_(True)
            logits = self.network((images + delta).clamp(0, 1))
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
            gradient = delta.grad.detach()
            self.optimizer.step()
            self.scheduler.step()
            delta = (delta.detach() + eps * gradient.sign()).clamp(-eps, eps)
            loss_value, accuracy = loss.item(), (logits.argmax(1) == labels).float().mean().item()
        self.free_delta[: len(images)] = delta.detach()
        return loss_value, accuracy

    def _iwdd_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
        """Algorithm 2: critic (WGAN-GP on patches), generator (-E f + tau L_c), classifier (beta CE + CE),
        with the generator's samples refined by K PGD steps (see README: what we changed)."""
        config = self.config
        criterion = Misclassification(labels)
        noise = torch.randn(len(images), 1, *images.shape[-2:], generator=generator).to(self.device)
        # The GAN steps take a quarter of the minibatch (a 32x32 image still gives the critic 484 patch
        # scores), which keeps an IWDD epoch with PGD training's K refine steps near a PGD-10 epoch (1.03x).
        share = max(1, len(images) // 4)
        real, real_noise = images[:share], noise[:share]
        self.generator.train()
        # Critic: the real patch distribution is x's, the fake one x~'s.
        fake = self.generator(real, real_noise).detach()
        real_scores, fake_scores = critic_scores(self.critic, real, fake)
        critic_loss = -real_scores.mean() + fake_scores.mean()
        critic_loss = critic_loss + 0.1 * gradient_penalty(self.critic, real, fake, generator)
        self.optimizer_d.zero_grad()
        critic_loss.backward()
        self._average_gradients(self.critic)
        self.optimizer_d.step()
        # Generator (eq. 4): -E f keeps the patch distribution close, SinGAN's reconstruction term keeps
        # g(x, 0) = x, and tau * L_c fools the classifier until a margin kappa (as in IWDA).
        self.model.eval()
        with frozen(self.model):
            fake = self.generator(real, real_noise)
            reconstruction = self.generator(real, torch.zeros_like(real_noise))
            generator_loss = (
                -critic_scores(self.critic, real, fake)[1].mean()
                + config.alpha * F.mse_loss(reconstruction, real)
                + config.tau
                * bounded_classification_loss(criterion.select(slice(0, share)), self.model(fake), config.kappa)
            )
            self.optimizer_g.zero_grad()
            generator_loss.backward()
            self._average_gradients(self.generator)
            self.optimizer_g.step()
        # Our change (plain generator samples gave far less than PGD-level robustness): the generator's
        # sample, projected onto the eps-ball, starts PGD training's K steps in place of its uniform start.
        with torch.no_grad():
            fake = self.generator(images, noise)
        adversarial = projected_start(images, fake, config.eps)
        if steps := config.iwdd_refine_steps:
            refine = PGD(self.model, config.eps, config.iwdd_refine_alpha, steps, random_start=False)
            adversarial = refine.refine(images, adversarial, criterion)
        # Classifier: beta * CE(h(x), y) + CE(h(x~), y), divided by 1 + beta so that its gradient has the
        # scale of PGD training's whatever beta (all methods share one learning-rate schedule; undivided,
        # beta 0.5 cost 2.3 points of clean accuracy: weights/README.md). Clean and adversarial images go
        # in separate passes, each normalized by its own batch statistics, and only the adversarial pass
        # updates BatchNorm's running statistics, so at test time adversarial inputs meet the statistics
        # they were trained with, as in PGD training.
        self.model.train()
        # The clean pass bypasses DDP's wrapper: DDP refuses a second forward before a backward (torch
        # 2.11), and one backward through both passes still reduces every gradient exactly once.
        with batchnorm_statistics_kept(self.model):
            clean_loss = F.cross_entropy(self.model(images), labels)
            # A variant: the generator's raw samples (the paper's x~, IWD-close but not eps-bounded) too.
            sample_loss = F.cross_entropy(self.model(fake), labels) if config.sample_weight else 0.0
        adversarial_logits = self.network(adversarial)
        loss = config.beta * clean_loss + F.cross_entropy(adversarial_logits, labels)
        loss = (loss + config.sample_weight * sample_loss) / (1 + config.beta + config.sample_weight)
        self._sgd_step(loss)
        return loss.item(), (adversarial_logits.argmax(1) == labels).float().mean().item()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.config.precision, self.device)

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        correct = 0
        with self._autocast():
            index_batches = torch.arange(len(self.val_set.labels)).split(256)
            for indices, images in zip(index_batches, self.val_set.gather(index_batches)):
                predicted = self.model(images.to(self.device)).argmax(1).cpu()
                correct += (predicted == self.val_set.labels[indices]).sum().item()
        return correct / len(self.val_set.labels)

    def fit(
        self,
        resume: bool = False,
        progress: ProgressCallback = no_progress,
        on_epoch: Callable[[EpochMetrics], None] | None = None,
    ) -> list[EpochMetrics]:
        if resume:
            self.load_state()
        elif self.state_path.exists() and self.rank == 0:
            self.state_path.unlink()  # a fresh run must not be resumed into later
        total = self.passes * self.steps_per_epoch
        while self.epoch < self.passes:
            start = time.perf_counter()
            losses, accuracies = [], []
            for images, labels, generator in self._batches(self.epoch, self.step):
                with self._autocast():
                    loss, accuracy = self._train_step(images, labels, generator)
                losses.append(loss)
                accuracies.append(accuracy)
                self.step += 1
                progress(self.epoch * self.steps_per_epoch + self.step, total, f"{self.config.method} training")
                if (
                    self.config.save_every
                    and self.step % self.config.save_every == 0
                    and self.step < self.steps_per_epoch
                ):
                    self.save_state()
            metrics = EpochMetrics(
                self.epoch + 1,
                sum(losses) / max(1, len(losses)),
                sum(accuracies) / max(1, len(accuracies)),
                self.validate(),
                time.perf_counter() - start,
                self.optimizer.param_groups[0]["lr"],
            )
            self.history.append(metrics)
            self.epoch, self.step = self.epoch + 1, 0
            self.save_checkpoint()
            self.save_state()
            if on_epoch:
                on_epoch(metrics)
        return self.history

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        config = asdict(self.config)
        info = {
            "dataset": Path(self.config.data).resolve().name,
            "method": self.config.method,
            "hyperparameters": {key: config[key] for key in config if key not in ("data", "out")},
            "epoch": self.epoch,
            "metrics": asdict(self.history[-1]) if self.history else {},
            "seconds": sum(metrics.seconds for metrics in self.history),
        }
        extra = {}
        if self.config.method == "iwdd":
            extra = {f"{GENERATOR_PREFIX}{key}": value for key, value in self.generator.state_dict().items()}
            extra.update({f"critic.{key}": value for key, value in self.critic.state_dict().items()})
        save_classifier(self.model, self.config.out, info, extra)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(EpochMetrics.__dataclass_fields__))
        writer.writeheader()
        for metrics in self.history:
            writer.writerow(asdict(metrics))
        write_text_atomic(Path(self.config.out).with_suffix(".metrics.csv"), buffer.getvalue())


def defend(
    config: TrainConfig,
    resume: bool = False,
    progress: ProgressCallback = no_progress,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> list[EpochMetrics]:
    """Train a classifier by `config.method` and write its checkpoint; returns per-epoch metrics."""
    os.makedirs(Path(config.out).resolve().parent, exist_ok=True)
    return Trainer(config, rank, world_size, device).fit(resume, progress, on_epoch)
