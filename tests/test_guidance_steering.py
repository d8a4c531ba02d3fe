"""Guidance that suits few steps: entropy-driven scaling of the classifier gradient (EDS, Zheng et al.
2022), and the shared guided step everywhere it is used (RePaint keeps the guidance interval)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_adm

from guided_diffusion.editing.measurement import sum_cond_fns
from guided_diffusion.editing.repaint import repaint
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.guidance import GuidedModel, SteeredGuidance, classifier_cond_fn, entropy_scale
from guided_diffusion.sampling.settings import SamplerSettings


class LinearClassifier(torch.nn.Module):
    """logits = W x (flattened), ignoring t: its log-softmax gradient is known in closed form."""

    def __init__(self, classes: int, features: int, seed: int = 0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, features, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x, t):
        return x.flatten(1) @ self.weight.T


def test_entropy_scale_is_log_classes_over_the_predictions_entropy():
    uniform = F.log_softmax(torch.zeros(2, 10), dim=-1)
    assert torch.allclose(entropy_scale(uniform), torch.ones(2))  # an undecided classifier: no change
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.2, 0.1]])
    probs = logits.softmax(-1)
    entropy = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(entropy_scale(F.log_softmax(logits, -1)), math.log(3) / entropy)
    assert entropy_scale(F.log_softmax(logits, -1))[0] > entropy_scale(F.log_softmax(logits, -1))[1] > 1


def test_entropy_scaling_multiplies_each_samples_gradient_by_its_own_factor():
    classifier = LinearClassifier(4, 12)
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    t, y = torch.zeros(3), torch.tensor([0, 2, 3])
    plain = classifier_cond_fn(classifier, 2.0)(x, t, y=y)
    scaled = classifier_cond_fn(classifier, 2.0, scaling="entropy")(x, t, y=y)
    log_probs = F.log_softmax(classifier(x, t), dim=-1)
    # grad_x log p(y|x) of a linear classifier: W_y - sum_c p_c W_c
    expected = 2.0 * (classifier.weight[y] - log_probs.exp() @ classifier.weight).view_as(x)
    torch.testing.assert_close(plain, expected.detach(), rtol=1e-5, atol=1e-6)
    factor = entropy_scale(log_probs.detach()).view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled, plain * factor, rtol=1e-5, atol=1e-6)
    with pytest.raises(SettingError) as info:
        classifier_cond_fn(classifier, 2.0, scaling="softmax")
    assert info.value.setting == "guidance_scaling"


def test_repaint_takes_the_guidance_interval_like_every_sampler():
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=False, diffusion_steps=40)
    denoiser = SamplerSettings(steps=10).denoiser(GuidedModel(model, class_cond=False), diffusion)
    times = []

    def cond_fn(x, t, **kwargs):
        times.append(float(t[0]))
        return torch.ones_like(x) * 0.1

    steered = SteeredGuidance(cond_fn, num_timesteps=40, interval=(0, 15))
    known = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = repaint(denoiser, x, known=known, mask=mask, cond_fn=steered, noise=None)
    grid_times = [denoiser.timestep(denoiser.level(k)) for k in range(10)]
    assert times and all(t <= 15 for t in times)
    assert len(times) == sum(1 for t in grid_times if t <= 15)
    assert torch.isfinite(out).all()


def test_a_steered_part_keeps_its_interval_inside_a_sum():
    calls = []

    def part(x, t, **kwargs):
        calls.append(float(t[0]))
        return torch.ones_like(x)

    steered = SteeredGuidance(part, num_timesteps=100, interval=(10, 20))
    total = sum_cond_fns(steered, lambda x, t, **kwargs: 2 * torch.ones_like(x))
    x = torch.zeros(1, 3, 2, 2)
    assert float(total(x, torch.tensor([50.0])).mean()) == 2.0 and not calls
    assert float(total(x, torch.tensor([15.0])).mean()) == 3.0 and calls == [15.0]
    rescaled = SteeredGuidance(part, num_timesteps=100, interval=(10, 20), model_time_scale=10.0)
    assert rescaled.weight_at_model_time(torch.tensor([150.0])) == 1.0
    assert rescaled.weight_at_model_time(torch.tensor([500.0])) == 0.0
    assert np.isclose(SteeredGuidance(part, num_timesteps=100, schedule="linear").weight_at_model_time(
        torch.tensor([0.0])), 2.0)
