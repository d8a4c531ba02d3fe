"""Editing and restoring: DDIM inversion, SDEdit, RePaint, measurement guidance (DPS) and their commands.

The algorithms are checked on a Gaussian data distribution, whose denoiser is known in closed form, and
against the original's `ddim_reverse_sample_loop`; the commands run on a tiny random UNet saved with its
config. The acceptance figures on the trained digits models are in tests/test_editing_digits.py (slow)
and benchmarks/bench_editing.py.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from helpers import randomise_zero_layers, read_samples, run_ranks
from PIL import Image

from guided_diffusion import cli
from guided_diffusion.config import (
    ClassifierConfig,
    DiffusionConfig,
    ModelConfig,
    config_to_dict,
)
from guided_diffusion.diffusion.denoiser import Denoiser, DiffusionDenoiser
from guided_diffusion.editing import (
    BlurOperator,
    DownsampleOperator,
    MaskOperator,
    X0Predictor,
    ddim_invert,
    load_images,
    load_latents,
    load_mask,
    measurement_cond_fn,
    read_latents,
    repaint,
    repaint_schedule,
    save_latents,
    sdedit,
    start_points,
    sum_cond_fns,
)
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import SampleNoise
from guided_diffusion.sampling.output import save_npz
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.settings import SamplerSettings
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a denoiser known in closed form -------------------------------------------------------------------


class GaussianDenoiser(Denoiser):
    """Data x_0 ~ N(mu, s^2 I): E[x_0 | x_k] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_k - alpha mu)."""

    def __init__(self, alphas_cumprod, mu: float = 0.3, s: float = 0.5):
        super().__init__(alphas_cumprod)
        self.mu, self.s = mu, s

    def predict(self, x, level, model_kwargs):
        a, g = level.alpha, level.sigma
        x0 = self.mu + a * self.s**2 / (a * a * self.s**2 + g * g) * (x - a * self.mu)
        return x0, self.eps_from_x0(x, level, x0)


def cosine_abar(points: int) -> np.ndarray:
    t = np.linspace(0.02, 0.98, points)
    return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def test_ddim_inversion_of_a_known_denoiser_round_trips_and_refinement_makes_it_exact():
    denoiser = GaussianDenoiser(cosine_abar(20))
    x0 = 0.3 + 0.5 * torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    errors = []
    for refine in (0, 1, 3, 20):
        latents = ddim_invert(denoiser, x0, refine=refine, tol=0.0)
        back = SAMPLERS["ddim"](denoiser, latents, clip_denoised=False)
        errors.append(float((back - x0).abs().max()))
    # First-order inversion is off by the step error; each fixed-point pass shrinks it, towards exact.
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.05 and errors[-1] < 1e-4, errors
    # The latents of Gaussian data under its own ODE are standard normal.
    latents = ddim_invert(denoiser, x0, refine=20)
    # Each sample stops refining on its own, so a batch inverts like its halves.
    torch.testing.assert_close(latents, torch.cat([ddim_invert(denoiser, x0[:40], refine=20),
                                                   ddim_invert(denoiser, x0[40:], refine=20)]))
    assert abs(float(latents.mean())) < 0.1 and abs(float(latents.std()) - 1) < 0.1
    with pytest.raises(SettingError, match="refine must be >= 0, got -1") as info:
        ddim_invert(denoiser, x0, refine=-1)
    assert info.value.setting == "refine"


def _tiny_unet(seed: int = 0, class_cond: bool = False) -> tuple[torch.nn.Module, ModelConfig, DiffusionConfig]:
    config = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="",
                         num_head_channels=32, learn_sigma=True, num_classes=10, class_cond=class_cond)
    torch.manual_seed(seed)
    model = randomise_zero_layers(config.build(), seed).eval()  # the zero-initialised output layers would make eps = 0
    return model, config, DiffusionConfig(learn_sigma=True, diffusion_steps=100, noise_schedule="cosine")


def test_inversion_on_the_diffusion_grid_follows_the_reverse_ddim_formula_and_the_compat_loop_is_it():
    """ddim_invert against the reverse-DDIM arithmetic written out on the respaced diffusion's own arrays
    (eps from the model's eps output, levels alpha_bar_{t-1} -> alpha_bar_t); the original-style
    `ddim_reverse_sample_loop` entry point must give the same, with and without clipping."""
    model, _, dcfg = _tiny_unet()
    diffusion = dcfg.replace(timestep_respacing="ddim10").build()
    x0 = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)
    abar_prev = torch.as_tensor(diffusion.alphas_cumprod_prev, dtype=torch.float64)
    original_t = torch.as_tensor(diffusion.timestep_map)
    for clip in (False, True):
        x = x0.clone()
        with torch.no_grad():
            for t in range(diffusion.num_timesteps):
                eps = model(x, original_t[t].repeat(len(x)).float())[:, :3]
                x0_hat = (x - (1 - abar_prev[t]).sqrt() * eps) / abar_prev[t].sqrt()
                x0_hat = x0_hat.clamp(-1, 1) if clip else x0_hat
                x = (abar[t].sqrt() * x0_hat + (1 - abar[t]).sqrt() * eps).float()
            compat = diffusion.ddim_reverse_sample_loop(model, x0, clip_denoised=clip)
        torch.testing.assert_close(compat, x, rtol=1e-4, atol=1e-4)
        if not clip:
            torch.testing.assert_close(ddim_invert(DiffusionDenoiser(model, diffusion), x0), x, rtol=1e-4, atol=1e-4)


def test_sdedit_keeps_little_at_full_strength_much_at_low_and_per_sample_noise():
    denoiser = GaussianDenoiser(cosine_abar(20))
    x0 = torch.full((4, 3, 4, 4), 0.9)
    low = sdedit(denoiser, x0, strength=0.05, noise=SampleNoise(0, range(4)))
    high = sdedit(denoiser, x0, strength=1.0, noise=SampleNoise(0, range(4)))
    assert float((low - x0).abs().mean()) < 0.05
    assert float((high - x0).abs().mean()) > 0.2
    # Edit i depends on (seed, i) only: a batch equals its halves, for a stochastic sampler too.
    whole = sdedit(denoiser, x0, strength=0.5, sampler="ddim", eta=1.0, noise=SampleNoise(3, range(4)))
    halves = torch.cat([sdedit(denoiser, x0[:2], strength=0.5, sampler="ddim", eta=1.0, noise=SampleNoise(3, [0, 1])),
                        sdedit(denoiser, x0[2:], strength=0.5, sampler="ddim", eta=1.0, noise=SampleNoise(3, [2, 3]))])
    torch.testing.assert_close(whole, halves)
    # From the inversion, unguided deterministic DDIM walks back to the input.
    back = sdedit(denoiser, x0, strength=0.6, from_inversion=True, inversion_refine=20, clip_denoised=False)
    assert float((back - x0).abs().max()) < 1e-3
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        sdedit(denoiser, x0, strength=0.0)
    assert start_points(0.5, 50) == 25 and start_points(1e-4, 50) == 1 and start_points(1.0, 7) == 7


def test_sdedit_runs_every_sampler_on_the_truncated_grid():
    model, _, dcfg = _tiny_unet()
    denoiser = SamplerSettings(steps=4).denoiser(model, dcfg.build())
    x0 = torch.zeros(2, 3, 8, 8)
    for name in SAMPLERS:
        out = sdedit(denoiser, x0, strength=0.5, sampler=name, noise=SampleNoise(0, [0, 1]))
        assert out.shape == x0.shape and torch.isfinite(out).all(), name


def test_repaint_schedule_walks_down_with_jumps_back_up():
    assert repaint_schedule(4, 1, 1) == [3, 2, 1, 0, -1]
    assert repaint_schedule(6, 2, 2) == [5, 4, 3, 4, 5, 4, 3, 2, 1, 2, 3, 2, 1, 0, -1]
    levels = repaint_schedule(50, 5, 5)
    downs = sum(1 for a, b in itertools.pairwise(levels) if b < a)
    assert levels[0] == 49 and levels[-1] == -1 and all(abs(b - a) == 1 for a, b in itertools.pairwise(levels))
    assert downs == 49 + 1 + 4 * 5 * 9  # every level once, plus 4 resampling passes over 9 stretches of 5


def test_repaint_keeps_the_known_region_and_fills_the_rest_consistently():
    denoiser = GaussianDenoiser(cosine_abar(20), mu=0.0, s=0.5)
    known = torch.full((8, 3, 4, 4), 0.5)
    mask = torch.zeros(8, 1, 4, 4)
    mask[:, :, :2] = 1
    noise = SampleNoise(0, range(8))
    out = repaint(denoiser, noise.randn((8, 3, 4, 4)), known=known, mask=mask, jump_length=2, jump_n_sample=2, noise=noise)
    assert torch.equal(out[:, :, :2], known[:, :, :2])
    assert not torch.allclose(out[:, :, 2:], known[:, :, 2:])
    # Pixels are independent under this prior, so the unknown half is a sample of N(0, 0.5^2).
    filled = out[:, :, 2:]
    assert abs(float(filled.mean())) < 0.15 and 0.3 < float(filled.std()) < 0.7


def test_operators_downsample_blur_mask():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    down = DownsampleOperator(2)(x)
    assert down.shape == (1, 1, 4, 4) and float(down[0, 0, 0, 0]) == (0 + 1 + 8 + 9) / 4
    blur = BlurOperator(1.0)
    assert blur.size == 5 and abs(float(blur.kernel.sum()) - 1) < 1e-6
    torch.testing.assert_close(blur(torch.full((2, 3, 8, 8), 0.7)), torch.full((2, 3, 8, 8), 0.7))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    assert torch.equal(MaskOperator(mask)(x), x * mask)
    with pytest.raises(ValueError):
        DownsampleOperator(3)(x)


class _ZeroEps(torch.nn.Module):
    """eps_theta = 0, so x0_hat(x_t) = x_t / alpha_t exactly."""

    def forward(self, x, t, **kwargs):
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


def test_measurement_cond_fn_is_the_closed_form_gradient_and_sums_with_others():
    diffusion = DiffusionConfig(learn_sigma=True, diffusion_steps=100, noise_schedule="cosine").build()
    predict = X0Predictor(_ZeroEps(), diffusion)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    t = torch.tensor([30, 70])
    abar = torch.as_tensor(diffusion.alphas_cumprod[[30, 70]], dtype=torch.float32).view(-1, 1, 1, 1)
    alpha = abar.sqrt()
    # L = ||y - m x / alpha||^2  ->  grad_x L = -2 m (y - m x / alpha) / alpha
    grad = -2 * mask * (y - mask * x / alpha) / alpha
    residual_norm = (mask * (y - mask * x / alpha)).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x0_step = measurement_cond_fn(MaskOperator(mask), mask * y, 0.5, predict_x0=predict)(x, t)
    dps_step = measurement_cond_fn(MaskOperator(mask), mask * y, 0.5, predict_x0=predict, step="dps")(x, t)
    torch.testing.assert_close(x0_step, -0.5 * abar / (1 - abar) * grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dps_step, -0.5 * grad / residual_norm, rtol=1e-4, atol=1e-5)
    both = sum_cond_fns(lambda x, t, **_: torch.ones_like(x), None, lambda x, t, **_: 2 * torch.ones_like(x))
    torch.testing.assert_close(both(x, t), torch.full_like(x, 3.0))
    assert sum_cond_fns(None, None) is None
    # Between integer steps abar is interpolated, at them it is the schedule's.
    assert torch.allclose(predict.alpha_bar(torch.tensor([30.0])), torch.tensor([diffusion.alphas_cumprod[30]], dtype=torch.float32))


def test_x0_predictor_agrees_with_the_denoisers_prediction():
    model, _, dcfg = _tiny_unet()
    base = dcfg.build()
    denoiser = DiffusionDenoiser(model, base)
    predict = X0Predictor(model, base)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected, _ = denoiser.predict(x, denoiser.level(40), {})
        got = predict(x, torch.tensor([40, 40]))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="un-respaced"):
        X0Predictor(model, dcfg.replace(timestep_respacing="10").build())


def test_dps_super_resolution_of_a_known_prior_is_consistent_with_the_measurement():
    model, _, dcfg = _tiny_unet()
    del model
    diffusion = dcfg.build()
    denoiser = GaussianDenoiser(diffusion.alphas_cumprod[::10].copy(), mu=0.0, s=0.5)

    class Model(torch.nn.Module):  # the Gaussian prior's eps at original timesteps
        def forward(self, x, t, **kwargs):
            abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float32)[t.long()].view(-1, 1, 1, 1)
            x0 = 0.25 * abar.sqrt() / (0.25 * abar + 1 - abar) * x
            return torch.cat([(x - abar.sqrt() * x0) / (1 - abar).sqrt()] * 2, dim=1)

    down = DownsampleOperator(2)
    truth = 0.5 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = down(truth)
    cond = measurement_cond_fn(down, y, 2.0, predict_x0=X0Predictor(Model(), diffusion))
    denoiser.model_time = lambda level, batch, device: torch.full((batch,), 10 * level.index, dtype=torch.long)  # grid -> original t
    noise = SampleNoise(0, range(16))
    guided = SAMPLERS["ddim"](denoiser, noise.randn((16, 3, 8, 8)), cond_fn=cond, clip_denoised=False)
    unguided = SAMPLERS["ddim"](denoiser, SampleNoise(0, range(16)).randn((16, 3, 8, 8)), clip_denoised=False)
    assert float((down(guided) - y).pow(2).mean()) < 0.05 * float((down(unguided) - y).pow(2).mean())


# -- files ---------------------------------------------------------------------------------------------


def test_load_images_masks_and_latents(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    save_npz(tmp_path / "in.npz", images, np.array([1, 2, 3]))
    got, labels = load_images(tmp_path / "in.npz", 8)
    assert np.array_equal(got, images) and labels.tolist() == [1, 2, 3]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    got, labels = load_images(folder, 8)
    assert np.array_equal(got, images) and labels is None
    with pytest.raises(ValueError, match="the model takes 16x16"):
        load_images(tmp_path / "in.npz", 16)
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    loaded = load_mask(tmp_path / "mask.png", 3, 8)
    assert loaded.shape == (3, 1, 8, 8) and loaded[:, :, :4].all() and not loaded[:, :, 4:].any()
    save_npz(tmp_path / "masks.npz", np.ones((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="2 masks for 3 images"):
        load_mask(tmp_path / "masks.npz", 3, 8)
    with pytest.raises(ValueError, match="is 8x8, the images are 4x4"):
        load_mask(tmp_path / "mask.png", 3, 4)
    latents = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    save_latents(tmp_path / "latents.npz", latents, np.array([4, 5, 6]))
    assert torch.equal(load_latents(tmp_path / "latents.npz"), torch.from_numpy(latents))
    assert read_latents(tmp_path / "latents.npz")[1].tolist() == [4, 5, 6]


# -- the commands --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    model, config, dcfg = _tiny_unet()
    (root / "unet").mkdir()
    save_checkpoint(root / "unet" / "model.pt", model.state_dict())
    write_config_json(root / "unet", config_to_dict(config, dcfg))
    guide_config = ClassifierConfig(image_size=8, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="",
                                    classifier_channel_mult="1,2", classifier_num_head_channels=32, num_classes=10)
    torch.manual_seed(1)
    (root / "guide").mkdir()
    save_checkpoint(root / "guide" / "model.pt", guide_config.build().state_dict())
    write_config_json(root / "guide", config_to_dict(guide_config, dcfg))
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_npz(root / "images.npz", images, np.arange(5))
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    save_npz(root / "low.npz", images[:, ::2, ::2].copy())
    save_npz(root / "small_mask.npz", np.ones((4, 4), np.float32))
    return {"root": root, "unet": str(root / "unet" / "model.pt"), "guide": str(root / "guide" / "model.pt"),
            "images": images}


def _run(args: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return cli.main(args)
    finally:
        torch.set_num_threads(threads)


def test_invert_writes_latents_and_reports_the_round_trip(checkpoints, tmp_path, capsys):
    c = checkpoints
    assert _run(["invert", "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--steps", "5",
                 "--out_dir", str(tmp_path), "--batch_size", "2", "--progress", "False"]) == 0
    latents, labels = read_latents(tmp_path / "latents.npz")
    assert latents.shape == (5, 3, 8, 8) and latents.dtype == torch.float32 and labels.tolist() == [0, 1, 2, 3, 4]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("round trip"))
    assert "PSNR" in line and "over 5 images" in line
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_img2img_is_seeded_per_image_whatever_the_batch_size(checkpoints, tmp_path):
    c = checkpoints
    common = ["img2img", "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--steps", "4",
              "--strength", "0.5", "--seed", "7", "--classifier_path", c["guide"], "--classifier_scale", "2",
              "--class_labels", "3", "--progress", "False"]
    assert _run([*common, "--out_dir", str(tmp_path / "a"), "--batch_size", "5"]) == 0
    assert _run([*common, "--out_dir", str(tmp_path / "b"), "--batch_size", "2"]) == 0
    (a, labels), (b, _) = read_samples(tmp_path / "a"), read_samples(tmp_path / "b")
    assert a.shape == (5, 8, 8, 3) and np.array_equal(a, b) and labels.tolist() == [3] * 5
    assert _run([*common, "--out_dir", str(tmp_path / "c"), "--seed", "8"]) == 0
    assert not np.array_equal(read_samples(tmp_path / "c")[0], a)
    assert _run([*common[:-6], "--out_dir", str(tmp_path / "d"), "--from_inversion", "--sampler", "dpm++2m",
                 "--progress", "False"]) == 0


@pytest.mark.parametrize("method", ["repaint", "dps"])
def test_inpaint_keeps_the_known_pixels_exactly(checkpoints, tmp_path, method):
    c = checkpoints
    extra = ["--jump_length", "2", "--jump_n_sample", "2"] if method == "repaint" else ["--sampler", "ddim"]
    assert _run(["inpaint", "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--mask",
                 str(c["root"] / "mask.png"), "--method", method, "--steps", "4", "--seed", "0", "--out_dir", str(tmp_path),
                 "--progress", "False", *extra]) == 0
    images, _ = read_samples(tmp_path)
    assert np.array_equal(images[:, :4], c["images"][:, :4])
    assert not np.array_equal(images[:, 4:], c["images"][:, 4:])


@pytest.mark.parametrize("task", ["super_res", "deblur", "inpaint"])
def test_restore_tasks_run(checkpoints, tmp_path, task):
    c = checkpoints
    inputs = {"super_res": ["--input", str(c["root"] / "low.npz")],
              "deblur": ["--input", str(c["root"] / "images.npz"), "--blur_sigma", "0.8"],
              "inpaint": ["--input", str(c["root"] / "images.npz"), "--mask", str(c["root"] / "mask.png")]}[task]
    assert _run(["restore", "--task", task, "--model_path", c["unet"], *inputs, "--steps", "3", "--seed", "0",
                 "--out_dir", str(tmp_path), "--progress", "False"]) == 0
    images, _ = read_samples(tmp_path)
    assert images.shape == (5, 8, 8, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["img2img", "--strength", "1.5"], "error: --strength must be in (0, 1] (the fraction of the run), got 1.5"),
        (["img2img", "--strength", "0"], "error: --strength must be in (0, 1]"),
        (["inpaint", "--mask", "{root}/small_mask.npz"], "error: --mask {root}/small_mask.npz is 4x4, the images are 8x8"),
        (["inpaint"], "error: pass --mask"),
        (["restore", "--task", "super_res"], "error: --input: {root}/images.npz: images are 8x8, the model takes 4x4"),
        (["invert", "--input", "{root}/missing.npz"], "error: --input {root}/missing.npz does not exist"),
        (["img2img", "--classifier_path", "{root}/guide/model.pt"],
         "error: --class_labels needed: classifier guidance steers towards a class"),
        (["invert", "--steps", "1"], "error: --steps must be >= 2, got 1"),
        (["invert", "--steps", "500"], "error: --steps must be <= the model's 100 diffusion steps, got 500"),
        (["img2img", "--sampler", "heun", "--eta", "0.5"], "error: --eta applies to the ddim sampler, not heun"),
        (["img2img", "--cfg_scale", "2"], "error: --cfg_scale 2.0 needs a class-conditional model trained with label dropout"),
        (["img2img", "--classifier_path", "{root}/unet/model.pt", "--class_labels", "1"],
         "error: {root}/unet/model.pt is a diffusion model checkpoint, not a classifier"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(checkpoints, tmp_path, capsys, args, message):
    root = str(checkpoints["root"])
    command, *rest = args
    argv = [command, "--model_path", checkpoints["unet"], "--out_dir", str(tmp_path / "out")]
    if "--input" not in rest:
        argv += ["--input", f"{root}/images.npz" if "--classifier_path" not in rest else f"{root}/low.npz"]
    if "--classifier_path" in rest:  # an input without labels
        save_npz(tmp_path / "nolabels.npz", checkpoints["images"])
        argv[-1] = str(tmp_path / "nolabels.npz")
    argv += [part.format(root=root) for part in rest]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.format(root=root)) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_two_ranks_split_the_images_and_match_one_rank(checkpoints, tmp_path):
    c = checkpoints
    args = ["img2img", "--model_path", c["unet"], "--input", str(c["root"] / "images.npz"), "--steps", "4",
            "--strength", "0.6", "--seed", "5", "--batch_size", "2", "--progress", "False"]
    code = (f"import sys; from guided_diffusion import cli; "
            f"sys.exit(cli.main({json.dumps([*args, '--out_dir', str(tmp_path / 'two')])}))")
    results = run_ranks(code, world_size=2, timeout=240)
    assert all(rc == 0 for rc, _, _ in results), results
    assert _run([*args, "--out_dir", str(tmp_path / "one")]) == 0
    assert np.array_equal(read_samples(tmp_path / "two")[0], read_samples(tmp_path / "one")[0])
