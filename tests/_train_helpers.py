"""Helpers shared by the training, data, logger and dist_util tests (not a test module)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


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
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OPENAI_LOGDIR", "OPENAI_LOG_FORMAT", "DIFFUSION_TRAINING_TEST")}
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
