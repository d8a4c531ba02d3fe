"""One classifier-guided DDIM step (UNet forward + classifier gradient) on a released architecture with
random weights: the package's path against a plain path in the same process.

The plain path is the original's arithmetic: attention as explicit matmuls and softmax, schedule arrays
re-uploaded from NumPy at every lookup, the timestep map rebuilt at every model call. Both paths share
weights and inputs; the script prints seconds per step, the speed ratio and the relative error.

    python benchmarks/bench_guided_ddim_step.py                 # 64x64 ADM + classifier, batch 4
    python benchmarks/bench_guided_ddim_step.py --preset 256x256_diffusion --batch 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from guided_diffusion.checkpoints import preset_network_config
from guided_diffusion.config import DiffusionConfig
from guided_diffusion.diffusion.gaussian import _extract_into_tensor
from guided_diffusion.diffusion.respace import SpacedDiffusion, _WrappedModel
from guided_diffusion.diffusion.schedules import get_named_beta_schedule
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.presets import PRESETS


class PlainDiffusion(SpacedDiffusion):
    """The original's per-step host work: NumPy uploads per lookup, a new timestep map per call."""

    def _extract(self, name, t, shape):
        return _extract_into_tensor(getattr(self, name), t, shape)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)


def make_cond_fn(classifier, scale: float):
    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[torch.arange(len(y)), y]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale
    return cond_fn


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Give the zero-initialised output layers random weights, so every block contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = PRESETS[args.preset]
    model_cfg = preset_network_config(preset).replace(use_fp16=False)
    classifier_cfg = preset_network_config(PRESETS[preset.classifier])
    model, classifier = model_cfg.build().eval(), classifier_cfg.build().eval()
    randomise(model, 0)
    randomise(classifier, 1)
    diff_cfg = DiffusionConfig.from_dict({**preset.flags, "timestep_respacing": "ddim25"})
    fast = diff_cfg.build()
    plain = PlainDiffusion(
        use_timesteps=fast.timestep_map,
        betas=get_named_beta_schedule(diff_cfg.noise_schedule, diff_cfg.diffusion_steps),
        model_mean_type=fast.model_mean_type, model_var_type=fast.model_var_type, loss_type=fast.loss_type,
        rescale_timesteps=fast.rescale_timesteps,
    )

    gen = torch.Generator().manual_seed(0)
    size = model_cfg.image_size
    x = torch.randn(args.batch, 3, size, size, generator=gen)
    y = torch.randint(0, 1000, (args.batch,), generator=gen)
    t = torch.full((args.batch,), 12, dtype=torch.long)
    cond_fn = make_cond_fn(classifier, preset.classifier_scale)

    def step(diffusion):
        return diffusion.ddim_sample(model, x, t, cond_fn=cond_fn, model_kwargs={"y": y})["sample"]

    def run_plain():
        with attention_backend("math"):
            return step(plain)

    def run_fast():
        return step(fast)

    times = {"plain": [], "fast": []}
    outputs = {}
    for name, fn in (("plain", run_plain), ("fast", run_fast)):
        outputs[name] = fn()  # warm-up
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
        for name, fn in (("plain", run_plain), ("fast", run_fast)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    plain_s, fast_s = statistics.median(times["plain"]), statistics.median(times["fast"])
    rel = ((outputs["fast"] - outputs["plain"]).norm() / outputs["plain"].norm()).item()
    print(f"guided DDIM step, {args.preset} + {preset.classifier}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"plain: {plain_s:.3f} s/step   fast: {fast_s:.3f} s/step   speed-up: {plain_s / fast_s:.2f}x   "
          f"relative error: {rel:.2e}")


if __name__ == "__main__":
    main()
