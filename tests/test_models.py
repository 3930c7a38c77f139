from __future__ import annotations

import csv

import pytest
import torch

from iwdctl.classes import ClassIndex, imagenet_class_names, imagenet_wnids
from iwdctl.errors import ClassNameError, ModelError
from iwdctl.images import load_image, preprocess
from iwdctl.models import ARCHITECTURES, ImageClassifier, load_classifier, read_state_dict, save_classifier
from iwdctl.models import lite0 as lite0_module

from .conftest import shared_data


def test_lite0_key_mapping_covers_every_key_and_shape():
    network = lite0_module.build_network()
    source = torch.load(lite0_module.package_weights_path(), map_location="cpu", weights_only=True)
    mapped = lite0_module.map_state_dict(source, network)
    expected = network.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[key].shape == expected[key].shape for key in expected)
    # The first block's projection and a later block's expansion land on different timm layers.
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    broken = dict(source)
    broken["_fc.weight"] = broken["_fc.weight"][:10]
    with pytest.raises(ModelError, match="shape"):
        lite0_module.map_state_dict(broken, network)
    del broken["_fc.weight"]
    with pytest.raises(ModelError, match="missing"):
        lite0_module.map_state_dict(broken, network)


def test_lite0_classifies_real_photos(lite0):
    root = shared_data("nips17")
    with open(root / "images.csv") as handle:
        rows = list(csv.DictReader(handle))[:48]
    images = torch.stack([preprocess(load_image(root / "images" / f"{row['ImageId']}.png"), 224) for row in rows])
    labels = torch.tensor([int(row["TrueLabel"]) - 1 for row in rows])
    with torch.no_grad():
        accuracy = (lite0(images).argmax(1) == labels).float().mean().item()
    # lite0 reaches 80% top-1 on the 1000 nips17 photos; a broken mapping or normalization gives far less.
    assert accuracy >= 0.7, accuracy


