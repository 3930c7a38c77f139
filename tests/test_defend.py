from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchattacks

from iwdctl.cli import main
from iwdctl.defend import TrainConfig, Trainer, augment, defend
from iwdctl.errors import InputError
from iwdctl.evaluate import robust_accuracy
from iwdctl.models import load_classifier

from .conftest import shared_data


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory):
    """Three tiny6 classes, 24 training and 8 validation images each."""
    root = tmp_path_factory.mktemp("mini")
    source = shared_data("tiny6")
    for split, count in (("train", 24), ("val", 8)):
        for name in ("alp", "barn", "coral_reef"):
            (root / split / name).mkdir(parents=True)
            for file in sorted((source / split / name).iterdir())[:count]:
                shutil.copy(file, root / split / name / file.name)
    return root


def _config(data, out, method="natural", **changes):
    base = {"arch": "small_cnn", "epochs": 2, "batch_size": 16, "lr": 0.05, "pgd_steps": 2}
    return TrainConfig(data=str(data), out=str(out), method=method, **{**base, **changes})


@pytest.mark.parametrize("method", ["natural", "pgd", "free", "iwdd"])
def test_checkpoint_round_trip(mini_data, tmp_path, method):
    out = tmp_path / f"{method}.safetensors"
    history = defend(_config(mini_data, out, method, epochs=4 if method == "free" else 1))
    model = load_classifier(out, device="cpu")
    assert model.class_names == ("alp", "barn", "coral_reef") and model.input_size == 32
    assert model.metadata["method"] == method and model.metadata["epoch"] == len(history)
    assert model.metadata["hyperparameters"]["batch_size"] == 16
    assert (tmp_path / f"{method}.metrics.csv").read_text().count("\n") == len(history) + 1
    assert out.with_suffix(".state.pt").exists()
    if method == "free":
        assert len(history) == 1  # 4 epochs / 4 replays
    if method == "iwdd":
        from safetensors.torch import load_file

        assert any(key.startswith("generator.") for key in load_file(str(out)))


class KilledError(Exception):
    pass


@pytest.mark.parametrize("method", ["natural", "free"])
def test_kill_and_resume_matches_an_uninterrupted_run(mini_data, tmp_path, method):
    config = _config(mini_data, tmp_path / "a.safetensors", method, epochs=8 if method == "free" else 2)
    defend(config)
    reference = load_classifier(config.out, device="cpu")

    interrupted = _config(mini_data, tmp_path / "b.safetensors", method, epochs=config.epochs, save_every=1)

    def kill_after_four_steps(done, total, description=""):
        if done == 4:
            raise KilledError

    with pytest.raises(KilledError):
        defend(interrupted, progress=kill_after_four_steps)
    assert not (tmp_path / "b.safetensors").exists() or method == "free"
    defend(interrupted, resume=True)
    resumed = load_classifier(interrupted.out, device="cpu")
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(expected, actual, atol=1e-6), name


def test_pgd10_accuracy_equals_torchattacks(mini_data, tmp_path):
    defend(_config(mini_data, tmp_path / "m.safetensors"))
    model = load_classifier(tmp_path / "m.safetensors", device="cpu")  # torchattacks' reference runs there
    from iwdctl.data import discover
    from iwdctl.evaluate import ImageDataset

    samples = discover([mini_data / "val"], model.classes)
    ours = robust_accuracy(model, samples, "pgd10", 8 / 255, random_start=False)
    images, labels, _ = next(iter(torch.utils.data.DataLoader(ImageDataset(samples, 32, 1.0), batch_size=len(samples))))
    reference = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    adversarial = reference(images, labels)
    with torch.no_grad():
        expected = (model(adversarial).argmax(1) == labels).float().mean().item()
    assert ours == pytest.approx(expected, abs=1e-6)  # the same images survive: 1e-6 is float32 rounding
    # With random starts (ours seeded per image, torchattacks' from the global RNG) the two agree closely.
    torch.manual_seed(0)
    randomized = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)
    adversarial = randomized(images, labels)
    with torch.no_grad():
        expected_random = (model(adversarial).argmax(1) == labels).float().mean().item()
    assert abs(robust_accuracy(model, samples, "pgd10", 8 / 255) - expected_random) <= 0.1


