"""Helpers shared by the test modules (not a test module; conftest.py holds only fixtures).

Sections: golden fixtures; tiny networks with random weights; files and child processes; the sampling
commands' tiny checkpoints and outputs; the evaluator's random Inception weights.
"""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from guided_diffusion.evaluation.inception import InceptionV3
from guided_diffusion.script_util import (
    args_to_dict,
    classifier_defaults,
    create_classifier,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    sr_create_model_and_diffusion,
    sr_model_and_diffusion_defaults,
)
from guided_diffusion.weights.checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
COMPAT = REPO / "tests" / "compat"


# -- golden fixtures (computed with the original code, ../shared/fixtures/README.md) ---------------------


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative error ||a - e|| / ||e|| (absolute when e is all zeros)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = expected.norm()
    diff = (actual - expected).norm()
    return float(diff / denom) if denom > 0 else float(diff)


# -- tiny networks with random weights --------------------------------------------------------------------


def randomise_zero_layers(network: nn.Module, seed: int, scale: float | None = None) -> nn.Module:
    """Random values for the zero-initialised layers (residual outputs, attention projections, the head),
    which would otherwise make labels and most of the network irrelevant to the prediction.

    Normal with standard deviation `scale`, or by default 1/sqrt(fan-in) for weights and 0.1 for biases;
    a small `scale` keeps a many-step sampler's output far from the clipping bounds."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            if not p.any():
                std = scale if scale is not None else (p[0].numel() ** -0.5) if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return network


TINY_ADM = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="4",
                num_head_channels=8, resblock_updown=True, diffusion_steps=40, noise_schedule="cosine")


def tiny_adm(seed: int = 0, **overrides):
    """(model, diffusion) of an 8x8 ADM-style UNet with random weights in eval mode; `overrides` are
    `create_model_and_diffusion` keyword arguments."""
    flags = {**model_and_diffusion_defaults(), **TINY_ADM, **overrides}
    torch.manual_seed(seed)
    model, diffusion = create_model_and_diffusion(**flags)
    return randomise_zero_layers(model, seed).eval(), diffusion


class CountingModel(nn.Module):
    """Wraps a network and counts its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


# -- files and child processes ----------------------------------------------------------------------------


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_blob_dataset(root: Path, count: int = 16, size: int = 16, classes: int = 2, layout: str = "filename", seed: int = 0) -> Path:
    """Images of a bright square on a dark background (class 0) or dark on bright (class 1),
    named CLASS_i.png (layout "filename") or stored as CLASS/i.png (layout "folder")."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % classes
        background, square = (40, 210) if label == 0 else (210, 40)
        image = np.full((size, size, 3), background, dtype=np.uint8)
        top, left = rng.integers(0, size // 2, size=2)
        image[top : top + size // 2, left : left + size // 2] = square
        image = np.clip(image.astype(int) + rng.integers(-10, 11, size=image.shape), 0, 255).astype(np.uint8)
        name = f"c{label}_{i:03d}.png" if layout == "filename" else f"c{label}/{i:03d}.png"
        write_image(root / name, image)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python: single-threaded, no inherited launcher variables."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OPENAI_LOGDIR", "OPENAI_LOG_FORMAT",
                "DIFFUSION_TRAINING_TEST")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def run_ranks(code: str, world_size: int = 2, timeout: float = 120) -> list[tuple[int, str, str]]:
    """Run `code` as `world_size` cooperating ranks (torchrun's environment, gloo on 127.0.0.1);
    returns (returncode, stdout, stderr) per rank."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world_size)
    ]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env or child_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "guided_diffusion", *args], env=env or child_env(), capture_output=True, text=True, timeout=timeout
    )


