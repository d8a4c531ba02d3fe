"""Timestep samplers (`guided_diffusion.resample`)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from guided_diffusion.resample import (
    LossAwareSampler,
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from guided_diffusion.runtime.errors import UserError

DIFFUSION = SimpleNamespace(num_timesteps=8)


def test_named_samplers():
    assert isinstance(create_named_schedule_sampler("uniform", DIFFUSION), UniformSampler)
    sampler = create_named_schedule_sampler("loss-second-moment", DIFFUSION)
    assert isinstance(sampler, LossSecondMomentResampler) and isinstance(sampler, LossAwareSampler)
    assert sampler.history_per_term == 10 and sampler.uniform_prob == 0.001
    with pytest.raises(UserError, match="unknown schedule sampler 'bogus'"):
        create_named_schedule_sampler("bogus", DIFFUSION)


def test_uniform_sample_uses_numpy_global_rng_and_unit_weights():
    sampler = UniformSampler(DIFFUSION)
    np.random.seed(3)
    t, w = sampler.sample(1000, "cpu")
    np.random.seed(3)
    t2, _ = sampler.sample(1000, "cpu")
    assert torch.equal(t, t2) and t.dtype == torch.int64
    assert torch.all(w == 1.0) and set(t.tolist()) == set(range(8))


def test_second_moment_warm_up_weights_and_state():
    sampler = LossSecondMomentResampler(DIFFUSION, history_per_term=2, uniform_prob=0.1)
    assert np.all(sampler.weights() == 1.0)
    # Losses grow with t; t = 7 gets 12 updates, only its last 2 are kept.
    for t in range(8):
        for value in range(12 if t == 7 else 2):
            sampler.update_with_all_losses([t], [float(t + 1 if t < 7 else value)])
    weights = sampler.weights()
    rms = np.array([1, 2, 3, 4, 5, 6, 7, np.sqrt((10**2 + 11**2) / 2)])
    expected = rms / rms.sum() * 0.9 + 0.1 / 8
    np.testing.assert_allclose(weights, expected)
    # Importance weights keep the expected loss unbiased: 1 / (T p_t).
    t, w = sampler.sample_from_uniform(torch.tensor([0.0, 0.999999]))
    assert t.tolist() == [0, 7]
    p = expected / expected.sum()
    np.testing.assert_allclose(w.numpy(), [1 / (8 * p[0]), 1 / (8 * p[7])], rtol=1e-6)
    restored = LossSecondMomentResampler(DIFFUSION, history_per_term=2, uniform_prob=0.1)
    restored.load_state_dict(sampler.state_dict())
    np.testing.assert_allclose(restored.weights(), weights)


def test_single_process_local_update_matches_all_update():
    a = LossSecondMomentResampler(DIFFUSION)
    b = LossSecondMomentResampler(DIFFUSION)
    ts, losses = torch.tensor([1, 2, 2]), torch.tensor([0.5, 1.5, 2.5])
    a.update_with_local_losses(ts, losses)
    b.update_with_all_losses([1, 2, 2], [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(a._loss_history, b._loss_history)


def test_sample_from_uniform_follows_the_distribution():
    sampler = UniformSampler(SimpleNamespace(num_timesteps=4))
    u = (torch.arange(4000) + 0.5) / 4000
    t, w = sampler.sample_from_uniform(u)
    assert torch.bincount(t, minlength=4).tolist() == [1000, 1000, 1000, 1000]
    assert torch.all(w == 1.0)
