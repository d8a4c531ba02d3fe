"""Additions beyond the original: per-sample generators, DDIM inversion, progress bars, device caches."""
import numpy as np
import pytest
import torch
from helpers import randomise_zero_layers

from guided_diffusion import script_util
from guided_diffusion.config import ModelConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                      num_heads=2, learn_sigma=True)
    model = randomise_zero_layers(cfg.build(), 0, scale=0.05).eval()  # zero-initialised heads would make every output 0
    diffusion = script_util.create_gaussian_diffusion(steps=100, learn_sigma=True, noise_schedule="cosine",
                                                      timestep_respacing="10")
    return model, diffusion


def per_sample_generators(seed, indices):
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]


@pytest.mark.parametrize("loop", ["p_sample_loop", "ddim_sample_loop"])
def test_sample_depends_on_its_own_seed_not_the_batch(tiny, loop):
    model, diffusion = tiny
    kwargs = {"eta": 0.5} if loop == "ddim_sample_loop" else {}
    run = getattr(diffusion, loop)
    full = run(model, (4, 3, 8, 8), generator=per_sample_generators(7, range(4)), **kwargs)
    pieces = [run(model, (2, 3, 8, 8), generator=per_sample_generators(7, idx), **kwargs) for idx in ([0, 1], [2, 3])]
    single = run(model, (1, 3, 8, 8), generator=per_sample_generators(7, [2]), **kwargs)
    # Same noise; only float summation order differs between batch sizes.
    torch.testing.assert_close(torch.cat(pieces), full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(single[0], full[2], rtol=1e-4, atol=1e-4)
    other = run(model, (1, 3, 8, 8), generator=per_sample_generators(8, [2]), **kwargs)
    assert (other[0] - full[2]).abs().max() > 1e-2


def test_single_generator_reproducible(tiny):
    model, diffusion = tiny
    a = diffusion.p_sample_loop(model, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    b = diffusion.p_sample_loop(model, (2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="one per sample"):
        diffusion.p_sample_loop(model, (2, 3, 8, 8), generator=per_sample_generators(0, [0, 1, 2]))


class GaussianEps(torch.nn.Module):
    """The exact noise prediction for data ~ N(0, s^2 I): eps(x_t) = sqrt(1 - a) x_t / (a s^2 + 1 - a)."""

    def __init__(self, alphas_cumprod, s=0.5):
        super().__init__()
        self.register_buffer("abar", torch.tensor(alphas_cumprod, dtype=torch.float64))
        self.s = s
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        a = self.abar[t.long()].float().view(-1, 1, 1, 1)
        return x * torch.sqrt(1 - a) / (a * self.s**2 + 1 - a)


def test_ddim_inversion_round_trip():
    """Invert then sample with DDIM (eta 0) under an exact denoiser: reconstruction error shrinks with steps."""
    torch.manual_seed(1)
    x0 = torch.randn(2, 3, 8, 8) * 0.5
    errors = []
    for steps in ("10", "40", "160"):
        d = script_util.create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing=steps)
        model = GaussianEps(script_util.create_gaussian_diffusion(steps=1000, noise_schedule="cosine").alphas_cumprod)
        latent = d.ddim_reverse_sample_loop(model, x0)
        assert 0.9 < latent.std() < 1.1  # data N(0, 0.25) maps to unit-variance noise
        recon = d.ddim_sample_loop(model, x0.shape, noise=latent, clip_denoised=False)
        errors.append((recon - x0).abs().max().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[0] / errors[2] > 10  # first order: 16x the steps, about 16x less error
    assert errors[2] < 0.03


def test_progress_bar_shows(tiny, capsys):
    model, diffusion = tiny
    diffusion.ddim_sample_loop(model, (1, 3, 8, 8), progress=True)
    err = capsys.readouterr().err
    assert "DDIM" in err and "/10 [" in err


def test_schedule_uploaded_once_per_device(tiny, monkeypatch):
    model, diffusion = tiny
    diffusion.ddim_sample_loop(model, (1, 3, 8, 8))
    calls = []
    original = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: calls.append(1) or original(a))
    diffusion.ddim_sample_loop(model, (1, 3, 8, 8))
    assert calls == []


def test_cond_fn_sees_original_timesteps(tiny):
    model, diffusion = tiny
    seen = []

    def cond_fn(x, t, **kw):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    diffusion.ddim_sample_loop(model, (2, 3, 8, 8), cond_fn=cond_fn)
    diffusion.p_sample_loop(model, (2, 3, 8, 8), cond_fn=cond_fn)
    kept = sorted(diffusion.timestep_map)
    assert [s[0] for s in seen] == kept[::-1] * 2
    assert kept[-1] == 99 and kept[0] == 0


def test_calc_bpd_loop_shapes(tiny):
    model, diffusion = tiny
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    out = diffusion.calc_bpd_loop(model, x0)
    assert out["vb"].shape == (2, 10) and out["mse"].shape == (2, 10)
    torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert np.isfinite(out["total_bpd"].numpy()).all()