def load_checkpoint_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_checkpoint_set(run_a: Path, run_b: Path, step: int, ema_rates: tuple[str, ...] = ("0.9", "0.99")) -> None:
    """The model, EMA and Adam moments saved at `step` are bit-identical in the two run directories."""
    for name in (f"model{step:06d}.pt", *(f"ema_{rate}_{step:06d}.pt" for rate in ema_rates)):
        a, b = load_checkpoint_file(run_a / name), load_checkpoint_file(run_b / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"
    opt_a, opt_b = load_checkpoint_file(run_a / f"opt{step:06d}.pt"), load_checkpoint_file(run_b / f"opt{step:06d}.pt")
    for index, entry in opt_a["state"].items():
        assert torch.equal(entry["exp_avg"], opt_b["state"][index]["exp_avg"])
        assert torch.equal(entry["exp_avg_sq"], opt_b["state"][index]["exp_avg_sq"])


# -- the sampling commands: tiny checkpoints and their outputs --------------------------------------------

ARCH = ("--num_channels 32 --num_res_blocks 1 --channel_mult 1,1 --attention_resolutions 4 --num_head_channels 8 "
        "--resblock_updown True --learn_sigma True --diffusion_steps 40 --noise_schedule cosine --num_classes 10")
COND = f"--image_size 8 --class_cond True {ARCH}"
UNCOND = f"--image_size 8 --class_cond False {ARCH}"
CFG = f"{COND} --class_dropout_prob 0.1"
SR = f"--large_size 8 --small_size 4 --class_cond True {ARCH}"
CLASSIFIER = ("--classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 4 "
              "--classifier_channel_mult 1,1 --classifier_num_head_channels 8")


def parse_sample_flags(command: str, flag_string: str):
    """The argparse namespace a sampling subcommand builds from `flag_string`."""
    from guided_diffusion.cli.sample import _build_parser  # here, so tests of the lower layers need no CLI

    return _build_parser(command).parse_args(shlex.split(flag_string))


def make_checkpoints(directory: Path) -> dict[str, Path]:
    """Tiny checkpoints matching the flag strings above (plain .pt state dicts, as released)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    torch.manual_seed(0)
    for name, flags in (("cond", COND), ("uncond", UNCOND), ("cfg", CFG)):
        args = parse_sample_flags("image_sample", flags)
        model, _ = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
        paths[name] = save_checkpoint(directory / f"{name}.pt", randomise_zero_layers(model, len(paths)).state_dict())
    args = parse_sample_flags("classifier_sample", f"--image_size 8 {CLASSIFIER} --num_classes 10")
    classifier = create_classifier(**args_to_dict(args, classifier_defaults().keys()))
    paths["classifier"] = save_checkpoint(directory / "classifier.pt", randomise_zero_layers(classifier, 7).state_dict())
    args = parse_sample_flags("super_res_sample", SR)
    model, _ = sr_create_model_and_diffusion(**args_to_dict(args, sr_model_and_diffusion_defaults().keys()))
    paths["sr"] = save_checkpoint(directory / "sr.pt", randomise_zero_layers(model, 8).state_dict())
    return paths


def run(command: str, flags: str, out_dir: Path | None, *extra: str) -> int:
    """Exit status of `guided-diffusion COMMAND FLAGS EXTRA --out_dir OUT_DIR`, run in this process."""
    from guided_diffusion.cli import main  # here, so tests of the lower layers need no CLI

    argv = [command, *shlex.split(flags), *extra]
    if out_dir is not None:
        argv += ["--out_dir", str(out_dir)]
    return main(argv)


def one_line_error(capsys, *fragments: str) -> str:
    """The stderr of a command that refused bad input: one line, "error: ...", no traceback, holding
    every fragment. Returns the line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def refused(capsys, code: int, *fragments: str) -> str:
    """A command's exit `code` is 2 and its stderr is `one_line_error`'s line."""
    assert code == 2, capsys.readouterr().err
    return one_line_error(capsys, *fragments)


def error_of(capsys, argv: list[str]) -> str:
    """The one-line error of `guided-diffusion ARGV`, which must exit 2."""
    from guided_diffusion.cli import main

    return refused(capsys, main(argv))


def load_npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[k] for k in data.files]


def read_samples(directory: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, labels or None) of the one samples_*.npz a command wrote into `directory`."""
    with np.load(next(directory.glob("samples_*.npz"))) as data:
        return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)


def sample(tmp_path: Path, name: str, command: str, flags: str, *extra: str) -> list[np.ndarray]:
    """Run a sampling command into tmp_path/name and return the arrays of the one npz it writes."""
    out = tmp_path / name
    assert run(command, flags, out, *extra) == 0
    [npz] = out.glob("samples_*.npz")
    return load_npz(npz)


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal, allowing a 1-level flip on a few pixels from float reassociation in batched kernels."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


# -- the evaluator: random Inception weights with realistic activation scales -----------------------------


def random_inception(seed: int = 0) -> InceptionV3:
    """InceptionV3 with He-initialised convolutions and non-trivial batch-norm statistics, so features
    keep a useful scale through all layers (the default init shrinks them to ~1e-7)."""
    generator = torch.Generator().manual_seed(seed)
    network = InceptionV3()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_((torch.rand(channels, generator=generator) - 0.5) * 0.2)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_((torch.rand(channels, generator=generator) - 0.5) * 0.4)
        network.fc.weight.copy_(torch.randn(network.fc.weight.shape, generator=generator) * 0.05)
        network.fc.bias.copy_(torch.randn(network.fc.bias.shape, generator=generator))
    return network.eval()


def write_random_weights(path: Path, seed: int = 0) -> Path:
    """Save a random state dict under pytorch-fid's key names (which are our module names)."""
    torch.save(random_inception(seed).state_dict(), path)
    return path
