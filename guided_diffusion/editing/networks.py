"""An edit's networks: checked against their files, loaded, and wrapped the way the edits call them.

`check_networks` tells, before anything is written or loaded, whether the job's checkpoints fit the
configs saved with them; `load_networks` loads them (sampling's `load_network`), `networks_from_modules`
wraps networks a Python caller already has, and `classifier_guidance` is the classifier's cond_fn with
the run's scaling, interval and schedule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from guided_diffusion.config import ClassifierConfig, ModelConfig
from guided_diffusion.diffusion.denoiser import CondFn
from guided_diffusion.editing.job import EditJob
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.networks import load_network, mismatches

__all__ = ["EditNetworks", "check_networks", "classifier_guidance", "load_networks", "networks_from_modules"]


@dataclass
class EditNetworks:
    """The job's networks as the edits call them: the diffusion model (classifier-free guidance and
    bfloat16 applied), the trained process it was trained with, and the guiding classifier (or None)."""

    model: GuidedModel
    diffusion: Any
    classifier: torch.nn.Module | None
    device: torch.device


def check_networks(job: EditJob) -> None:
    """Raise SettingError (model_path or classifier_path) unless each checkpoint's tensors fit the config it
    came with, naming the settings that differ; on the "meta" device: nothing is loaded or allocated."""
    checks: list[tuple[str, str, ModelConfig | ClassifierConfig | None, str]] = [
        ("model_path", job.model_path, job.model, "diffusion"),
        ("classifier_path", job.classifier_path, job.classifier if job.guided else None, "classifier")]
    for setting, path, config, kind in checks:
        if config is None or not path:
            continue
        problems = mismatches(config, path, kind)
        if problems:
            # The settings came from the config saved with the weights, not from flags: say so.
            text = "; ".join(problems).replace("the flags give", "the config gives").replace(
                "the flags build", "the config builds").replace("--", "")
            raise SettingError(setting, f"{setting} {path} does not fit the config saved with it: {text}; fix its "
                                        "config.json, or use the checkpoint that config describes")


def load_networks(job: EditJob, device: torch.device) -> EditNetworks:
    """Build and load the job's networks on `device` (the classifier only when it guides)."""
    network = load_network(job.model, job.model_path, device, bf16=job.bf16)
    classifier = None
    if job.guided:
        classifier = load_network(job.classifier, job.classifier_path, device, bf16=job.bf16)
    return networks_from_modules(job, network, classifier, device)


def networks_from_modules(job: EditJob, model: torch.nn.Module, classifier: torch.nn.Module | None = None,
                          device: torch.device | None = None) -> EditNetworks:
    """EditNetworks from networks already in memory (a Python caller's, or `load_networks`'): the model
    wrapped for classifier-free guidance and autocast, the classifier kept when the job guides."""
    device = device if device is not None else next(model.parameters()).device
    guided = GuidedModel(model, class_cond=job.model.class_cond, cfg_scale=job.cfg_scale, null_label=job.null_label,
                         autocast_dtype=job.autocast_dtype, cfg_interval=job.settings.cfg_interval)
    return EditNetworks(model=guided, diffusion=job.trained_diffusion(),
                        classifier=classifier if job.guided else None, device=device)


def classifier_guidance(job: EditJob, networks: EditNetworks) -> CondFn | None:
    """The classifier's guidance with the run's scaling, interval and schedule (None without guidance)."""
    if networks.classifier is None or not job.guided:
        return None
    cond_fn = classifier_cond_fn(networks.classifier, job.classifier_scale, scaling=job.settings.guidance_scaling,
                                 autocast_dtype=job.autocast_dtype)
    return job.settings.steered(cond_fn, networks.diffusion)
