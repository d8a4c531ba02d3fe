"""Samplers on a real (tiny, random-weight) ADM model: the same arithmetic as the original loops,
per-sample seeds, guidance composition, and thresholding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_ADM, CountingModel, load_fixture, randomise_zero_layers, rel_err, tiny_adm

from guided_diffusion.diffusion.denoiser import DiffusionDenoiser
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import SampleNoise, random_labels, sample_seed
from guided_diffusion.sampling.draw import class_labels_for, draw
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn, dynamic_threshold
from guided_diffusion.sampling.samplers import ddim, ddpm, dpmpp_2m
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.script_util import create_classifier, create_model_and_diffusion, model_and_diffusion_defaults


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


class OriginalSampling:
    """The original's (guided-diffusion, July 2021) `p_sample`, `ddim_sample` and their loops, written out here
    from its equations so the package's samplers are checked against something they do not share code with.

    As there: float64 numpy arrays over the (respaced) process, indexed and cast to float32 at each step
    (`_extract_into_tensor`); the model and cond_fn called at the original timesteps, rescaled to 0..1000 with
    rescale_timesteps (`_WrappedModel`); predictions clipped to [-1, 1]; one `randn_like` per step."""

    def __init__(self, betas, timestep_map, original_steps: int, *, learn_sigma=False, sigma_small=False,
                 predict_xstart=False, rescale_timesteps=False):
        betas = np.asarray(betas, dtype=np.float64)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        fixed_large = np.append(posterior_variance[1], betas[1:])
        self.arrays = dict(
            abar=abar, abar_prev=abar_prev, sqrt_recip_abar=np.sqrt(1.0 / abar), sqrt_recipm1_abar=np.sqrt(1.0 / abar - 1),
            mean_coef_x0=betas * np.sqrt(abar_prev) / (1.0 - abar),
            mean_coef_xt=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            min_log=posterior_log_variance_clipped, max_log=np.log(betas),
            fixed_variance=posterior_variance if sigma_small else fixed_large,
            fixed_log_variance=posterior_log_variance_clipped if sigma_small else np.log(fixed_large),
        )
        self.timestep_map = [int(t) for t in timestep_map]
        self.original_steps, self.rescale_timesteps = original_steps, rescale_timesteps
        self.learn_sigma, self.predict_xstart = learn_sigma, predict_xstart

    def at(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.arrays[name])[t].float().view(-1, 1, 1, 1)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        mapped = torch.tensor(self.timestep_map)[t]
        return mapped.float() * (1000.0 / self.original_steps) if self.rescale_timesteps else mapped

    def mean_variance(self, model, x, t, model_kwargs):
        """(mean, variance, log_variance, pred_xstart) of p(x_{t-1} | x_t), clip_denoised=True."""
        output = model(x, self.model_time(t), **model_kwargs)
        if self.learn_sigma:  # learned range: interpolate between the posterior and beta log-variances
            output, var_values = torch.split(output, x.shape[1], dim=1)
            frac = (var_values + 1) / 2
            log_variance = frac * self.at("max_log", t) + (1 - frac) * self.at("min_log", t)
            variance = torch.exp(log_variance)
        else:
            variance, log_variance = self.at("fixed_variance", t), self.at("fixed_log_variance", t)
        if self.predict_xstart:
            x0 = output
        else:
            x0 = self.at("sqrt_recip_abar", t) * x - self.at("sqrt_recipm1_abar", t) * output
        x0 = x0.clamp(-1, 1)
        mean = self.at("mean_coef_x0", t) * x0 + self.at("mean_coef_xt", t) * x
        return mean, variance, log_variance, x0

    def p_sample(self, model, x, t, cond_fn=None, model_kwargs=None, noise=None):
        """(sample, pred_xstart); guidance shifts the mean by variance * gradient."""
        model_kwargs = model_kwargs or {}
        mean, variance, log_variance, x0 = self.mean_variance(model, x, t, model_kwargs)
        noise = torch.randn_like(x) if noise is None else noise
        if cond_fn is not None:
            mean = mean.float() + variance * cond_fn(x, self.model_time(t), **model_kwargs).float()
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        return mean + nonzero * torch.exp(0.5 * log_variance) * noise, x0

    def ddim_sample(self, model, x, t, eta, cond_fn=None, model_kwargs=None, noise=None):
        """(sample, pred_xstart); guidance shifts eps by -sqrt(1 - abar) * gradient (score conditioning)."""
        model_kwargs = model_kwargs or {}
        _, _, _, x0 = self.mean_variance(model, x, t, model_kwargs)
        recip, recipm1, abar, abar_prev = (self.at(name, t) for name in ("sqrt_recip_abar", "sqrt_recipm1_abar", "abar", "abar_prev"))
        if cond_fn is not None:
            eps = (recip * x - x0) / recipm1
            eps = eps - (1 - abar).sqrt() * cond_fn(x, self.model_time(t), **model_kwargs)
            x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        noise = torch.randn_like(x) if noise is None else noise
        mean = x0 * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        return mean + nonzero * sigma * noise, x0

    def loop(self, step, model, x, **kwargs):
        """Run `step` (p_sample or ddim_sample) from the last timestep to 0 starting at x."""
        with torch.no_grad():
            for i in reversed(range(len(self.timestep_map))):
                x, _ = step(model, x, torch.full((x.shape[0],), i, dtype=torch.long), **kwargs)
        return x


def original_sampling_for(diffusion, case) -> OriginalSampling:
    """The written-out original over the same process (its betas and timestep map are pinned against the
    original's by test_parity_diffusion.py)."""
    return OriginalSampling(diffusion.betas, diffusion.timestep_map, TINY_ADM["diffusion_steps"],
                            learn_sigma=case.get("learn_sigma", False), predict_xstart=case.get("predict_xstart", False),
                            rescale_timesteps=case.get("rescale_timesteps", False))


@pytest.mark.parametrize("name", ["diffusion_adm_ddim25", "diffusion_fixed_small_xstart", "diffusion_rescale_timesteps"])
def test_written_out_original_steps_reproduce_the_golden_fixtures(name):
    """The reference below is the original: its single steps equal the original code's outputs stored in
    tests/fixtures (learned range / fixed small / fixed large variances, eps / x0 prediction, respacing,
    rescaled timesteps, guided and not, eta 0 and 0.7)."""
    fx = load_fixture(name)
    kw = fx["diffusion_kwargs"]
    reference = OriginalSampling(fx["betas"].numpy(), fx["timestep_map"].tolist(), kw["steps"],
                                 learn_sigma=kw.get("learn_sigma", False), sigma_small=kw.get("sigma_small", False),
                                 predict_xstart=kw.get("predict_xstart", False),
                                 rescale_timesteps=kw.get("rescale_timesteps", False))
    model_fx = load_fixture(fx["model"])
    model, _ = create_model_and_diffusion(**{k: model_fx["create_model_kwargs"].get(k, v)
                                             for k, v in model_and_diffusion_defaults().items()})
    model.load_state_dict(model_fx["state_dict"])
    model.eval()
    target = fx["cond_target"]

    def cond_fn(x, t, y=None):
        return 3.0 * (target - x)

    xt, noise, kwargs = fx["x_t"], fx["noise"], fx["model_kwargs"]
    checked = 0
    with torch.no_grad():
        for tname in ("t", "t_mid"):
            t = fx[tname]
            for guided in (False, True):
                cond = cond_fn if guided else None
                outputs = {f"p_sample[{tname},guided={guided}]": reference.p_sample(model, xt, t, cond, kwargs, noise)}
                for eta in (0.0, 0.7):
                    key = f"ddim_sample[{tname},guided={guided},eta={eta}]"
                    outputs[key] = reference.ddim_sample(model, xt, t, eta, cond, kwargs, noise)
                for key, (sample, x0) in outputs.items():  # the parity tests' tolerance
                    assert rel_err(sample, fx[key]["sample"]) < 1e-4, key
                    assert rel_err(x0, fx[key]["pred_xstart"]) < 1e-4, key
                    checked += 1
    assert checked == 12


@pytest.mark.parametrize("case,guided", [(CASES[0], True), (CASES[1], False), (CASES[2], True)])
def test_ddpm_matches_the_written_out_original_p_sample_loop(case, guided):
    """`ddpm` and the compatibility `p_sample_loop` against the original's loop written out above, with the
    same global-generator noise."""
    model, diffusion = tiny_adm(**case)
    x, kw = start(), kwargs_for(case, 3)
    cond = target_cond_fn if guided else None
    reference = original_sampling_for(diffusion, case)
    torch.manual_seed(5)
    expected = reference.loop(reference.p_sample, model, x, cond_fn=cond, model_kwargs=kw)
    torch.manual_seed(5)
    got = ddpm(DiffusionDenoiser(model, diffusion), x, noise=GlobalNoise(), cond_fn=cond, model_kwargs=kw)
    torch.manual_seed(5)
    compat = diffusion.p_sample_loop(model, x.shape, noise=x, cond_fn=cond, model_kwargs=kw)
    # Same formulas in the same float32 order (bit-equal today); the margin allows a reordering of operations.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compat, expected, rtol=1e-5, atol=1e-5)
    assert (got - x).abs().mean() > 0.1


@pytest.mark.parametrize("case,guided,eta", [(CASES[0], False, 0.7), (CASES[1], True, 0.0), (CASES[2], True, 0.7)])
def test_ddim_matches_the_written_out_original_ddim_loop(case, guided, eta):
    """`ddim` and the compatibility `ddim_sample_loop` against the original's loop written out above."""
    model, diffusion = tiny_adm(**case)
    x, kw = start(), kwargs_for(case, 3)
    cond = target_cond_fn if guided else None
    reference = original_sampling_for(diffusion, case)
    torch.manual_seed(6)
    expected = reference.loop(reference.ddim_sample, model, x, eta=eta, cond_fn=cond, model_kwargs=kw)
    torch.manual_seed(6)
    got = ddim(DiffusionDenoiser(model, diffusion), x, noise=GlobalNoise(), cond_fn=cond, model_kwargs=kw, eta=eta)
    torch.manual_seed(6)
    compat = diffusion.ddim_sample_loop(model, x.shape, noise=x, cond_fn=cond, model_kwargs=kw, eta=eta)
    # Same formulas; the package takes its coefficients in float64 rather than float32.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compat, expected, rtol=1e-4, atol=1e-4)
    assert (got - x).abs().mean() > 0.1


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

    denoiser = DiffusionDenoiser(spy, diffusion)
    denoiser.predict(start(), denoiser.level(4), {})
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


@pytest.mark.filterwarnings("ignore:the first guided step starts at")  # a 4-step respacing of 40: saturated on purpose
@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0), ("dpm++2m", 0.0)])
def test_samples_do_not_depend_on_the_batch(sampler, eta):
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=True, num_classes=5, timestep_respacing="4")
    fn = GuidedModel(model, class_cond=True)
    settings = SamplerSettings(sampler=sampler, eta=eta if sampler == "ddim" else None)
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
    with pytest.raises(SettingError, match=r"dynamic_threshold must be a percentile in \(0, 1\], got 1.5") as info:
        dynamic_threshold(1.5)
    assert info.value.setting == "dynamic_threshold"


@pytest.mark.parametrize("sampler", [ddpm, ddim, dpmpp_2m])
def test_thresholding_keeps_predictions_in_range(sampler):
    model, diffusion = tiny_adm(learn_sigma=True, timestep_respacing="4")
    predictions = []
    sampler(DiffusionDenoiser(model, diffusion), start() * 3, cond_fn=lambda x, t, **k: 50 * torch.ones_like(x),
            clip_denoised=False, threshold=dynamic_threshold(0.99), callback=lambda info: predictions.append(info["x0"]))
    # ddim/dpm++ threshold the guided prediction; ddpm thresholds where the original applies denoised_fn
    assert len(predictions) == 4
    assert all(p.abs().max() <= 1 + 1e-6 for p in predictions)
