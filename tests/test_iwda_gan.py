"""The paper's GAN attack (iwda): B images' pyramids trained at once, each as if alone."""

from __future__ import annotations

import torch

from iwdctl.attacks import make_attack
from iwdctl.attacks.iwda import (
    PatchCritic,
    ScaleGenerator,
    TrainedPyramid,
    gradient_penalty,
    stack_by_image,
    stacked_gradient_penalty,
)
from iwdctl.criteria import Misclassification, TargetedMisclassification
from iwdctl.iwd import exact_iwd


def _side_by_side(images: torch.Tensor) -> torch.Tensor:  # (B, N, 3, H, W) -> (N, B x 3, H, W)
    return images.transpose(0, 1).flatten(1, 2)


def test_stacked_networks_compute_each_images_own_output_and_gradient():
    torch.manual_seed(0)
    generators = [ScaleGenerator(8) for _ in range(3)]
    critics = [PatchCritic(8) for _ in range(3)]
    stacked_generator, stacked_critic = ScaleGenerator.stacked(generators), PatchCritic.stacked(critics)
    noise, previous = torch.randn(3, 2, 3, 20, 20), torch.rand(3, 2, 3, 20, 20)  # 3 images, 2 samples each
    # Training mode: BatchNorm normalises by each image's own statistics, as in separate networks.
    stacked_scores = stacked_critic(stacked_generator(_side_by_side(noise), _side_by_side(previous)))
    stacked_scores.square().sum().backward()
    for image, (generator, critic) in enumerate(zip(generators, critics)):
        scores = critic(generator(noise[image], previous[image]))
        assert torch.allclose(stacked_scores[:, image : image + 1], scores, atol=1e-5)
        scores.square().sum().backward()
        for own, stacked in ((generator, stacked_generator), (critic, stacked_critic)):
            first_conv_gradient = stacked.body[0][0].weight.grad.unflatten(0, (3, -1))[image]
            assert torch.allclose(first_conv_gradient, own.body[0][0].weight.grad, atol=1e-4, rtol=1e-4)
    # A mistake in the layout (images mixed up) would not pass: the networks differ.
    assert not torch.allclose(stacked_scores[:, 0], stacked_scores[:, 1], atol=1e-2)


def test_stack_by_image_refuses_an_unknown_layer():
    import pytest

    with pytest.raises(TypeError):
        stack_by_image([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])


