"""`guided-diffusion tune_steps`: a step grid tuned for one model, classifier, scale and sampler.

Takes classifier_sample's flags (the model, the classifier, --classifier_scale, the guidance and solver
options) plus --sampler, --steps K and --out FILE.json, and writes the K levels that bring that sampler
closest to a fine reference solution of the same guided ODE on warm-up noise of its own
(`sampling.tuning.tune_grid`). Sample on it with `--steps K --step_grid FILE.json`.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np

from guided_diffusion.cli import flag_message
from guided_diffusion.cli.sample import fetch_checkpoints, prepare_job
from guided_diffusion.cli.sample_flags import build_parser
from guided_diffusion.diffusion.grids import grid_file_document
from guided_diffusion.runtime.atomic import atomic_write_bytes, directory_write_problem
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import mix_seed, random_labels
from guided_diffusion.sampling.networks import guidance_for, load_networks
from guided_diffusion.sampling.samplers import SAMPLERS
from guided_diffusion.sampling.tuning import WARMUP_STREAM, tune_grid, tuning_reference

__all__ = ["tune_steps"]

COMMAND = "classifier_sample"  # whose flags tune_steps takes


def tune_steps(argv: list[str]) -> int:
    """Tune a grid and write it to --out; one line per stage, the result and the command to use it."""
    parser = build_parser(COMMAND)
    parser.prog = "guided-diffusion tune_steps"
    parser.description = ("Tune the --steps levels of --sampler for this model, classifier and scale against a fine "
                          "reference solution (classifier_sample's flags, plus the ones below).")
    group = parser.add_argument_group("tuning")
    group.add_argument("--out", required=True, metavar="FILE.json", help="where to write the grid")
    group.add_argument("--warmup", type=int, default=256,
                       help="warm-up samples (their own seed stream, never the samples you draw) (default: 256)")
    group.add_argument("--reference_steps", type=int, default=250,
                       help="levels of the reference DDIM solution on the karras grid (default: 250)")
    group.add_argument("--max_trials", type=int, default=200,
                       help="runs of the sampler while refining the grid (default: 200)")
    prepared = prepare_job(COMMAND, argv, parser)  # checks every flag and file; writes nothing
    args = prepared.args
    if args.steps is None:
        raise UserError("pass --steps K: the number of levels to tune")
    if args.sampler is None:
        raise UserError("pass --sampler NAME: the deterministic sampler to tune the grid for ("
                        + ", ".join(name for name, s in SAMPLERS.items() if not s.spec.stochastic) + ")")
    if args.step_grid is not None:
        raise UserError("--step_grid does not apply: tune_steps finds the grid (it starts at --sigma_max, or 80)")
    out = Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out {out} must end in .json (it is a grid file for --step_grid)")
    problem = directory_write_problem(out.parent if str(out.parent) else ".")
    if problem is not None:
        raise UserError(f"--out {out}: {problem}; choose another path")
    for name, value, low in (("warmup", args.warmup, 1), ("reference_steps", args.reference_steps, 10),
                             ("max_trials", args.max_trials, 1)):
        if value < low:
            raise UserError(f"--{name} must be at least {low}, got {value}")
    device = prepared.device
    seed = args.seed if args.seed is not None else 0
    job = prepared.job
    if args.reference_steps <= args.steps:
        raise UserError(f"--reference_steps ({args.reference_steps}) must exceed --steps ({args.steps})")
    job = fetch_checkpoints(job, prepared.to_fetch, job.settings.progress)
    begin = time.perf_counter()

    def say(text: str) -> None:
        print(f"tune_steps [{time.perf_counter() - begin:5.0f} s]: {text}", flush=True)

    say(f"loading {job.model_path} and {job.classifier_path}")
    model_fn, cond_fn = guidance_for(job, load_networks(job, device))
    fixed = job.class_labels
    label_seed = mix_seed(seed, WARMUP_STREAM, 1)

    def labels(indices: list[int]) -> np.ndarray | None:
        if not job.with_labels:
            return None
        if fixed:
            return np.array([fixed[i % len(fixed)] for i in indices], dtype=np.int64)
        return random_labels(label_seed, indices, job.model.num_classes)

    try:
        diffusion = job.build_diffusion()
        reference = tuning_reference(model_fn, diffusion, image_shape=job.image_shape, cond_fn=cond_fn, labels=labels,
                                     settings=job.settings, warmup=args.warmup, seed=seed,
                                     reference_levels=args.reference_steps, device=device, log=say)
        result = tune_grid(model_fn, diffusion, reference, sampler=job.settings.sampler, levels=args.steps,
                           max_trials=args.max_trials, log=say)
    except SettingError as exc:
        raise UserError(flag_message(exc)) from None
    document = grid_file_document(
        result.sigmas, sampler=job.settings.sampler, classifier_scale=job.classifier_scale,
        guidance_interval=job.settings.guidance_interval, guidance_schedule=job.settings.guidance_schedule,
        guidance_scaling=job.settings.guidance_scaling, model_path=job.model_path,
        classifier_path=job.classifier_path, warmup=args.warmup, warmup_seed=seed,
        reference=f"ddim, {args.reference_steps} karras levels", distance=round(result.distance, 4),
        start_distance=round(result.start_distance, 4), trials=result.trials,
        model_evaluations=result.evaluations, command=shlex.join(["guided-diffusion", "tune_steps", *argv]),
    )
    atomic_write_bytes(out, (json.dumps(document, indent=1) + "\n").encode())
    levels = ", ".join(f"{s:.3g}" for s in result.sigmas)
    say(f"{job.settings.sampler} on {args.steps} levels ({levels}): RMS to the reference on the warm-up samples "
        f"{result.start_distance:.2f} (dynamic programme) -> {result.distance:.2f}; wrote {out}")
    print(f"sample on it with: --sampler {job.settings.sampler} --steps {args.steps} --step_grid {shlex.quote(str(out))}")
    return 0
