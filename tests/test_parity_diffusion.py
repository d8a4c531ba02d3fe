"""Diffusion processes against the golden outputs of the original code, every method and case.

Each fixture pairs a diffusion built by the original `create_gaussian_diffusion` with a model fixture;
steps that draw noise are given the fixture's `noise`; guided cases use cond_fn = 3 (target - x).
"""
import re

import numpy as np
import pytest
import torch
from helpers import FIXTURES, load_fixture, rel_err

from guided_diffusion import gaussian_diffusion, respace, script_util

TOL = 1e-4
CASES = sorted(p.stem for p in FIXTURES.glob("diffusion_*.pt"))


def build(fx):
    kw = fx["diffusion_kwargs"]
    diffusion = script_util.create_gaussian_diffusion(
        steps=kw["steps"], learn_sigma=kw.get("learn_sigma", False), sigma_small=kw.get("sigma_small", False),
        noise_schedule=kw["schedule"], use_kl=kw.get("use_kl", False), predict_xstart=kw.get("predict_xstart", False),
        rescale_timesteps=kw.get("rescale_timesteps", False),
        rescale_learned_sigmas=kw.get("rescale_learned_sigmas", False), timestep_respacing=kw.get("respacing", ""),
    )
    mfx = load_fixture(fx["model"])
    defaults = script_util.model_and_diffusion_defaults()
    model, _ = script_util.create_model_and_diffusion(
        **{k: mfx["create_model_kwargs"].get(k, v) for k, v in defaults.items()}
    )
    model.load_state_dict(mfx["state_dict"])
    model.eval()
    target = fx["cond_target"]

    def cond_fn(x, t, y=None):
        return 3.0 * (target - x)

    return diffusion, model, cond_fn


def assert_close(actual, expected, what):
    if isinstance(expected, dict):
        assert set(actual) >= set(expected), what
        for key in expected:
            assert_close(actual[key], expected[key], f"{what}[{key}]")
    elif isinstance(expected, (tuple, list)):
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, f"{what}[{i}]")
    else:
        assert tuple(actual.shape) == tuple(expected.shape), what
        err = rel_err(actual, expected)
        assert err < TOL, f"{what}: relative error {err:.3g}"


@pytest.fixture(scope="module", params=CASES)
def case(request):
    fx = load_fixture(request.param)
    diffusion, model, cond_fn = build(fx)
    return request.param, fx, diffusion, model, cond_fn


def test_process_arrays(case):
    name, fx, diffusion, _, _ = case
    assert diffusion.num_timesteps == fx["num_timesteps"]
    assert list(diffusion.timestep_map) == fx["timestep_map"].tolist()
    np.testing.assert_allclose(diffusion.betas, fx["betas"].numpy(), rtol=1e-12)


def test_every_method(case):
    name, fx, diffusion, model, cond_fn = case
    x0, xt, noise, mk = fx["x_start"], fx["x_t"], fx["noise"], fx["model_kwargs"]
    times = {"t": fx["t"], "t_mid": fx["t_mid"]}
    checked = 0
    with torch.no_grad():
        assert_close(diffusion.q_sample(x0, fx["t_mid"], noise=noise), fx["q_sample"], "q_sample")
        assert_close(diffusion.q_posterior_mean_variance(x0, xt, fx["t_mid"]), fx["q_posterior_mean_variance"], "posterior")
        assert_close(diffusion._prior_bpd(x0), fx["prior_bpd"], "prior_bpd")
        checked += 3
        for key, expected in fx.items():
            m = re.fullmatch(r"(\w+)\[(t|t_mid)(?:,(.*))?\]", key)
            if not m:
                continue
            method, tname, rest = m.group(1), m.group(2), m.group(3) or ""
            t = times[tname]
            opts = dict(kv.split("=") for kv in rest.split(",") if kv)
            guided = opts.get("guided") == "True"
            if method == "p_mean_variance":
                out = diffusion.p_mean_variance(model, xt, t, clip_denoised=opts["clip"] == "True", model_kwargs=mk)
            elif method == "training_losses":
                out = diffusion.training_losses(model, x0, t, model_kwargs=mk, noise=noise)
            elif method == "condition_mean":
                pmv = diffusion.p_mean_variance(model, xt, t, model_kwargs=mk)
                out = diffusion.condition_mean(cond_fn, pmv, xt, t, model_kwargs=mk)
            elif method == "condition_score":
                pmv = diffusion.p_mean_variance(model, xt, t, model_kwargs=mk)
                out = diffusion.condition_score(cond_fn, pmv, xt, t, model_kwargs=mk)
            elif method == "p_sample":
                out = diffusion.p_sample(model, xt, t, cond_fn=cond_fn if guided else None, model_kwargs=mk, noise=noise)
            elif method == "ddim_sample":
                out = diffusion.ddim_sample(model, xt, t, cond_fn=cond_fn if guided else None, model_kwargs=mk,
                                            eta=float(opts["eta"]), noise=noise)
            elif method == "ddim_reverse_sample":
                out = diffusion.ddim_reverse_sample(model, xt, t, clip_denoised=False, model_kwargs=mk)
            elif method == "vb_terms_bpd":
                out = diffusion._vb_terms_bpd(model, x0, xt, t, clip_denoised=True, model_kwargs=mk)
            else:
                raise AssertionError(f"fixture key {key} not covered by this test")
            assert_close(out, expected, f"{name}:{key}")
            checked += 1
    assert checked >= 20


def test_schedules():
    fx = load_fixture("schedules")
    for name, T in (("linear", 1000), ("cosine", 1000), ("linear_4000", 4000)):
        betas = gaussian_diffusion.get_named_beta_schedule(name.split("_")[0], T)
        np.testing.assert_allclose(betas, fx["betas"][name].numpy(), rtol=1e-12, atol=0)
    assert gaussian_diffusion.get_named_beta_schedule("cosine", 1000)[-1] == 0.999


def test_space_timesteps():
    fx = load_fixture("schedules")
    for key, expected in fx["space_timesteps"].items():
        T, spec = key.split("|")
        if isinstance(expected, str):
            message = expected.split(": ", 2)[-1]
            with pytest.raises(ValueError, match=re.escape(message)):
                respace.space_timesteps(int(T), spec)
        else:
            assert sorted(respace.space_timesteps(int(T), spec)) == expected, key


def test_ddim_error_names_requested_count():
    with pytest.raises(ValueError, match="exactly 300 steps"):
        respace.space_timesteps(1000, "ddim300")


def test_linear_schedule_too_few_steps_is_user_error():
    from guided_diffusion.runtime.errors import UserError

    with pytest.raises(UserError, match="diffusion_steps"):
        gaussian_diffusion.get_named_beta_schedule("linear", 10)


def test_single_step_respacing_is_user_error():
    from guided_diffusion.runtime.errors import UserError

    with pytest.raises(UserError, match="at least 2 steps"):
        script_util.create_gaussian_diffusion(steps=1000, timestep_respacing="1")
