"""Samplers on a real (tiny, random-weight) ADM model: the same arithmetic as the original loops,
per-sample seeds, guidance composition, and thresholding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CountingModel, randomise_zero_layers, tiny_adm

from guided_diffusion.sampling.denoiser import DiffusionDenoiser
from guided_diffusion.sampling.generate import SamplerSettings, class_labels_for, draw
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn, dynamic_threshold
from guided_diffusion.sampling.noise import SampleNoise, random_labels, sample_seed
from guided_diffusion.sampling.samplers import ddim, ddpm, dpmpp_2m
from guided_diffusion.script_util import create_classifier


def start(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def target_cond_fn(x, t, y=None):
    """The analytic guidance of the golden fixtures: pulls towards a fixed image."""
    return 3.0 * (torch.linspace(-0.5, 0.5, x[0].numel()).view(x.shape[1:]) - x)


class GlobalNoise:
    """Noise from the global generator, drawn as the original loops draw it."""

    @staticmethod
    def randn_like(x):
        return torch.randn_like(x)


CASES = [
    dict(learn_sigma=True, class_cond=True, num_classes=5, timestep_respacing="10"),
    dict(learn_sigma=False, predict_xstart=True, timestep_respacing="ddim8"),
    dict(learn_sigma=True, rescale_timesteps=True, timestep_respacing="7"),
]


def kwargs_for(case, n):
    return {"y": torch.arange(n) % 5} if case.get("class_cond") else {}


@pytest.mark.parametrize("case,guided", [(CASES[0], True), (CASES[1], False), (CASES[2], True)])
def test_ddpm_is_the_original_p_sample_loop(case, guided):
    model, diffusion = tiny_adm(**case)
    x, kw = start(), kwargs_for(case, 3)
    cond = target_cond_fn if guided else None
    torch.manual_seed(5)
    expected = diffusion.p_sample_loop(model, x.shape, noise=x, cond_fn=cond, model_kwargs=kw)
    torch.manual_seed(5)
    got = ddpm(DiffusionDenoiser(model, diffusion), x, noise=GlobalNoise(), cond_fn=cond, model_kwargs=kw)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case,guided,eta", [(CASES[0], False, 0.7), (CASES[1], True, 0.0), (CASES[2], True, 0.7)])
def test_ddim_matches_the_original_ddim_loop(case, guided, eta):
    model, diffusion = tiny_adm(**case)
    x, kw = start(), kwargs_for(case, 3)
    cond = target_cond_fn if guided else None
    torch.manual_seed(6)
    expected = diffusion.ddim_sample_loop(model, x.shape, noise=x, cond_fn=cond, model_kwargs=kw, eta=eta)
    torch.manual_seed(6)
    got = ddim(DiffusionDenoiser(model, diffusion), x, noise=GlobalNoise(), cond_fn=cond, model_kwargs=kw, eta=eta)
    # Same formulas; coefficients are taken in float64 here rather than float32.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.equal(got, x)


def test_dpmpp_2m_first_step_is_ddim_and_later_steps_are_not():
    model, diffusion = tiny_adm(learn_sigma=True, timestep_respacing="2")
    denoiser = DiffusionDenoiser(model, diffusion)
    x = start()
    torch.testing.assert_close(dpmpp_2m(denoiser, x), ddim(denoiser, x), rtol=1e-6, atol=1e-6)
    model, diffusion = tiny_adm(learn_sigma=True, timestep_respacing="6")
    denoiser = DiffusionDenoiser(model, diffusion)
    assert (dpmpp_2m(denoiser, x) - ddim(denoiser, x)).abs().max() > 1e-3


def test_denoiser_feeds_the_model_original_timesteps():
    seen = []
    model, diffusion = tiny_adm(timestep_respacing="5", rescale_timesteps=True)

    def spy(x, t, **kw):
        seen.append(t.clone())
        return model(x, t, **kw)

    DiffusionDenoiser(spy, diffusion).predict(start(), 4, {})
    # step 4 of 5 is original step 39 of 40; rescale_timesteps maps it to 39 * 1000 / 40
    assert torch.allclose(seen[0], torch.full((3,), 39 * 1000 / 40))


def test_sample_noise_rows_depend_only_on_their_sample():
    together = SampleNoise(7, [0, 1, 2, 3, 4])
    a1, a2 = together.randn((5, 2, 3)), together.randn((5, 2, 3))
    alone = SampleNoise(7, [3])
    b1, b2 = alone.randn((1, 2, 3)), alone.randn((1, 2, 3))
    assert torch.equal(a1[3], b1[0]) and torch.equal(a2[3], b2[0])
    assert not torch.equal(a1[3], a2[3])
    assert not torch.equal(SampleNoise(8, [3]).randn((1, 2, 3))[0], b1[0])
    assert len({sample_seed(0, i) for i in range(1000)}) == 1000


def test_random_labels_are_per_sample_and_cover_the_classes():
    labels = random_labels(3, range(400), 10)
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert np.array_equal(random_labels(3, [5, 6], 10), labels[5:7])
    assert np.array_equal(class_labels_for([0, 1, 2, 3], 0, 10, fixed=[4, 7]), [4, 7, 4, 7])


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpm++2m", 0.0)])
def test_samples_do_not_depend_on_the_batch(sampler, eta):
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=True, num_classes=5, timestep_respacing="4")
    fn = GuidedModel(model, class_cond=True)
    settings = SamplerSettings(sampler=sampler, eta=eta)
    labels = class_labels_for(range(8), 11, 5)

    def run(indices):
        return draw(fn, diffusion, indices=indices, seed=11, image_shape=(3, 8, 8), device=torch.device("cpu"),
                    settings=settings, labels=labels[indices], cond_fn=target_cond_fn)

    whole = run(list(range(8)))
    for batch in (1, 3):
        parts = torch.cat([run(list(range(i, min(i + batch, 8)))) for i in range(0, 8, batch)])
        # Equal up to float reassociation inside batched kernels (which depends on the batch size).
        torch.testing.assert_close(parts, whole, rtol=0, atol=2e-3)
    assert not torch.allclose(whole[0], whole[1])


def test_classifier_free_guidance_combines_cond_and_uncond_in_one_pass():
    model, _ = tiny_adm(learn_sigma=True, class_cond=True, num_classes=5, class_dropout_prob=0.1)
    counting = CountingModel(model)
    x, t, y = start(), torch.tensor([3, 10, 20]), torch.tensor([0, 2, 4])
    out = GuidedModel(counting, class_cond=True, cfg_scale=3.0, null_label=5)(x, t, y=y)
    assert counting.calls == 1
    with torch.no_grad():
        cond, uncond = model(x, t, y=y), model(x, t, y=torch.full_like(y, 5))
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    torch.testing.assert_close(GuidedModel(model, class_cond=True, cfg_scale=1.0, null_label=5)(x, t, y=y), cond)


def test_unconditional_model_ignores_labels_given_for_the_classifier():
    model, _ = tiny_adm()
    x, t = start(), torch.tensor([1, 2, 3])
    torch.testing.assert_close(GuidedModel(model, class_cond=False)(x, t, y=torch.tensor([1, 2, 3])), model(x, t))


def test_classifier_cond_fn_is_scaled_grad_of_log_softmax_in_one_pass():
    torch.manual_seed(0)
    classifier = create_classifier(8, False, 32, 1, "4", True, True, "attention", classifier_channel_mult="1,1",
                                   classifier_num_head_channels=8, num_classes=5).eval()
    randomise_zero_layers(classifier, 1)
    counting = CountingModel(classifier)
    x, t, y = start(), torch.tensor([3, 10, 20]), torch.tensor([0, 2, 4])
    grad = classifier_cond_fn(counting, 2.5)(x, t, y=y)
    assert counting.calls == 1
    expected = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        torch.log_softmax(classifier(xi, t[i : i + 1]), -1)[0, y[i]].backward()
        expected.append(2.5 * xi.grad[0])
    torch.testing.assert_close(grad, torch.stack(expected), rtol=1e-4, atol=1e-6)
    assert grad.abs().max() > 0


def test_dynamic_threshold_rescales_only_saturated_samples():
    x0 = torch.stack([torch.linspace(-0.5, 0.5, 48), torch.linspace(-4, 4, 48)]).view(2, 3, 4, 4)
    out = dynamic_threshold(0.9)(x0)
    torch.testing.assert_close(out[0], x0[0])  # quantile below 1: unchanged
    s = torch.quantile(x0[1].abs().flatten(), 0.9)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out.abs().max() <= 1.0
    with pytest.raises(ValueError):
        dynamic_threshold(1.5)


@pytest.mark.parametrize("sampler", [ddpm, ddim, dpmpp_2m])
def test_thresholding_keeps_predictions_in_range(sampler):
    model, diffusion = tiny_adm(learn_sigma=True, timestep_respacing="4")
    predictions = []
    sampler(DiffusionDenoiser(model, diffusion), start() * 3, cond_fn=lambda x, t, **k: 50 * torch.ones_like(x),
            clip_denoised=False, threshold=dynamic_threshold(0.99), callback=lambda info: predictions.append(info["x0"]))
    # ddim/dpm++ threshold the guided prediction; ddpm thresholds where the original applies denoised_fn
    assert len(predictions) == 4
    assert all(p.abs().max() <= 1 + 1e-6 for p in predictions)
