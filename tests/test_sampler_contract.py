"""The sampler contract, checked for every registered sampler alike (`SAMPLERS`): no autograd graph is
kept, a sample depends on its seed and not on its batch, the output is finite, classifier guidance
changes it, and the evaluations a sampler reports are the evaluations it makes. A new sampler is covered
here by being registered."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from helpers import randomise_zero_layers, tiny_adm

from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.registry import GUIDANCE_FORMS
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.script_util import create_classifier

CLASSES = 3
LEVELS = 5


class Counted(torch.nn.Module):
    """The model, counting its forward passes (the model evaluations a sampler makes)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x, t, **kwargs):
        self.calls += 1
        return self.model(x, t, **kwargs)


@pytest.fixture(scope="module")
def networks():
    # Weights that require grad, as a user's freshly built network does: the contract must hold anyway.
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=True, num_classes=CLASSES, diffusion_steps=40)
    torch.manual_seed(7)
    classifier = create_classifier(8, False, 32, 1, "4", True, True, "attention", classifier_channel_mult="1,1",
                                   classifier_num_head_channels=8, num_classes=CLASSES).eval()
    randomise_zero_layers(classifier, 4)
    assert any(p.requires_grad for p in model.parameters())
    return Counted(model), diffusion, classifier


def sample(networks, name, indices, *, guided=True, levels=LEVELS, callback=None):
    model, diffusion, classifier = networks
    settings = SamplerSettings(sampler=name, steps=levels, step_grid="karras")
    denoiser = settings.denoiser(GuidedModel(model, class_cond=True), diffusion)
    noise = SampleNoise(3, indices)
    x = noise.randn((len(indices), 3, 8, 8), device=torch.device("cpu"))
    labels = torch.tensor([i % CLASSES for i in indices])
    cond_fn = classifier_cond_fn(classifier, 3.0) if guided else None
    return SAMPLERS[name](denoiser, x, noise=noise, cond_fn=cond_fn, model_kwargs={"y": labels}, callback=callback)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_autograd_graph_is_kept(networks, name):
    saved: list[weakref.ref] = []

    def pack(tensor):
        saved.append(weakref.ref(tensor))
        return tensor

    states = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = sample(networks, name, [0, 1], callback=lambda info: states.append((info["x"], info["x0"])))
    gc.collect()
    assert out.grad_fn is None and not out.requires_grad
    assert all(x.grad_fn is None and x0.grad_fn is None for x, x0 in states)
    # The classifier's backward pass saves activations while it runs; none may outlive it (a kept graph
    # would hold them, and grow with every step). The weights it saves live on as the network's own.
    assert saved, "the classifier gradient should have been taken with autograd"
    alive = [ref for ref in saved if ref() is not None and not isinstance(ref(), torch.nn.Parameter)]
    assert not alive, f"{len(alive)} tensors saved for backward are still alive"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_sample_depends_on_its_seed_not_its_batch(networks, name):
    whole = sample(networks, name, [0, 1, 2, 3])
    alone = torch.cat([sample(networks, name, [i]) for i in range(4)])
    # Equal up to float reassociation inside batched kernels (which depends on the batch size).
    torch.testing.assert_close(alone, whole, rtol=0, atol=2e-3)
    assert not torch.allclose(whole[0], whole[1])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_output_is_finite_and_guidance_changes_it(networks, name):
    guided = sample(networks, name, [0, 1, 2])
    plain = sample(networks, name, [0, 1, 2], guided=False)
    assert torch.isfinite(guided).all() and torch.isfinite(plain).all()
    assert (guided - plain).abs().max() > 1e-3


@pytest.mark.parametrize("levels", [3, 6])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_reported_evaluations_are_the_evaluations_made(networks, name, levels):
    model = networks[0]
    reported = []
    model.calls = 0
    sample(networks, name, [0], levels=levels, callback=lambda info: reported.append(info["evaluations"]))
    assert model.calls == SAMPLERS[name].evaluations(levels) == reported[-1]
    assert SamplerSettings(sampler=name).evaluations(levels) == model.calls


def test_every_registered_sampler_declares_what_differs():
    for name, sampler in SAMPLERS.items():
        spec = sampler.spec
        assert spec.name == name and spec.summary and spec.reference
        assert spec.guidance in GUIDANCE_FORMS
        assert len(set(spec.option_names)) == len(spec.option_names)
        for option in spec.options:
            assert option.check(option.default) == option.default  # defaults pass their own checks
    assert {name for name, s in SAMPLERS.items() if s.spec.stochastic} == {"ddpm", "dpm++2m_sde", "dpm++3m_sde"}


def test_loaded_networks_do_not_require_grad_and_bf16_casts_them_once(tmp_path):
    from guided_diffusion.config import ModelConfig
    from guided_diffusion.sampling.networks import load_network
    from guided_diffusion.weights.checkpoints import save_checkpoint

    config = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="4",
                         num_head_channels=8, channel_mult="1,1")
    path = tmp_path / "model.pt"
    save_checkpoint(path, config.build().state_dict(), config=config)
    network = load_network(config, path, torch.device("cpu"))
    assert not any(p.requires_grad for p in network.parameters())
    assert np.isfinite(sum(float(p.sum()) for p in network.parameters()))
    # --bf16: the torso's weights are cast once when loaded (the fast path), not per call by autocast.
    prepared = load_network(config, path, torch.device("cpu"), bf16=True)
    assert prepared.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in prepared.parameters())
