"""The continuous-noise engine on a tiny random-weight ADM model: integer grids reproduce the respaced
processes, fractional timesteps reach the model and the classifier, every solver on every grid through
`draw` with per-sample seeds, guidance steering and its savings, and settings validation."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import CountingModel, randomise_zero_layers, tiny_adm

from guided_diffusion.diffusion.denoiser import DiffusionDenoiser
from guided_diffusion.diffusion.grids import GRIDS
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling.draw import draw
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn
from guided_diffusion.sampling.samplers import SAMPLERS, ddim
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.script_util import create_classifier

CPU = torch.device("cpu")
CLASSES = 5


@pytest.fixture(scope="module")
def networks():
    model, diffusion = tiny_adm(learn_sigma=True, class_cond=True, num_classes=CLASSES, diffusion_steps=50)
    torch.manual_seed(3)
    classifier = create_classifier(8, False, 32, 1, "4", True, True, "attention", classifier_channel_mult="1,1",
                                   classifier_num_head_channels=8, num_classes=CLASSES).eval()
    return GuidedModel(model, class_cond=True), diffusion, randomise_zero_layers(classifier, 4)


def run(networks, settings, indices=(0, 1), diffusion=None, cond=True, scale=2.0):
    model_fn, base, classifier = networks
    labels = np.array([i % CLASSES for i in indices])
    return draw(model_fn, diffusion or base, indices=list(indices), seed=5, image_shape=(3, 8, 8), device=CPU,
                settings=settings, labels=labels, cond_fn=classifier_cond_fn(classifier, scale) if cond else None)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)])
def test_leading_grid_reproduces_the_ddimN_respacing(networks, sampler, eta):
    _, diffusion, _ = networks
    _, respaced = tiny_adm(learn_sigma=True, class_cond=True, num_classes=CLASSES, diffusion_steps=50,
                       timestep_respacing="ddim10")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eta_option = {"eta": eta} if sampler == "ddim" else {}
        expected = run(networks, SamplerSettings(sampler=sampler, **eta_option), diffusion=respaced)
        got = run(networks, SamplerSettings(sampler=sampler, steps=10, step_grid="leading", **eta_option))
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_fractional_timesteps_reach_model_and_classifier(networks):
    model_fn, diffusion, classifier = networks
    seen = {"model": [], "classifier": []}

    def model_spy(x, t, **kw):
        seen["model"].append(t.clone())
        return model_fn(x, t, **kw)

    def classifier_spy(x, t):
        seen["classifier"].append(t.clone())
        return classifier(x, t)

    settings = SamplerSettings(sampler="euler", steps=6, step_grid="logsnr")
    denoiser = settings.denoiser(model_spy, diffusion)
    ddim(denoiser, torch.randn(2, 3, 8, 8), cond_fn=classifier_cond_fn(classifier_spy, 1.0),
         model_kwargs={"y": torch.tensor([0, 1])})
    model_t = torch.stack([t[0] for t in seen["model"]])
    assert model_t.dtype == torch.float32 and not torch.equal(model_t, model_t.round())
    assert torch.equal(model_t, torch.stack([t[0] for t in seen["classifier"]]))
    assert 0 <= float(model_t.min()) and float(model_t.max()) <= 49
    expected = torch.tensor([denoiser.timestep(denoiser.level(k)) for k in range(5, -1, -1)], dtype=torch.float32)
    torch.testing.assert_close(model_t, expected)


# Each sampler once, the grids taken in turn (every grid meets two samplers); kept small for the suite's time.
PAIRS = [(sampler, GRIDS[i % len(GRIDS)]) for i, sampler in enumerate(sorted(SAMPLERS))] + [("dpm++2m", "logsnr")]


@pytest.mark.parametrize("sampler,grid", PAIRS)
def test_every_sampler_and_grid_is_per_sample_seeded(networks, sampler, grid):
    options = {"ddim": {"eta": 1.0}, "heun": {"s_churn": 2.0}}.get(sampler, {})
    settings = SamplerSettings(sampler=sampler, steps=3, step_grid=grid, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linspace/trailing start at T-1: saturated, warned about elsewhere
        whole = run(networks, settings, indices=(0, 1, 2))
        parts = torch.cat([run(networks, settings, indices=(0,)), run(networks, settings, indices=(1, 2))])
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(parts, whole, rtol=0, atol=2e-3)
    assert not torch.allclose(whole[0], whole[1])


def test_saturated_first_step_warns_and_the_default_grid_does_not(networks):
    with pytest.warns(UserWarning, match="first guided step starts at t=49"):
        run(networks, SamplerSettings(sampler="dpm++2m", steps=5, step_grid="linspace"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(networks, SamplerSettings(sampler="dpm++2m", steps=5))
        run(networks, SamplerSettings(sampler="dpm++2m", steps=5, step_grid="linspace", guidance_interval=(0, 40)))
        run(networks, SamplerSettings(sampler="dpm++2m", steps=5, step_grid="linspace"), cond=False)
        # ddpm guides by the mean shift Sigma * gradient, bounded by the posterior variance: no warning
        run(networks, SamplerSettings(sampler="ddpm", steps=5, step_grid="linspace"))


def test_guidance_interval_skips_classifier_passes(networks):
    model_fn, diffusion, classifier = networks
    counting = CountingModel(classifier)
    calls = {}
    for interval in (None, (0, 24)):
        counting.calls = 0
        settings = SamplerSettings(sampler="ddim", steps=10, guidance_interval=interval)
        draw(model_fn, diffusion, indices=[0], seed=1, image_shape=(3, 8, 8), device=CPU, settings=settings,
             labels=np.array([0]), cond_fn=classifier_cond_fn(counting, 2.0))
        calls[interval] = counting.calls
    # leading grid of 10 on 50 steps: t = 0, 5, ..., 45; the interval keeps t <= 24 (5 of 10 levels)
    assert calls == {None: 10, (0, 24): 5}


def test_default_settings_keep_the_original_outputs(networks):
    # steps=None, constant schedule, no interval: the same as before these options existed (ddim10 path).
    _, respaced = tiny_adm(learn_sigma=True, class_cond=True, num_classes=CLASSES, diffusion_steps=50,
                       timestep_respacing="ddim10")
    a = run(networks, SamplerSettings(sampler="ddim"), diffusion=respaced)
    b = run(networks, SamplerSettings(sampler="ddim", guidance_schedule="constant", cfg_interval=None),
            diffusion=respaced)
    assert torch.equal(a, b)
    c = run(networks, SamplerSettings(sampler="ddim", guidance_schedule="linear"), diffusion=respaced)
    assert not torch.allclose(a, c)


def test_cfg_interval_runs_one_pass_outside_it():
    model, _ = tiny_adm(learn_sigma=True, class_cond=True, num_classes=CLASSES, class_dropout_prob=0.1)
    batches = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, y=None):
            batches.append(x.shape[0])
            return model(x, t, y=y)

    guided = GuidedModel(Spy(), class_cond=True, cfg_scale=3.0, null_label=CLASSES, cfg_interval=(10, 20))
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    inside = guided(x, torch.tensor([15, 15]), y=y)
    outside = guided(x, torch.tensor([30, 30]), y=y)
    assert batches == [4, 2]
    with torch.no_grad():
        torch.testing.assert_close(outside, model(x, torch.tensor([30, 30]), y=y))
        plain = GuidedModel(model, class_cond=True, cfg_scale=3.0, null_label=CLASSES)
        torch.testing.assert_close(inside, plain(x, torch.tensor([15, 15]), y=y))
    with pytest.raises(ValueError, match="cfg_interval"):
        GuidedModel(model, class_cond=True, cfg_scale=3.0, null_label=CLASSES, cfg_interval=(20, 10))


def test_truncated_grid_and_given_start_sample_from_mid_way(networks):
    model_fn, diffusion, _ = networks
    denoiser = SamplerSettings(steps=10).denoiser(model_fn, diffusion)
    half = denoiser.truncated(5)
    assert half.num_steps == 5 and half.timestep(half.level(4)) == denoiser.timestep(denoiser.level(4))
    x0 = torch.zeros(1, 3, 8, 8)
    start = diffusion.q_sample(x0, torch.tensor([int(half.timestep(half.level(4)))]), noise=torch.randn(1, 3, 8, 8))
    out = SAMPLERS["dpm++2m"](half, start, model_kwargs={"y": torch.tensor([0])})
    assert out.shape == x0.shape and torch.isfinite(out).all()
    given = torch.randn(2, 3, 8, 8)
    a = draw(model_fn, diffusion, indices=[0, 1], seed=1, image_shape=(3, 8, 8), device=CPU,
             settings=SamplerSettings(sampler="euler", steps=4), labels=np.array([0, 1]), x_init=given)
    b = ddim(SamplerSettings(steps=4).denoiser(model_fn, diffusion), given, model_kwargs={"y": torch.tensor([0, 1])})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# Every rejection SamplerSettings makes, with the field it names: the command line turns `exc.setting`
# into the flag, so a wrong or missing name here is a wrong flag there.
@pytest.mark.parametrize("kwargs,setting,message", [
    (dict(sampler="lms"), "sampler", "sampler 'lms' is unknown"),
    (dict(step_grid="karras"), "step_grid", "step_grid needs steps"),
    (dict(sigma_min=0.1), "sigma_min", "sigma_min needs steps"),
    (dict(sigma_max=10.0), "sigma_max", "sigma_max needs steps"),
    (dict(steps=1), "steps", "steps must be >= 2"),
    (dict(steps=4, step_grid="spiral"), "step_grid", "step_grid 'spiral' is unknown"),
    (dict(steps=4, sigma_min=0.0), "sigma_min", "sigma_min must be > 0"),
    (dict(steps=4, sigma_max=-1.0), "sigma_max", "sigma_max must be > 0"),
    (dict(sampler="ddim", eta=-1.0), "eta", "eta must be a finite number >= 0"),
    (dict(sampler="ddim", eta=float("nan")), "eta", "eta must be a finite number >= 0"),
    (dict(sampler="ddim", eta=float("inf")), "eta", "eta must be a finite number >= 0"),
    (dict(sampler="heun", eta=0.5), "eta", "eta applies to the ddim sampler, not heun"),
    (dict(sampler="ddpm", eta=0.0), "eta", "eta applies to the ddim sampler, not ddpm"),
    (dict(dynamic_threshold=0.0), "dynamic_threshold", "dynamic_threshold must be a percentile"),
    (dict(dynamic_threshold=1.5), "dynamic_threshold", "dynamic_threshold must be a percentile"),
    (dict(sampler="heun", s_churn=-1.0), "s_churn", "s_churn must be a finite number >= 0"),
    (dict(sampler="heun", s_tmin=-1.0), "s_tmin", "s_tmin must be a finite number >= 0"),
    (dict(sampler="heun", s_tmin=2.0, s_tmax=1.0), "s_tmax", "s_tmax must be >= s_tmin"),
    (dict(sampler="heun", s_noise=-1.0), "s_noise", "s_noise must be a finite number >= 0"),
    (dict(sampler="euler", s_churn=1.0), "s_churn", "s_churn applies to the heun sampler, not euler"),
    (dict(sampler="dpm++2m", s_noise=1.0), "s_noise", "s_noise applies to the heun, dpm++2m_sde, dpm++3m_sde samplers"),
    (dict(sampler="unipc", order=4), "order", "order must be one of 1, 2, 3"),
    (dict(sampler="unipc", order=0), "order", "order must be one of 1, 2, 3"),
    (dict(sampler="ipndm", order=5), "order", "order must be one of 1, 2, 3, 4"),
    (dict(sampler="unipc", order=2.5), "order", "order must be an integer"),
    (dict(guidance_scaling="softmax"), "guidance_scaling", "guidance_scaling 'softmax' is unknown"),
    (dict(guidance_schedule="exp"), "guidance_schedule", "guidance_schedule 'exp' is unknown"),
    (dict(guidance_interval=(500, 100)), "guidance_interval", "guidance_interval must be"),
    (dict(guidance_interval=(-1, 100)), "guidance_interval", "guidance_interval must be"),
    (dict(guidance_interval=(1, 2, 3)), "guidance_interval", "guidance_interval must be"),
    (dict(cfg_interval=(20, 10)), "cfg_interval", "cfg_interval must be"),
])
def test_settings_rejections_name_their_field(kwargs, setting, message):
    with pytest.raises(SettingError) as info:
        SamplerSettings(**kwargs)
    assert info.value.setting == setting
    assert str(info.value).startswith(message)  # library terms, opening with the field's name
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize("kwargs,setting", [
    (dict(steps=60), "steps"),  # the tiny diffusion has 40 steps
    (dict(steps=5, step_grid="leading", sigma_max=3.0), "sigma_max"),
    (dict(steps=5, step_grid="trailing", sigma_min=0.1), "sigma_min"),
    (dict(steps=5, step_grid="karras", sigma_min=1e-9), "sigma_min"),
    (dict(steps=5, step_grid="karras", sigma_max=1e9), "sigma_max"),
    (dict(steps=5, step_grid="karras", sigma_min=5.0, sigma_max=1.0), "sigma_min"),
    (dict(steps=5, step_grid="logsnr", sigma_max=1e-3), "sigma_max"),
])
def test_a_grid_the_schedule_cannot_take_names_its_field(kwargs, setting):
    diffusion = tiny_adm()[1]
    with pytest.raises(SettingError) as info:
        SamplerSettings(**kwargs).grid(diffusion)
    assert info.value.setting == setting and str(info.value).startswith(setting)
    assert SamplerSettings().grid(diffusion) is None and len(SamplerSettings(steps=5).grid(diffusion)) == 5


def test_sampler_kwargs_carry_each_solvers_options():
    assert SamplerSettings(sampler="heun", s_churn=3.0, s_noise=1.01).sampler_kwargs()["s_churn"] == 3.0
    assert SamplerSettings(sampler="unipc", order=2).sampler_kwargs()["order"] == 2
    assert SamplerSettings(sampler="dpm++3m_sde", s_noise=0.9).sampler_kwargs()["s_noise"] == 0.9
    assert "eta" not in SamplerSettings(sampler="euler").sampler_kwargs()
    assert isinstance(SamplerSettings().denoiser(lambda *a, **k: None, tiny_adm()[1]), DiffusionDenoiser)
