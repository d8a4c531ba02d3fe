"""One sampling path: every sampler on every step grid through the command line, the Python API and two
ranks, with the same seed giving the same images at batch sizes 1 and 4; and the sampling commands'
one-line errors for bad input (nothing written, no traceback)."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CFG,
    CLASSIFIER,
    COND,
    SR,
    UNCOND,
    assert_same_images,
    child_env,
    free_port,
    load_npz,
    make_checkpoints,
    one_line_error,
    run,
)

from guided_diffusion.cli import main
from guided_diffusion.diffusion.grids import GRIDS
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.sampling import load_pipeline
from guided_diffusion.sampling.output import save_grid
from guided_diffusion.sampling.samplers import SAMPLERS

GUIDED = f"{UNCOND} {CLASSIFIER}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipe(ckpt):
    return load_pipeline(ckpt["uncond"], classifier=ckpt["classifier"], device="cpu", progress=False,
                         flags=UNCOND, classifier_flags=f"--image_size 8 {CLASSIFIER} --num_classes 10")


@pytest.mark.filterwarnings("ignore:the first guided step starts at")  # linspace/trailing grids, warned on purpose
@pytest.mark.filterwarnings("ignore:.*was measured to fail")  # every sampler on every grid: some fail, warned on purpose
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_on_every_grid_cli_equals_api_at_batch_sizes_1_and_4(ckpt, pipe, tmp_path, sampler, grid):
    out = tmp_path / "cli"
    assert run("classifier_sample", GUIDED, out, "--model_path", str(ckpt["uncond"]), "--classifier_path",
               str(ckpt["classifier"]), "--classifier_scale", "2", "--sampler", sampler, "--steps", "10",
               "--step_grid", grid, "--num_samples", "4", "--batch_size", "4", "--seed", "3") == 0
    cli_images, cli_labels = load_npz(out / "samples_4x8x8x3.npz")
    api_images, api_labels = pipe.sample(4, sampler=sampler, steps=10, step_grid=grid, guidance_scale=2.0, seed=3,
                                         batch_size=1, return_labels=True)
    assert np.array_equal(api_labels, cli_labels)
    assert_same_images(api_images, cli_images)
    assert cli_images.std() > 0


def test_api_job_is_the_cli_job(ckpt, pipe, tmp_path):
    """Equality by construction: both build the same SamplingJob (fingerprints agree, paths included)."""
    from guided_diffusion.cli.sample import prepare_job

    argv = shlex.split(GUIDED) + ["--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]),
                                  "--classifier_scale", "2", "--sampler", "heun", "--steps", "10", "--step_grid",
                                  "karras", "--s_churn", "0.5", "--guidance_interval", "0,30", "--num_samples", "4",
                                  "--batch_size", "4", "--seed", "3"]
    cli_job = dataclasses.replace(prepare_job("classifier_sample", argv).job, seed=3)
    api_job = pipe.job(4, sampler="heun", steps=10, step_grid="karras", s_churn=0.5, guidance_interval=(0.0, 30.0),
                       guidance_scale=2.0, seed=3, batch_size=4)
    assert cli_job.fingerprint() == api_job.fingerprint()


def test_new_flags_change_the_samples_and_reach_the_settings(ckpt, tmp_path):
    common = ("--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--num_samples", "2",
              "--steps", "6", "--seed", "1", "--classifier_scale", "4")
    base, _ = _sample(tmp_path, "base", "classifier_sample", GUIDED, *common, "--sampler", "heun")
    for name, extra in {
        "churn": ("--sampler", "heun", "--s_churn", "1", "--s_noise", "1.003"),
        "interval": ("--sampler", "heun", "--guidance_interval", "0,10"),
        "schedule": ("--sampler", "heun", "--guidance_schedule", "cosine"),
        "sigmas": ("--sampler", "heun", "--step_grid", "karras", "--sigma_max", "20", "--sigma_min", "0.05"),
        "order": ("--sampler", "unipc", "--order", "1"),
    }.items():
        images, _ = _sample(tmp_path, name, "classifier_sample", GUIDED, *common, *extra)
        assert not np.array_equal(images, base), name
    plain, _ = _sample(tmp_path, "cfg1", "image_sample", CFG, "--model_path", str(ckpt["cfg"]), "--num_samples", "2",
                       "--steps", "6", "--seed", "1", "--sampler", "dpm++2m", "--cfg_scale", "3")
    limited, _ = _sample(tmp_path, "cfg2", "image_sample", CFG, "--model_path", str(ckpt["cfg"]), "--num_samples", "2",
                         "--steps", "6", "--seed", "1", "--sampler", "dpm++2m", "--cfg_scale", "3", "--cfg_interval", "0,5")
    assert not np.array_equal(plain, limited)


def test_steps_uses_the_unrespaced_diffusion_and_timestep_respacing_is_unchanged(ckpt, tmp_path):
    common = ("--model_path", str(ckpt["cond"]), "--num_samples", "2", "--seed", "4", "--sampler", "ddim")
    respaced, _ = _sample(tmp_path, "r", "image_sample", COND, *common, "--timestep_respacing", "ddim10")
    leading, _ = _sample(tmp_path, "l", "image_sample", COND, *common, "--steps", "10", "--step_grid", "leading")
    linspace, _ = _sample(tmp_path, "s", "image_sample", COND, *common, "--steps", "10", "--step_grid", "linspace")
    assert_same_images(leading, respaced)  # diffusers' "leading" is the original's ddimN
    assert not np.array_equal(linspace, respaced)


def test_two_ranks_draw_what_one_draws_for_several_samplers_and_grids(ckpt, tmp_path):
    cases = [("heun", "karras"), ("unipc", "logsnr"), ("dpm++2m_sde", "trailing")]
    script = tmp_path / "ranks.py"
    lines = ["from guided_diffusion.cli import main"]
    for sampler, grid in cases:
        argv = shlex.split(GUIDED) + [
            "--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--classifier_scale", "2",
            "--sampler", sampler, "--steps", "10", "--step_grid", grid, "--num_samples", "5", "--batch_size", "2",
            "--seed", "8", "--out_dir", str(tmp_path / f"two_{sampler}_{grid}")]
        lines.append(f"assert main({['classifier_sample', *argv]!r}) == 0")
    script.write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                             "127.0.0.1", "--master_port", str(free_port()), str(script)],
                            env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for sampler, grid in cases:
        two = load_npz(tmp_path / f"two_{sampler}_{grid}" / "samples_5x8x8x3.npz")
        one = _sample(tmp_path, f"one_{sampler}_{grid}", "classifier_sample", GUIDED, "--model_path", str(ckpt["uncond"]),
                      "--classifier_path", str(ckpt["classifier"]), "--classifier_scale", "2", "--sampler", sampler,
                      "--steps", "10", "--step_grid", grid, "--num_samples", "5", "--batch_size", "2", "--seed", "8")
        assert all(np.array_equal(a, b) for a, b in zip(two, one)), (sampler, grid)


def _sample(tmp_path: Path, name: str, command: str, flags: str, *extra: str) -> list[np.ndarray]:
    out = tmp_path / name
    assert run(command, flags, out, *extra) == 0
    return load_npz(next(out.glob("samples_*.npz")))


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------------


@pytest.mark.parametrize("flag", ["--classifier_scale", "--cfg_scale", "--eta"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_scales_are_one_line_errors(ckpt, tmp_path, capsys, flag, value):
    out = tmp_path / "o"
    extra = ("--sampler", "ddim") if flag == "--eta" else ()
    assert run("classifier_sample", f"{CFG} {CLASSIFIER}", out, "--model_path", str(ckpt["cfg"]), "--classifier_path",
               str(ckpt["classifier"]), f"{flag}={value}", *extra) == 2
    line = one_line_error(capsys, f"error: {flag} ")
    assert "finite" in line or (value == "-inf" and ">= 0" in line)  # SamplerSettings checks eta's sign first
    assert not out.exists()


def test_out_dir_that_cannot_hold_files_is_refused_before_any_work(ckpt, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, needle in ((a_file, "is a file"), (a_file / "sub", "sits under"), (Path("/proc/guided_diffusion_out"), "not writable")):
        assert main(["image_sample", *shlex.split(COND), "--model_path", str(ckpt["cond"]), "--out_dir", str(out)]) == 2
        line = one_line_error(capsys, "--out_dir")
        assert needle in line
    assert a_file.read_text() == "x"


def test_corrupt_base_samples_are_one_line_errors(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8), np.array([1, 2, 3]))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "crc.npz"
    with zipfile.ZipFile(good) as archive:
        offset = archive.getinfo("arr_0.npy").header_offset + 30 + len("arr_0.npy") + 140
    corrupt.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    for path in (truncated, corrupt):
        out = tmp_path / f"o_{path.stem}"
        assert run("super_res_sample", SR, out, "--model_path", str(ckpt["sr"]), "--base_samples", str(path)) == 2
        one_line_error(capsys, "--base_samples")
        assert not out.exists()


def test_missing_checkpoints_are_named_before_building_networks(ckpt, tmp_path, capsys):
    missing = tmp_path / "no_such.pt"
    assert main(["image_sample", "--image_size", "8", "--model_path", str(missing), "--out_dir", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, str(missing))
    assert "--model_path" in line and "channel_mult" not in line
    assert main(["classifier_sample", *shlex.split(GUIDED), "--model_path", str(ckpt["uncond"]), "--classifier_path",
                 str(missing), "--out_dir", str(tmp_path / "o")]) == 2
    assert "--classifier_path" in one_line_error(capsys, str(missing))
    assert not (tmp_path / "o").exists()


def test_flag_abbreviations_are_errors(ckpt, tmp_path, capsys):
    assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), "--num_sample", "2") == 2
    one_line_error(capsys, "--num_sample")


def test_bad_solver_options_name_their_flag(ckpt, tmp_path, capsys):
    for extra, needle in (
        (("--steps", "1"), "--steps must be >= 2"),
        (("--sampler", "ddim", "--s_churn", "1"), "--s_churn"),
        (("--steps", "5", "--sigma_min", "0"), "--sigma_min"),
        (("--guidance_interval", "5,1"), "--guidance_interval"),
        (("--guidance_interval", "5"), "--guidance_interval"),
        (("--steps", "5", "--order", "4", "--sampler", "unipc"), "--order"),
        (("--cfg_interval", "5,1"), "--cfg_interval must be"),
        (("--sampler", "heun", "--eta", "0.5"), "--eta applies to the ddim sampler, not heun"),
        (("--sampler", "heun", "--s_tmin", "2", "--s_tmax", "1"), "--s_tmax must be >= s_tmin"),
        (("--sampler", "heun", "--s_noise", "-1"), "--s_noise must be a finite number >= 0"),
        (("--steps", "5", "--step_grid", "leading", "--sigma_max", "3"), "--sigma_max applies to karras and logsnr grids"),
        (("--steps", "5", "--step_grid", "karras", "--sigma_max", "1e9"), "--sigma_max: need"),
        (("--steps", "100"), "--steps must be <= the model's 40 diffusion steps"),
        (("--dynamic_threshold", "1.5"), "--dynamic_threshold must be a percentile in (0, 1]"),
    ):
        assert run("image_sample", COND, tmp_path / "o", "--model_path", str(ckpt["cond"]), *extra) == 2
        one_line_error(capsys, needle)


def test_non_finite_samples_stop_with_a_one_line_error(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    assert run("classifier_sample", GUIDED, out, "--model_path", str(ckpt["uncond"]), "--classifier_path",
               str(ckpt["classifier"]), "--classifier_scale", "1e38", "--sampler", "ddim", "--steps", "4",
               "--num_samples", "2") == 2
    line = one_line_error(capsys, "non-finite")
    assert "step" in line
    assert not list(out.glob("samples_*.npz"))


def test_a_saturating_guided_grid_warns_in_one_line_and_the_default_grid_does_not(ckpt, tmp_path, capsys):
    common = ["--model_path", str(ckpt["uncond"]), "--classifier_path", str(ckpt["classifier"]), "--sampler", "ddim",
              "--steps", "4", "--num_samples", "1"]
    assert run("classifier_sample", GUIDED, tmp_path / "a", *common, "--step_grid", "linspace") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("warning: the first guided step starts at t="), warned
    assert run("classifier_sample", GUIDED, tmp_path / "b", *common) == 0
    assert "warning" not in capsys.readouterr().err.lower()


def test_library_errors_are_in_library_terms(pipe):
    with pytest.raises(SettingError, match="steps must be >= 2") as info:
        pipe.sample(2, steps=1)
    assert info.value.setting == "steps"
    with pytest.raises(SettingError, match="finite") as info:
        pipe.sample(2, guidance_scale=float("nan"))
    assert info.value.setting == "classifier_scale"


# -- the grid beside the npz ------------------------------------------------------------------------------


def test_small_images_make_a_grid_at_least_512_pixels_wide(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    grid = np.asarray(Image.open(save_grid(tmp_path / "tiny.png", tiny)))
    assert grid.shape == (515, 515, 3)  # 2 x 2 images of 8 pixels, x32, with 1-pixel borders
    def tile(row: int, col: int, offset: int = 0) -> np.ndarray:  # every 32nd pixel of one enlarged image
        top, left = 1 + row * 257 + offset, 1 + col * 257 + offset
        return grid[top:top + 256 - offset:32, left:left + 256 - offset:32]

    assert np.array_equal(tile(0, 1), tiny[1]) and np.array_equal(tile(1, 0, offset=31), tiny[2])
    assert (grid[0] == grid[0, 0]).all() and (grid[:, 257] == grid[0, 0]).all() and grid[0, 0, 0] > 128  # light borders
    large = rng.integers(0, 256, (4, 300, 300, 3), dtype=np.uint8)
    assert Image.open(save_grid(tmp_path / "large.png", large)).size == (603, 603)  # wide enough already


def test_grids_put_one_class_per_row_and_leave_no_black_filler(tmp_path):
    from PIL import Image

    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)  # black images: the background must not be black
    labels = np.array([7, 2, 7, 7, 2])
    grid = np.asarray(Image.open(save_grid(tmp_path / "classes.png", images + np.arange(5)[:, None, None, None],
                                           labels)))
    zoom = 22  # 3 columns: ceil((512 - 4) / 24)
    size = 8 * zoom + 1
    assert grid.shape == (2 * size + 1, 3 * size + 1, 3)
    row_of_2 = [int(grid[1, 1 + k * size, 0]) for k in range(2)]
    row_of_7 = [int(grid[1 + size, 1 + k * size, 0]) for k in range(3)]
    assert row_of_2 == [1, 4] and row_of_7 == [0, 2, 3]  # class 2 first, each row in sample order
    empty = grid[1:size, 1 + 2 * size:3 * size]  # the place class 2's short row leaves
    assert (empty == grid[0, 0]).all() and grid[0, 0, 0] > 128


def test_api_upsample_equals_super_res_sample(ckpt, tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "base.npz"
    np.savez(path, base, np.array([9, 1, 5]))
    cli, cli_labels = _sample(tmp_path, "sr", "super_res_sample", SR, "--model_path", str(ckpt["sr"]), "--base_samples",
                              str(path), "--num_samples", "3", "--batch_size", "3", "--steps", "5", "--sampler",
                              "dpm++2m", "--seed", "2")
    upsampler = load_pipeline(ckpt["sr"], flags=SR, device="cpu", progress=False)
    api = upsampler.upsample(base, classes=[9, 1, 5], sampler="dpm++2m", steps=5, seed=2, batch_size=1)
    assert cli_labels.tolist() == [9, 1, 5]
    assert_same_images(api, cli)
    with pytest.raises(SettingError, match="class-conditional"):
        upsampler.upsample(base, sampler="ddim", steps=5)
