"""`--init_noise`: sampling commands start from given noise, e.g. the latents `guided-diffusion invert` wrote."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import randomise_zero_layers, read_samples

from guided_diffusion import cli
from guided_diffusion.config import DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.diffusion.inversion import psnr
from guided_diffusion.sampling.output import save_npz
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny class-conditional UNet (perturbed away from its zero-initialised output) and 4 images."""
    root = tmp_path_factory.mktemp("init_noise")
    config = ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="",
                         num_head_channels=32, learn_sigma=True, num_classes=10, class_cond=True)
    torch.manual_seed(0)
    model = randomise_zero_layers(config.build(), 0)
    (root / "unet").mkdir()
    save_checkpoint(root / "unet" / "model.pt", model.state_dict())
    write_config_json(root / "unet", config_to_dict(config, DiffusionConfig(learn_sigma=True, diffusion_steps=100,
                                                                           noise_schedule="cosine")))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    save_npz(root / "images.npz", images, np.array([3, 1, 4, 1]))
    return {"root": root, "unet": str(root / "unet" / "model.pt"), "images": images}


def test_sampling_from_inverted_latents_retraces_the_inversion_with_its_labels(run, tmp_path, capsys):
    """`invert` reports the PSNR of its own DDIM way back (unclipped); `image_sample --init_noise` with the
    same grid and --clip_denoised False walks the same way back, so it reaches the same PSNR."""
    latents = tmp_path / "inv"
    assert cli.main(["invert", "--model_path", run["unet"], "--input", str(run["root"] / "images.npz"), "--steps", "20",
                     "--out_dir", str(latents), "--progress", "False"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("round trip"))
    reported = float(line.split("PSNR ")[1].split(" dB mean")[0])
    out = tmp_path / "out"
    assert cli.main(["image_sample", "--model_path", run["unet"], "--init_noise", str(latents / "latents.npz"),
                     "--sampler", "ddim", "--steps", "20", "--clip_denoised", "False", "--num_samples", "4",
                     "--batch_size", "3", "--seed", "0", "--out_dir", str(out), "--progress", "False"]) == 0
    images, labels = read_samples(out)
    assert labels.tolist() == [3, 1, 4, 1]  # the latents' labels, since --class_labels was not given
    assert abs(float(psnr(images, run["images"]).mean()) - reported) < 0.1

    seeded = tmp_path / "seeded"
    assert cli.main(["image_sample", "--model_path", run["unet"], "--sampler", "ddim", "--steps", "20",
                     "--clip_denoised", "False", "--num_samples", "4", "--class_labels", "3,1,4,1", "--seed", "0",
                     "--out_dir", str(seeded), "--progress", "False"]) == 0
    assert not np.array_equal(read_samples(seeded)[0], images)  # without --init_noise: the seeded noise


@pytest.mark.parametrize(
    ("make", "num_samples", "message"),
    [
        (lambda: np.zeros((4, 3, 16, 16), np.float32), 2, "error: --init_noise: starting noise is (4, 3, 16, 16), expected N x 3x8x8"),
        (lambda: np.zeros((2, 3, 8, 8), np.float32), 3, "error: --init_noise: starting noise holds 2 samples, 3 are asked for"),
        (lambda: np.full((2, 3, 8, 8), np.nan, np.float32), 2, "contain NaN or infinite values"),
    ],
)
def test_unusable_init_noise_is_one_line_and_writes_nothing(run, tmp_path, capsys, make, num_samples, message):
    save_npz(tmp_path / "noise.npz", make())
    out = tmp_path / "out"
    code = cli.main(["image_sample", "--model_path", run["unet"], "--init_noise", str(tmp_path / "noise.npz"),
                     "--num_samples", str(num_samples), "--steps", "4", "--out_dir", str(out), "--progress", "False"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not list(out.glob("samples_*"))
