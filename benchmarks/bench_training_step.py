"""One diffusion training step (forward, hybrid loss, backward, AdamW) on a released architecture with
random weights: the plain path against the fast-path levers, in one process, on the same weights and batch.
Also reports peak memory with and without gradient checkpointing (on GPU: max allocated; on CPU: the
growth of the process's peak resident set, measured in a child process per setting).

    python benchmarks/bench_training_step.py                       # 64x64 ADM, batch 2
    python benchmarks/bench_training_step.py --memory              # + checkpointing memory comparison
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys

import torch
from common import released_network, report, time_paths

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.runtime.performance import optimize_model


def make_step(model, diffusion, batch, foreach: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=foreach)
    x, y, t, noise = batch

    def step():
        opt.zero_grad(set_to_none=True)
        loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y}, noise=noise)["loss"].mean()
        loss.backward()
        opt.step()
        return loss.detach().reshape(1)

    return step


def one_step_peak(preset: str, batch_size: int, checkpointing: bool) -> float:
    """Peak memory (MiB) of one training step in this process (run in a fresh child per setting)."""
    cfg, model = released_network(preset, 0)
    if checkpointing:
        model = cfg.replace(use_checkpoint=True).build()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).train()
    diffusion = DiffusionConfig.from_dict(PRESETS[preset].flags).build()
    batch = make_batch(cfg.image_size, batch_size, diffusion.num_timesteps, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    make_step(model, diffusion, batch, foreach=True)()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def make_batch(size, batch_size, num_timesteps, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, size, size, generator=gen) * 2 - 1
    y = torch.randint(0, 1000, (batch_size,), generator=gen)
    t = torch.randint(0, num_timesteps, (batch_size,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    return x.to(device), y.to(device), t.to(device), noise.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--memory", action="store_true", help="compare peak memory with/without checkpointing")
    parser.add_argument("--peak-child", nargs=3, metavar=("PRESET", "BATCH", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        preset, batch, ckpt = args.peak_child
        print(json.dumps(one_step_peak(preset, int(batch), ckpt == "1")))
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg, model = released_network(args.preset, 0)
    model = model.to(device).train()
    diffusion = DiffusionConfig.from_dict(PRESETS[args.preset].flags).build()
    batch = make_batch(cfg.image_size, args.batch, diffusion.num_timesteps, device)
    initial = copy.deepcopy(model.state_dict())

    def fresh(channels_last=False, compile=False):
        m = copy.deepcopy(model)
        m.load_state_dict(initial)
        return optimize_model(m, channels_last=channels_last, compile=compile)

    plain_step = make_step(fresh(), diffusion, batch, foreach=False)

    def plain():
        with attention_backend("math"):
            return plain_step()

    paths = {
        "plain (math attention, per-tensor AdamW)": plain,
        "default (SDPA, foreach AdamW)": make_step(fresh(), diffusion, batch, foreach=True),
        "+ channels_last": make_step(fresh(channels_last=True), diffusion, batch, foreach=True),
    }
    if args.compile:
        paths["+ channels_last + torch.compile"] = make_step(fresh(True, True), diffusion, batch, foreach=True)
    seconds, outputs = time_paths(paths, args.repeats, sync)
    # Losses of the first (warm-up) step agree: same weights, same batch.
    report(f"training step, {args.preset}, batch {args.batch}", seconds, outputs, next(iter(paths)), args.batch)

    if args.memory:
        for ckpt in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--peak-child", args.preset, str(args.batch), ckpt],
                                 capture_output=True, text=True, check=True)
            label = "with" if ckpt == "1" else "without"
            print(f"peak memory {label} gradient checkpointing: {float(out.stdout.strip()):.0f} MiB")


if __name__ == "__main__":
    main()
