"""A job's networks: checked against their files, built, loaded, and wrapped the way the job guides them.

`check_fits` tells, before anything is written or loaded, whether a checkpoint's tensors fit a network
config (on the "meta" device: no memory, no weights), naming the settings that differ (`mismatches`);
`load_network` builds and loads one network; `load_networks` both of a job's; `guidance_for` turns them into the
model the samplers call and the classifier guidance function.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.config import ClassifierConfig, ModelConfig
from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.runtime.performance import optimize_model, prepare_for_bf16
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.job import SamplingJob
from guided_diffusion.weights.checkpoints import (
    check_released_flags,
    diagnose_mismatch,
    inspect_checkpoint,
    load_model,
)

__all__ = ["Networks", "check_fits", "mismatches", "load_network", "load_networks", "guidance_for"]


@dataclass(frozen=True)
class Networks:
    """A job's networks, loaded: the diffusion model (or upsampler) and the classifier when it guides."""

    model: torch.nn.Module
    classifier: torch.nn.Module | None = None


def mismatches(config: ModelConfig | ClassifierConfig, path: str | os.PathLike[str], expected: str) -> list[str]:
    """What keeps the checkpoint at `path` from fitting `config`, one text per setting that differs (empty
    when it fits). The file must hold a network of kind `expected` ("diffusion", "superres" or
    "classifier": `weights.checkpoints.inspect_checkpoint` raises a one-line UserError otherwise). Reads the
    file once (memory-mapped) and builds the network on the "meta" device: no memory, no weights."""
    info = inspect_checkpoint(path, expected=expected)
    assert info.state is not None  # a network checkpoint (the expected kinds) always has its tensors
    with torch.device("meta"):
        network = config.build()
    return diagnose_mismatch(info.state, network) + check_released_flags(str(path), config.to_dict())


def check_fits(config: ModelConfig | ClassifierConfig, path: str | os.PathLike[str], expected: str) -> None:
    """Raise a one-line UserError unless the checkpoint at `path` holds a network of kind `expected` whose
    tensors fit `config` (`mismatches`); a mismatch names the flags to change."""
    problems = mismatches(config, path, expected)
    if problems:
        raise UserError(f"{path} does not match the model flags: " + "; ".join(problems))


def load_network(config: Any, path: str | os.PathLike[str], device: torch.device, *, channels_last: bool = False,
                 flags: Mapping[str, Any] | None = None, bf16: bool = False) -> torch.nn.Module:
    """`config.build()` with the weights at `path` (a one-line error naming mismatching flags), on
    `device`, in fp16 when the config says so (`use_fp16` / `classifier_use_fp16`), in eval mode. With
    `bf16` the torso is cast to bfloat16 once (`runtime.performance.prepare_for_bf16`, which picks the
    faster memory layout unless `channels_last` asks for NHWC)."""
    network: torch.nn.Module = config.build()
    load_model(Path(path), model=network, flags=flags if flags is not None else config.to_dict())
    network.to(device)
    if getattr(config, "use_fp16", False) or getattr(config, "classifier_use_fp16", False):
        network.convert_to_fp16()  # type: ignore[operator]  # the UNet and the classifier both have it
    network.requires_grad_(False)  # inference: no forward pass may record a graph through the weights
    if bf16:
        return prepare_for_bf16(network.eval(), channels_last=True if channels_last else None)
    optimized: torch.nn.Module = optimize_model(network.eval(), channels_last=channels_last)
    return optimized


def load_networks(job: SamplingJob, device: torch.device) -> Networks:
    """The job's model from `job.model_path` and, when it guides, its classifier from `job.classifier_path`."""
    model = load_network(job.model, job.model_path, device, channels_last=job.channels_last, bf16=job.bf16)
    classifier = None
    if job.guided:
        classifier = load_network(job.classifier, job.classifier_path, device, channels_last=job.channels_last,
                                  bf16=job.bf16)
    return Networks(model, classifier)


def guidance_for(job: SamplingJob, networks: Networks) -> tuple[GuidedModel, CondFn | None]:
    """The model as the samplers call it (classifier-free guidance, autocast) and the classifier
    guidance function (None when the job has no classifier guidance)."""
    model_fn = GuidedModel(networks.model, class_cond=job.model.class_cond, cfg_scale=job.cfg_scale,
                           null_label=job.null_label, autocast_dtype=job.autocast_dtype)
    cond_fn = None
    if job.guided:
        if networks.classifier is None:
            raise ValueError("classifier guidance needs a classifier network")
        cond_fn = classifier_cond_fn(networks.classifier, job.classifier_scale, autocast_dtype=job.autocast_dtype,
                                     scaling=job.settings.guidance_scaling)
    return model_fn, cond_fn