def test_lite0_runs_a_folded_copy_in_eval_mode_that_follows_the_weights():
    """In eval mode lite0 runs with each BatchNorm folded into its convolution: the same logits and
    input gradients as the network itself; the copy is rebuilt when the weights change, and train
    mode runs the network itself."""
    model = load_classifier("efficientnet_lite0", device="cpu").eval()
    images = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours, reference = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    logits = model(ours)
    network = model.network.eval()
    expected = network(((reference - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))
    assert model._folded is not None and model._folded[1] is not network
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model._folded[1].modules())
    torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)
    (gradient,) = torch.autograd.grad(logits[:, 0].sum(), ours)
    (expected_gradient,) = torch.autograd.grad(expected[:, 0].sum(), reference)
    # Rounding moves a few activations across ReLU6's kinks, so compare the gradients as a whole.
    assert (gradient - expected_gradient).norm() <= 1e-2 * expected_gradient.norm()
    with torch.no_grad():
        network.classifier.bias.add_(1.0)  # the folded copy must follow the weights
        torch.testing.assert_close(model(images), logits.detach() + 1.0, atol=2e-4, rtol=1e-4)
        model.train()
        assert model._eval_network() is network


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "inception_v3"])
def test_torchvision_networks_fold_every_batch_norm(name):
    """The registry's torchvision networks lose every BatchNorm to folding and keep their function
    (random weights and running statistics, so that folding has something to do)."""
    from iwdctl.models.fold import fold_batch_norms

    generator = torch.Generator().manual_seed(0)
    network = ARCHITECTURES[name].build(1000).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    folded = fold_batch_norms(network)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in network.modules())  # a copy
    if name == "resnet18":
        images = torch.rand(2, 3, 64, 64, generator=generator)
        with torch.no_grad():
            expected = network(images)
            torch.testing.assert_close(folded(images), expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def test_lite0_carries_its_metadata(lite0):
    assert lite0.input_size == 224 and lite0.num_classes == 1000
    assert lite0.class_names[425] == "barn" and lite0.wnids[425] == "n02793495"
    assert not lite0.training


def test_class_resolution_by_name_index_wnid():
    classes = ClassIndex(imagenet_class_names(), imagenet_wnids())
    assert classes.resolve("barn") == 425
    assert classes.resolve("coral reef") == classes.resolve("Coral_Reef") == classes.resolve("coralreef") == 973
    assert classes.resolve("425") == 425 and classes.resolve(425) == 425
    assert classes.resolve("n09256479") == 973
    with pytest.raises(ClassNameError, match="did you mean 'barn'"):
        classes.resolve("barnn")
    with pytest.raises(ClassNameError, match="out of range"):
        classes.resolve("1000")
    with pytest.raises(ClassNameError, match="ambiguous"):
        ClassIndex(["cat", "Cat"]).resolve("cat")


def _tiny_classifier(arch: str = "preact_resnet18_w16") -> ImageClassifier:
    torch.manual_seed(0)
    network = ARCHITECTURES[arch].build(3)
    return ImageClassifier(
        network, arch=arch, class_names=["a", "b", "c"], input_size=32, crop_pct=1.0, mean=(0.4,) * 3, std=(0.2,) * 3
    )


def test_checkpoint_round_trip(tmp_path):
    model = _tiny_classifier().eval()
    save_classifier(model, tmp_path / "m.safetensors", {"method": "natural", "epoch": 3})
    loaded = load_classifier(tmp_path / "m.safetensors", device="cpu")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.class_names == ("a", "b", "c") and loaded.crop_pct == 1.0 and loaded.mean == (0.4, 0.4, 0.4)
    assert loaded.metadata["method"] == "natural" and loaded.metadata["epoch"] == 3


def test_bad_checkpoints_raise_model_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable"):
        load_classifier(tmp_path / "junk.safetensors")
    model = _tiny_classifier()
    save_classifier(model, tmp_path / "m.safetensors")
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    save_file(
        load_file(str(tmp_path / "m.safetensors")),
        str(tmp_path / "other.safetensors"),
        {**metadata, "arch": "preact_resnet18"},
    )
    with pytest.raises(ModelError, match="do not fit|shape"):
        load_classifier(tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="unknown model"):
        load_classifier("no_such_model")
    with pytest.raises(ModelError, match="nothing is downloaded"):
        load_classifier("resnet18", weights=None) if not _hub_has("resnet18") else pytest.skip("hub cache has resnet18")


def _hub_has(name: str) -> bool:
    from iwdctl.models import _torch_hub_checkpoint

    return _torch_hub_checkpoint(name) is not None


# torch warns that the hostile pickle uses protocol 4 before refusing it: expected here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_load_only_weights(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"x": Evil()}, handle)
    with pytest.raises(ModelError, match="refused|unreadable"):
        read_state_dict(tmp_path / "evil.pth")
    network = ARCHITECTURES["resnet18"].build(1000)
    torch.save(network.state_dict(), tmp_path / "r18.pth")
    loaded = load_classifier("resnet18", weights=str(tmp_path / "r18.pth"), device="cpu")
    assert torch.equal(loaded.network.fc.weight, network.fc.weight)


def test_loader_view_matches_torchvision_transforms():
    from torchvision import transforms

    from iwdctl.models import IMAGENET_MEAN, IMAGENET_STD, LoaderView

    images = torch.rand(2, 3, 224, 224)
    expected = transforms.Compose(
        [
            transforms.Resize(256, transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(224),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(images)
    assert torch.allclose(LoaderView(IMAGENET_MEAN, IMAGENET_STD, resize=256).apply(images, 224), expected, atol=1e-5)
    plain = LoaderView(IMAGENET_MEAN, IMAGENET_STD).apply(images, 224)
    assert torch.allclose(plain, transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(images), atol=1e-6)


def test_lite0_logits_under_each_loader_view(lite0):
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        views = lite0.view_logits(image)
        assert len(views) == 1 + len(lite0.loader_views) == 3
        assert torch.equal(views[0], lite0(image))
        assert not torch.allclose(views[1], views[0])


def test_classifiers_run_in_channels_last(tiny_model):
    """NHWC is the layout the attack loops run fastest in (benchmarks/memory_format.py); checkpoints
    are still written contiguous."""
    convolutions = [module for module in tiny_model.network.modules() if isinstance(module, torch.nn.Conv2d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