def test_eval_cli_reports_robust_accuracy(mini_data, tmp_path, capsys):
    defend(_config(mini_data, tmp_path / "m.safetensors"))
    code = main(
        [
            "eval",
            "--model",
            str(tmp_path / "m.safetensors"),
            "--data",
            str(mini_data / "val"),
            "--attack",
            "pgd10,fgsm",
            "--json",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert code == 0
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["robust"]) == {"pgd10", "fgsm"} and 0 <= result["robust"]["pgd10"] <= result["top1"]


def _iwdctl(*arguments: str, processes: int = 1) -> subprocess.CompletedProcess[str]:
    """`python -m iwdctl ARGUMENTS`, or `torchrun --nproc-per-node N -m iwdctl ...`; one thread per process."""
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "iwdctl", *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def test_two_process_ddp_matches_one_process(mini_data, tmp_path):
    single = tmp_path / "single.safetensors"
    defend(_config(mini_data, single, epochs=1))
    double = tmp_path / "ddp.safetensors"
    result = _iwdctl(
        "defend",
        "--data",
        str(mini_data),
        "--method",
        "natural",
        "--arch",
        "small_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--out",
        str(double),
        "--device",
        "cpu",
        "-q",
        processes=2,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = load_classifier(single, device="cpu"), load_classifier(double, device="cpu")
    # Same global batches and averaged gradients; only BatchNorm's batch statistics are per process.
    for (name, a), b in zip(one.network.named_parameters(), two.network.parameters()):
        assert torch.allclose(a, b, atol=0.05, rtol=0.1), name
    assert two.metadata["epoch"] == 1


def test_bad_training_inputs(mini_data, tmp_path):
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="val"):
        Trainer(_config(tmp_path / "only_train", tmp_path / "x.safetensors"))
    empty = tmp_path / "empty_class"
    shutil.copytree(mini_data, empty)
    (empty / "train" / "lonely").mkdir()
    with pytest.raises(InputError, match="without images"):
        Trainer(_config(empty, tmp_path / "x.safetensors"))
    with pytest.raises(InputError, match="unknown training method"):
        Trainer(_config(mini_data, tmp_path / "x.safetensors", "magic"))
    with pytest.raises(InputError, match="unknown architecture"):
        Trainer(_config(mini_data, tmp_path / "x.safetensors", arch="resnet9000"))
    with pytest.raises(InputError, match="unknown precision"):
        Trainer(_config(mini_data, tmp_path / "x.safetensors", precision="fp8"))
    with pytest.raises(InputError, match="unknown schedule"):
        Trainer(_config(mini_data, tmp_path / "x.safetensors", schedule="linear"))
    defend(_config(mini_data, tmp_path / "x.safetensors", epochs=1))
    with pytest.raises(InputError, match="another run"):
        defend(_config(mini_data, tmp_path / "x.safetensors", arch="preact_resnet18_w16", epochs=1), resume=True)


def test_amortised_iwda_takes_the_generator_of_an_iwdd_checkpoint(mini_data, tmp_path, capsys):
    from iwdctl.attacks.iwda_amortised import AmortisedIWDA, load_generator
    from iwdctl.criteria import Misclassification
    from iwdctl.data import discover
    from iwdctl.images import load_image, quantize

    checkpoint = tmp_path / "iwdd.safetensors"
    defend(_config(mini_data, checkpoint, "iwdd", epochs=1))
    model = load_classifier(checkpoint, device="cpu")
    samples = discover([mini_data / "val"], model.classes)[:6]
    images = torch.stack([load_image(sample.path) for sample in samples])
    labels = torch.tensor([sample.label for sample in samples])
    attack = AmortisedIWDA(model, checkpoint, draws_per_sample=4)
    adversarial = attack(images, Misclassification(labels), list(range(6)))
    generator = load_generator(checkpoint)
    for index in range(6):
        noise = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            candidates = quantize(generator(images[index].expand(4, -1, -1, -1), noise))
            fooled = model(candidates).argmax(1) != labels[index]
        # One forward pass: the sample is one of its noise draws, an adversarial one whenever there is one.
        matches = [torch.equal(adversarial[index], candidate) for candidate in candidates]
        assert any(matches)
        assert fooled[matches.index(True)] or not fooled.any()
    out = tmp_path / "adv"
    arguments = ["attack", str(mini_data / "val" / "barn"), "--model", str(checkpoint), "--method", "iwda"]
    assert main([*arguments, "--generator", str(checkpoint), "--num", "2", "--out", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["method"] == "iwda-amortised" and len(report["images"]) == 8
    assert all((out / name).exists() for record in report["images"] for name in record["outputs"])
    natural = tmp_path / "natural.safetensors"
    defend(_config(mini_data, natural, epochs=1))
    capsys.readouterr()
    assert main([*arguments, "--generator", str(natural), "--out", str(tmp_path / "no"), "-q"]) == 2
    assert "holds no IWDD generator" in capsys.readouterr().err


def test_sharded_attack_merges_the_report_of_one_process(mini_data, tmp_path):
    checkpoint = tmp_path / "natural.safetensors"
    defend(_config(mini_data, checkpoint, epochs=1))
    arguments = ["attack", str(mini_data / "val"), "--model", str(checkpoint), "--method", "pgd3", "--device", "cpu"]
    for name, processes in (("one", 1), ("two", 2)):
        result = _iwdctl(*arguments, "--out", str(tmp_path / name), "-q", processes=processes)
        assert result.returncode == 0, result.stderr[-2000:]
    one, two = (json.loads((tmp_path / name / "report.json").read_text())["images"] for name in ("one", "two"))
    assert [record["input"] for record in two] == [record["input"] for record in one] and len(one) == 24
    for first, second in zip(one, two):
        # Each image draws from its own seeded generator, so the shard it lands in does not matter.
        assert first["outputs"] == second["outputs"] and first["success"] == second["success"]
        for name in first["outputs"]:
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


GAN_WORKER = """
import sys
import torch
from safetensors.torch import save_file
from iwdctl.defend import TrainConfig, Trainer
from iwdctl.runtime import distributed_context


def main() -> None:
    rank, world_size, _ = distributed_context(torch.device("cpu"))
    config = TrainConfig(data=sys.argv[1], out=sys.argv[2], method="iwdd", arch="small_cnn", epochs=1, batch_size=16)
    trainer = Trainer(config, rank, world_size)
    trainer.fit()
    gan = {f"generator.{key}": value for key, value in trainer.generator.named_parameters()}
    gan.update({f"critic.{key}": value for key, value in trainer.critic.named_parameters()})
    save_file({key: value.detach() for key, value in gan.items()}, f"{sys.argv[3]}{rank}.safetensors")


main()
"""


def test_two_process_iwdd_trains_one_generator_and_critic(mini_data, tmp_path):
    """Under torchrun, IWDD's generator and critic (not DDP-wrapped) average their gradients over
    processes, so every process holds the same GAN after training on its share of each batch."""
    from safetensors.torch import load_file

    worker = tmp_path / "worker.py"
    worker.write_text(GAN_WORKER)
    # Each process writes its own GAN and this test compares them: a collective after training (an
    # all_gather in the worker) made gloo abort one process at exit in about one run in four.
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(worker)]
    command += [str(mini_data), str(tmp_path / "iwdd.safetensors"), str(tmp_path / "gan-rank")]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[:4000]  # the ranks' tracebacks come first
    first, second = (load_file(str(tmp_path / f"gan-rank{rank}.safetensors")) for rank in (0, 1))
    assert first.keys() == second.keys() and any(key.startswith("critic.") for key in first)
    for key, value in first.items():
        assert torch.equal(value, second[key]), f"{key} differs between processes"


def test_batched_augmentation_equals_cropping_and_flipping_each_image():
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(9, 3, 12, 10, generator=generator)
    out = augment(images, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 9, (9, 2), generator=replay)
    flips = torch.rand(9, generator=replay) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for index in range(9):
        dy, dx = offsets[index].tolist()
        crop = padded[index, :, dy : dy + 12, dx : dx + 10]
        assert torch.equal(out[index], crop.flip(-1) if flips[index] else crop)


def test_cosine_schedule_anneals_to_zero(mini_data, tmp_path):
    trainer = Trainer(_config(mini_data, tmp_path / "c.safetensors", schedule="cosine"))
    total = trainer.passes * trainer.steps_per_epoch
    rates = []
    for _ in range(total):
        trainer.optimizer.step()
        trainer.scheduler.step()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates[0] < 0.05 and rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(0, abs=1e-12)


def test_cifar_nets_train_at_the_data_size(tmp_path):
    """64 x 64 images (imagenette64) train a CIFAR-style net at 64 x 64, not resized to 32."""
    source = shared_data("imagenette64")
    for split in ("train", "val"):
        for name in sorted(path.name for path in (source / split).iterdir() if path.is_dir())[:2]:
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for file in sorted((source / split / name).iterdir())[:6]:
                shutil.copy(file, tmp_path / "data" / split / name / file.name)
    defend(_config(tmp_path / "data", tmp_path / "m.safetensors", epochs=1, arch="preact_resnet18_w16"))
    model = load_classifier(str(tmp_path / "m.safetensors"), device="cpu")
    assert model.input_size == 64
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)


@pytest.mark.parametrize("method", ["natural", "pgd"])
def test_bf16_training_runs_on_the_cpu_and_changes_the_arithmetic(mini_data, tmp_path, method):
    histories = {
        precision: defend(_config(mini_data, tmp_path / f"{precision}.safetensors", method, precision=precision))
        for precision in ("fp32", "bf16")
    }
    assert all(torch.isfinite(torch.tensor(metrics.loss)) for metrics in histories["bf16"])
    assert histories["bf16"][-1].loss != histories["fp32"][-1].loss  # autocast was on
    assert abs(histories["bf16"][-1].loss - histories["fp32"][-1].loss) < 0.5
    load_classifier(str(tmp_path / "bf16.safetensors"), device="cpu")


@pytest.mark.parametrize("method", ["natural", "iwdd"])
def test_streaming_from_disk_trains_the_same_model_as_in_memory(mini_data, tmp_path, monkeypatch, method):
    """A folder too large for memory is decoded per minibatch by DataLoader workers; same minibatches,
    same augmentation, same weights as when the images are held in memory."""
    import iwdctl.defend as training

    defend(_config(mini_data, tmp_path / "memory.safetensors", method, epochs=1))
    monkeypatch.setattr(training, "fits_in_memory", lambda size: False)
    monkeypatch.setattr(training, "default_workers", lambda: 2)
    streamed_trainer = Trainer(_config(mini_data, tmp_path / "disk.safetensors", method, epochs=1))
    assert streamed_trainer.train_set.images is None and streamed_trainer.val_set.images is None
    history = streamed_trainer.fit()
    in_memory = load_classifier(str(tmp_path / "memory.safetensors"), device="cpu")
    streamed = load_classifier(str(tmp_path / "disk.safetensors"), device="cpu")
    assert streamed.mean == in_memory.mean and streamed.std == in_memory.std
    assert history[-1].val_accuracy == in_memory.metadata["metrics"]["val_accuracy"]
    for (name, expected), actual in zip(in_memory.state_dict().items(), streamed.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_restarts_only_lower_robust_accuracy(mini_data, tmp_path):
    """PGD's random start differs per restart, so more restarts can only find more adversarial examples;
    FGSM is deterministic, so its restarts change nothing."""
    from iwdctl.data import discover

    defend(_config(mini_data, tmp_path / "m.safetensors", epochs=1))
    model = load_classifier(str(tmp_path / "m.safetensors"), device="cpu")
    samples = discover([mini_data / "val"], model.classes)
    once = robust_accuracy(model, samples, "pgd5", 4 / 255, batch_size=8)
    thrice = robust_accuracy(model, samples, "pgd5", 4 / 255, batch_size=8, restarts=3)
    assert thrice <= once
    assert robust_accuracy(model, samples, "fgsm", 4 / 255, restarts=3) == robust_accuracy(
        model, samples, "fgsm", 4 / 255
    )


def test_iwdd_variants_change_training_and_are_recorded(mini_data, tmp_path):
    """--refine-steps 0 trains on the projected generator samples alone, --sample-weight adds the raw ones."""
    variants = {"default": {}, "r0-samples": {"refine_steps": 0, "sample_weight": 1.0}}
    losses = {}
    for name, changes in variants.items():
        out = tmp_path / f"{name}.safetensors"
        losses[name] = defend(_config(mini_data, out, "iwdd", epochs=1, **changes))[-1].loss
        hyper = load_classifier(str(out), device="cpu").metadata["hyperparameters"]
        assert all(hyper[key] == value for key, value in changes.items())
    assert losses["default"] != losses["r0-samples"]
    with pytest.raises(InputError):
        defend(_config(mini_data, tmp_path / "bad.safetensors", "iwdd", refine_steps=-1))


def test_robust_accuracy_under_an_early_stopping_attack_does_not_depend_on_batch_size(mini_data, tmp_path):
    """eval streams images through the attack (finished rows refilled): the same accuracy whatever
    the batch size, with some images fooled and some not within the step budget."""
    from iwdctl.data import discover

    defend(_config(mini_data, tmp_path / "m.safetensors", epochs=1))
    model = load_classifier(str(tmp_path / "m.safetensors"), device="cpu").batch_invariant()
    samples = discover([mini_data / "val"], model.classes)
    accuracies = {
        batch_size: robust_accuracy(model, samples, "iwda-ot", batch_size=batch_size, steps=4, restarts=2)
        for batch_size in (3, 16)
    }
    assert accuracies[3] == accuracies[16]
    assert 0 < accuracies[3] < 1
