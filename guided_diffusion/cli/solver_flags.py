"""The sampler flags every sampling and editing command shares, built from the sampler registry.

`--sampler` offers `SAMPLERS`; each option a registered sampler declares becomes one flag (`--eta`,
`--order`, ...) whose help says which samplers read it and their defaults; a flag given for a sampler that
does not read it is refused by `SamplerSettings` (one line naming the flag). Adding a sampler adds its
flags here without an edit.
"""
from __future__ import annotations

import argparse
from typing import Any

from guided_diffusion.diffusion.grids import DEFAULT_GRID, GRIDS
from guided_diffusion.sampling.guidance import GUIDANCE_SCALINGS, GUIDANCE_SCHEDULES
from guided_diffusion.sampling.registry import Option
from guided_diffusion.sampling.samplers import SAMPLERS

__all__ = ["add_grid_flags", "add_sampler_flags", "add_guidance_steering_flags", "sampler_help", "solver_options", "interval",
           "OPTION_FLAGS", "GRID_FLAGS", "STEERING_FLAGS"]


def _options_by_name() -> dict[str, list[tuple[str, Option]]]:
    found: dict[str, list[tuple[str, Option]]] = {}
    for name, sampler in SAMPLERS.items():
        for option in sampler.spec.options:
            found.setdefault(option.name, []).append((name, option))
    return found


# Every solver option's flag name, in registry order.
OPTION_FLAGS: tuple[str, ...] = tuple(_options_by_name())
GRID_FLAGS = ("step_grid", "sigma_min", "sigma_max")
STEERING_FLAGS = ("guidance_interval", "guidance_schedule", "guidance_scaling", "cfg_interval")


def sampler_help(default: str) -> str:
    """The --sampler help: every registered sampler with its summary and evaluations per level."""
    parts = []
    for name, sampler in SAMPLERS.items():
        per_level = sampler.evaluations(10) / 10
        cost = "" if per_level == 1 else f"; ~{per_level:g} model evaluations per level"
        parts.append(f"{name}: {sampler.spec.summary}{cost}")
    return f"sampler (default {default}). " + ". ".join(parts)


def interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two numbers, e.g. 0,600)") from None
    return lo, hi


def add_grid_flags(group: argparse._ActionsContainer, *, steps_default: int | None = None) -> None:
    """--steps, --step_grid, --sigma_min and --sigma_max."""
    steps_help = ("sample on a grid of N noise levels (see --step_grid) of the trained schedule"
                  + ("" if steps_default is not None else "; --timestep_respacing keeps the original respacing instead"))
    group.add_argument("--steps", type=int, default=steps_default, help=steps_help)
    group.add_argument("--step_grid", default=None, metavar="KIND|FILE.json",
                       help=f"how --steps places its levels: {', '.join(GRIDS)} (default: {DEFAULT_GRID}), or a grid "
                            "file written by `guided-diffusion tune_steps` (--steps must then equal its levels)")
    group.add_argument("--sigma_min", type=float, default=None,
                       help="smallest noise level (VE sigma) of a karras/logsnr grid (default: the model's schedule)")
    group.add_argument("--sigma_max", type=float, default=None,
                       help="largest noise level of a karras/logsnr grid (default: min(80, the model's))")


def add_sampler_flags(group: argparse._ActionsContainer, *, default: str | None, default_text: str) -> None:
    """--sampler and one flag per registered solver option."""
    group.add_argument("--sampler", choices=list(SAMPLERS), default=default, metavar="NAME",
                       help=sampler_help(default_text))
    for name, readers in _options_by_name().items():
        first = readers[0][1]
        described = "; ".join(f"{sampler}: {option.help} (default {option.default:g})" for sampler, option in readers)
        group.add_argument(f"--{name}", type=int if first.integral else float, default=None, help=described)


def add_guidance_steering_flags(group: argparse._ActionsContainer, *, classifier: bool = True) -> None:
    """--guidance_interval, --guidance_schedule, --guidance_scaling (classifier guidance) and --cfg_interval."""
    if classifier:
        group.add_argument("--guidance_interval", type=interval, default=None, metavar="LO,HI",
                           help="classifier guidance only at original timesteps LO <= t <= HI (the classifier is not "
                                "run outside)")
        group.add_argument("--guidance_schedule", choices=list(GUIDANCE_SCHEDULES), default=None,
                           help="classifier scale over t: constant (default), linear or cosine")
        group.add_argument("--guidance_scaling", choices=list(GUIDANCE_SCALINGS), default=None,
                           help="none (default), or entropy: scale each sample's classifier gradient by "
                                "log(classes) / entropy of the classifier's prediction (EDS, Zheng et al. 2022)")
    group.add_argument("--cfg_interval", type=interval, default=None, metavar="LO,HI",
                       help="classifier-free guidance only at timesteps LO <= t <= HI")


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplerSettings keywords the flags give: grid, steering and solver options that were passed."""
    names = (*GRID_FLAGS, *STEERING_FLAGS, *OPTION_FLAGS)
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
