"""Shared helpers for the evaluator tests: random Inception weights with realistic activation scales."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from guided_diffusion.evaluation.inception import InceptionV3


def random_inception(seed: int = 0) -> InceptionV3:
    """InceptionV3 with He-initialised convolutions and non-trivial batch-norm statistics, so features
    keep a useful scale through all layers (the default init shrinks them to ~1e-7)."""
    generator = torch.Generator().manual_seed(seed)
    network = InceptionV3()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_((torch.rand(channels, generator=generator) - 0.5) * 0.2)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_((torch.rand(channels, generator=generator) - 0.5) * 0.4)
        network.fc.weight.copy_(torch.randn(network.fc.weight.shape, generator=generator) * 0.05)
        network.fc.bias.copy_(torch.randn(network.fc.bias.shape, generator=generator))
    return network.eval()


def write_random_weights(path: Path, seed: int = 0) -> Path:
    """Save a random state dict under pytorch-fid's key names (which are our module names)."""
    torch.save(random_inception(seed).state_dict(), path)
    return path