def test_stacked_gradient_penalty_is_the_sum_of_each_images_own():
    torch.manual_seed(1)
    critics = [PatchCritic(8) for _ in range(2)]
    real, fake = torch.rand(2, 1, 3, 16, 16), torch.rand(2, 1, 3, 16, 16)
    rho = torch.rand(1, 2)
    stacked = stacked_gradient_penalty(PatchCritic.stacked(critics), _side_by_side(real), _side_by_side(fake), rho)
    separate = sum(
        stacked_gradient_penalty(critic, real[image], fake[image], rho[:, image : image + 1])
        for image, critic in enumerate(critics)
    )
    # IWDD's penalty (one critic) is the same with rho drawn from its generator.
    own_rho = torch.rand(1, 1, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(
        gradient_penalty(critics[0], real[0], fake[0], torch.Generator().manual_seed(5)),
        stacked_gradient_penalty(critics[0], real[0], fake[0], own_rho),
    )
    assert torch.allclose(stacked, separate, rtol=1e-5)


def test_pyramids_trained_together_match_those_trained_alone(tiny_model, tiny_batch):
    images, labels = tiny_batch
    images, labels = images[:3], labels[:3]
    seeds = [[11, 12], [21, 22], [31, 32]]
    results = {}
    for together in (1, 3):
        # The GAN alone: the refinement's steps would carry the rounding differences further.
        attack = make_attack(
            "iwda", tiny_model, preset="quick", steps=2, start_scale=0, images_at_once=together, refine=0
        )
        results[together] = attack.sample(images, Misclassification(labels), seeds)
    difference = (results[1] - results[3]).abs()
    assert results[3].shape == (3, 2, 3, 32, 32)
    # Equal up to float rounding (a grouped convolution sums in another order): one 8-bit level at most.
    assert difference.max() <= 1.01 / 255 and difference.mean() < 2e-3
    # The samples are each image's own (not another image's, nor x itself).
    assert (results[3][:, 0] - images).abs().mean() > 1e-3
    assert (results[3][0] - results[3][1]).abs().mean() > 0.05


def test_refinement_makes_samples_adversarial_by_the_margin_and_only_lowers_iwd_after(tiny_model, tiny_batch):
    images, labels = tiny_batch
    images, labels = images[:4], labels[:4]
    criterion = Misclassification(labels)
    seeds = [[5 + index] for index in range(len(images))]
    raw = make_attack("iwda", tiny_model, preset="quick", refine=0).sample(images, criterion, seeds)[:, 0]
    attack = make_attack("iwda", tiny_model, preset="quick", refine=20)
    refined = attack.sample(images, criterion, seeds)[:, 0]
    refiner = attack.refiner
    with torch.no_grad():
        raw_margin, refined_margin = refiner._margin(raw, criterion), refiner._margin(refined, criterion)
    # The quick GAN's samples are barely adversarial, if at all; refined, every one is by the margin.
    assert (raw_margin < refiner.kappa).any()
    assert (refined_margin >= refiner.kappa).all()
    # From a sample that is adversarial by the margin, the refinement only descends IWD.
    again = refiner.refine(images, refined, criterion, [torch.Generator().manual_seed(0) for _ in images])

    def iwds(samples: torch.Tensor) -> torch.Tensor:
        return torch.tensor([exact_iwd(x.double(), y.double()) for x, y in zip(images, samples)])

    before, after = iwds(refined), iwds(again)
    assert (after <= before * 1.05 + 1e-4).all()
    assert after.mean() < 0.95 * before.mean()
    # Still the GAN's re-synthesis, not x.
    assert (again - images).abs().mean() > 1e-3


def test_short_presets_leave_the_classification_to_the_refinement(tiny_model, tiny_batch):
    # Followed by a refinement, the quick GAN re-synthesises x whatever the target; without one it
    # is the paper's GAN, tau * L_c in the generator's loss, and its samples depend on the target.
    images = tiny_batch[0][:2]
    classes = tiny_model.num_classes

    def gan_samples(refine: int, shift: int) -> torch.Tensor:
        attack = make_attack("iwda", tiny_model, preset="quick", steps=2, refine=refine)
        criterion = TargetedMisclassification((tiny_batch[1][:2] + shift) % classes)
        generators = [torch.Generator().manual_seed(7 + index) for index in range(len(images))]
        return attack.train(images, criterion, generators).sample(1, criterion, generators, 1)

    assert torch.equal(gan_samples(20, 1), gan_samples(20, 2))
    assert not torch.equal(gan_samples(0, 1), gan_samples(0, 2))
    assert make_attack("iwda", tiny_model, preset="paper").gan_tau == 0.1  # the paper's schedule keeps it


def test_partial_presets_inject_x_above_scale_zero(tiny_model):
    # A preset that trains only the finest scales never draws a multi-scale image from noise.
    for preset, scales, first in (("cpu", 2, 1), ("quick", 9, 6), ("cpu", 1, 0), ("paper", 2, 0)):
        assert make_attack("iwda", tiny_model, preset=preset)._first_scale(scales) == first


def _pyramid(tiny_model, sizes: list[int], first: int, count: int, preset: str = "cpu") -> TrainedPyramid:
    reals = [torch.rand(1, 3 * count, size, size) for size in sizes]
    return TrainedPyramid(make_attack("iwda", tiny_model, preset=preset), reals, first, count)


def test_generators_start_as_the_identity_on_injected_x_and_from_the_coarser_scale_after(tiny_model):
    generators = [torch.Generator().manual_seed(3)]
    pyramid = _pyramid(tiny_model, [20, 27, 36], 1, 1)
    scale_generator, critic = pyramid._new_networks(1, generators)
    noise, previous = torch.randn(2, 3, 27, 27), torch.rand(2, 3, 27, 27)
    assert torch.equal(scale_generator(noise, previous), previous)  # before any step: x passes unchanged
    with torch.no_grad():
        for parameter in [*scale_generator.parameters(), *critic.parameters()]:
            parameter.add_(0.01)
    pyramid.generators.append(scale_generator)
    pyramid.critic = critic
    following, following_critic = pyramid._new_networks(2, generators)
    for trained, started in ((scale_generator, following), (critic, following_critic)):
        for (name, value), (_, start) in zip(trained.state_dict().items(), started.state_dict().items()):
            assert torch.equal(value, start), name
    # From noise (scale 0, nothing injected) a generator starts as the paper initialises it, and so
    # does one whose channel count differs from the coarser scale's (the paper preset's scale 4).
    first, _ = _pyramid(tiny_model, [20, 27], 0, 1)._new_networks(0, generators)
    assert first.head[0].weight.abs().sum() > 0
    pyramid = _pyramid(tiny_model, [20, 22, 24, 26, 28], 0, 1, preset="paper")
    pyramid.generators.append(ScaleGenerator(32))
    pyramid.critic = PatchCritic(32)
    wider, _ = pyramid._new_networks(4, generators)
    assert wider.head[0].weight.shape[1] == 64 and wider.head[0].weight.abs().sum() > 0


def test_an_images_gan_sample_does_not_depend_on_the_classifiers_batch_padding(tiny_model, tiny_batch):
    # A lone image's job runs the classifier unpadded, a folder's padded to 16: the same sample.
    images, labels = tiny_batch
    padded = tiny_model.batch_invariant()
    samples = [
        make_attack("iwda", model, preset="quick", steps=2).sample(images[:1], Misclassification(labels[:1]), [[4]])
        for model in (tiny_model, padded)
    ]
    assert torch.equal(samples[0], samples[1])
    assert make_attack("iwda", padded).model.batch_granule == 1


def test_samples_past_the_first_build_on_x_rearranged_and_lie_apart(tiny_model, tiny_batch):
    images, labels = tiny_batch[0][:2], tiny_batch[1][:2]
    criterion = Misclassification(labels)
    attack = make_attack("iwda", tiny_model, preset="quick", steps=2, refine=0)
    generators = [torch.Generator().manual_seed(11 + index) for index in range(len(images))]
    pyramid = attack.train(images, criterion, generators)
    # Each sample follows its own start: x for the first, x mirrored for the second.
    starts = torch.stack([images, images.flip(-1)], dim=1)
    samples = pyramid.sample(2, criterion, generators, 3, starts)
    for image, (first, second) in zip(images, samples):
        assert (first - image).norm() < (first - image.flip(-1)).norm()
        assert (second - image.flip(-1)).norm() < (second - image).norm()
    # Through the attack, K samples lie apart: before, noise draws alone left them a few tenths apart.
    drawn = attack.sample(images, criterion, [[3, 4, 5], [6, 7, 8]])
    for image_samples in drawn:
        apart = [(image_samples[i] - image_samples[j]).norm() for i in range(3) for j in range(i + 1, 3)]
        assert min(apart) > 0.5


def test_bf16_gan_runs_under_autocast_with_float32_weights_and_images(tiny_model, tiny_batch):
    images, labels = tiny_batch[0][:1], tiny_batch[1][:1]
    criterion = Misclassification(labels)

    def pyramid_and_samples(precision: str) -> tuple[TrainedPyramid, torch.Tensor]:
        attack = make_attack("iwda", tiny_model, preset="quick", steps=2, refine=0, precision=precision)
        generators = [torch.Generator().manual_seed(2)]
        pyramid = attack.train(images, criterion, generators)
        return pyramid, pyramid.sample(2, criterion, generators, 2)

    pyramid, samples = pyramid_and_samples("bf16")
    _, reference = pyramid_and_samples("fp32")
    weights = [parameter for network in pyramid.generators for parameter in network.parameters()]
    assert all(parameter.dtype == torch.float32 for parameter in weights)
    assert samples.dtype == torch.float32 and samples.min() >= 0 and samples.max() <= 1
    # Rounded differently (autocast is on), yet the same re-synthesis of x.
    assert not torch.equal(samples, reference)
    assert (samples - reference).abs().mean() < 0.05


def test_each_sample_keeps_its_verified_candidate_of_least_iwd(tiny_model, tiny_batch, monkeypatch):
    images, labels = tiny_batch[0][:2], tiny_batch[1][:2]
    attack = make_attack("iwda", tiny_model, preset="quick", candidates=3)
    assert make_attack("iwda", tiny_model, refine=0).candidates == 1  # unrefined draws are ranked already
    # 2 images x 2 samples x 3 candidates: noise of amplitude 0.2, 0.02 and 0.1, so IWD ranks 1, 2, 0.
    noise = torch.rand((2, 2, 3, *images.shape[1:]), generator=torch.Generator().manual_seed(0)) - 0.5
    amplitudes = torch.tensor([0.2, 0.02, 0.1])[None, None, :, None, None, None]
    refined = (images[:, None, None] + noise * amplitudes).clamp(0, 1)
    distances = torch.tensor(
        [
            [[exact_iwd(image.double(), candidate.double()) for candidate in sample] for sample in samples]
            for image, samples in zip(images, refined)
        ]
    )
    assert (distances.argsort(dim=2) == torch.tensor([1, 2, 0])).all()
    verified = torch.tensor([[[1, 1, 1], [1, 0, 1]], [[0, 0, 0], [1, 0, 0]]], dtype=torch.bool)
    monkeypatch.setattr(attack.refiner, "verified", lambda flat, criterion: verified.flatten())
    kept = attack._least_iwd(images, refined.flatten(1, 2), Misclassification(labels), 2)
    # The verified one of least IWD; where none is verified, the first.
    expected = torch.stack([refined[0, 0, 1], refined[0, 1, 2], refined[1, 0, 0], refined[1, 1, 0]])
    assert torch.equal(kept.flatten(0, 1), expected)
