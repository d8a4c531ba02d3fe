"""One classifier-guided DDIM step (UNet forward + classifier gradient) on a released architecture with
random weights: the plain path against each fast-path lever, in one process, on the same weights and inputs.

plain: the original's arithmetic and host work: explicit-math attention, schedule arrays re-uploaded from
NumPy at every lookup, the timestep map rebuilt at every model call. Then, cumulatively: the package's
default (SDPA attention, device-cached schedule), + channels-last, + torch.compile (opt-in, --compile).

    python benchmarks/bench_guided_ddim_step.py                      # 64x64 ADM + classifier, batch 4
    python benchmarks/bench_guided_ddim_step.py --preset 256x256_diffusion --batch 1
    python benchmarks/bench_guided_ddim_step.py --unguided --compile
"""
from __future__ import annotations

import argparse
import copy

import torch
from common import released_network, report, time_paths

from guided_diffusion.config import DiffusionConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.diffusion.gaussian import _extract_into_tensor
from guided_diffusion.diffusion.respace import SpacedDiffusion, _WrappedModel
from guided_diffusion.diffusion.schedules import get_named_beta_schedule
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.runtime.performance import optimize_model
from guided_diffusion.sampling.guidance import classifier_cond_fn


class PlainDiffusion(SpacedDiffusion):
    """The original's per-step host work: NumPy uploads per lookup, a new timestep map per call."""

    def _extract(self, name, t, shape):
        return _extract_into_tensor(getattr(self, name), t, shape)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="64x64_diffusion")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unguided", action="store_true", help="model forward only, no classifier gradient")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    preset = PRESETS[args.preset]
    model_cfg, model = released_network(args.preset, 0)
    _, classifier = released_network(preset.classifier, 1)
    model, classifier = model.to(device), classifier.to(device)
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
    x = torch.randn(args.batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
    t = torch.full((args.batch,), 12, dtype=torch.long, device=device)

    def step(diffusion, unet, clf):
        cond_fn = None if args.unguided else classifier_cond_fn(clf, preset.classifier_scale)

        @torch.no_grad()  # as in the sampling loops; cond_fn enables gradients for the classifier only
        def run():
            return diffusion.ddim_sample(unet, x, t, cond_fn=cond_fn, model_kwargs={"y": y})["sample"]
        return run

    def plain_step():
        with attention_backend("math"):
            return step(plain, model, classifier)()

    cl_model = optimize_model(copy.deepcopy(model), channels_last=True)
    cl_classifier = optimize_model(copy.deepcopy(classifier), channels_last=True)
    paths = {
        "plain (original arithmetic)": plain_step,
        "default (SDPA, cached schedule)": step(fast, model, classifier),
        "+ channels_last": step(fast, cl_model, cl_classifier),
    }
    if args.compile:
        paths["+ channels_last + torch.compile"] = step(
            fast, optimize_model(cl_model, compile=True), optimize_model(cl_classifier, compile=True))
    seconds, outputs = time_paths(paths, args.repeats, sync)
    kind = "unguided" if args.unguided else f"guided (scale {preset.classifier_scale})"
    report(f"{kind} DDIM step, {args.preset} + {preset.classifier}, batch {args.batch}", seconds, outputs,
           "plain (original arithmetic)", args.batch)


if __name__ == "__main__":
    main()
