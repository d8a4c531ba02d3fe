"""Sampling subcommands: image_sample, classifier_sample, super_res_sample.

Each parses its flags (`cli.sample_flags`), builds one `SamplingJob` (`cli.sample_job`), and calls
`sampling.run.run`, the function the Python API and the demo call too, with the output folder claimed
(`sampling.resume.SampleFolder`): finished batches are kept as they complete, SIGINT/SIGTERM keep them
(one line with the command that resumes, exit 130/143), a full disk does the same (exit 1), a second run
on a live folder is refused, and a finished run is "nothing to do" unless --overwrite (`cli.resumable`,
shared with the editing commands).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
from pathlib import Path

import torch

from guided_diffusion.cli.resumable import check_out_dir, default_out_dir, run_claimed
from guided_diffusion.cli.sample_flags import build_parser
from guided_diffusion.cli.sample_job import Inputs, check_inputs, job_from_flags, resolve_flags, sampling_device
from guided_diffusion.config.presets import Preset
from guided_diffusion.config.resolve import typed_flags
from guided_diffusion.diffusion.stepping import NonFiniteSampleError
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.autocast import warn_if_bf16_is_slow
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.sampling.job import SamplingJob
from guided_diffusion.sampling.networks import check_fits
from guided_diffusion.sampling.resume import SampleFolder, choose_run_seed
from guided_diffusion.sampling.run import run

__all__ = ["image_sample", "classifier_sample", "super_res_sample", "build_parser", "Prepared", "prepare_job",
           "fetch_checkpoints"]

_build_parser = build_parser  # the name tests/helpers.py imports


@dataclasses.dataclass
class Prepared:
    """A command's checked job (seed 0 until `choose_seed`), its inputs, the presets whose checkpoints are
    still to fetch, the parsed flags and the flags a checkpoint's saved config filled."""

    job: SamplingJob
    inputs: Inputs
    to_fetch: dict[str, Preset]
    args: argparse.Namespace
    from_checkpoint: list[str]
    device: torch.device


def prepare_job(command: str, argv: list[str], parser: argparse.ArgumentParser | None = None) -> Prepared:
    """Flags -> a checked job: every check that needs no output folder (the files the flags name, their
    kind and fit, every setting) is done here, and nothing is written. `parser`: `build_parser(command)`
    with flags of its own (tune_steps)."""
    parser = parser or build_parser(command)
    args = parser.parse_args(argv)
    typed = typed_flags(parser, argv)
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise UserError("--resume continues a run and --overwrite starts it again: pass only one of them")
    resolution = resolve_flags(command, args, typed)
    check_out_dir(args.out_dir)
    inputs = check_inputs(command, resolution.flags)
    distributed.setup_dist()
    device = sampling_device(args.device)
    job = job_from_flags(command, resolution.flags, typed, device, seed=args.seed if args.seed is not None else 0,
                         inputs=inputs)
    for flag, config, kind in (("model_path", job.model, "superres" if job.is_upsampler else "diffusion"),
                               ("classifier_path", job.classifier, "classifier")):
        if config is not None and flag not in resolution.to_fetch:
            try:
                check_fits(config, resolution.flags[flag], kind)
            except UserError as exc:
                raise UserError(f"--{flag}: {exc}") from None
    if job.bf16 and distributed.is_main_process():
        warn_if_bf16_is_slow(device)
    return Prepared(job, inputs, resolution.to_fetch, args, resolution.from_checkpoint, device)


def fetch_checkpoints(job: SamplingJob, to_fetch: dict[str, Preset], progress: bool) -> SamplingJob:
    """The job with the presets' checkpoints fetched into the cache (downloaded when missing)."""
    from guided_diffusion.weights.fetch import fetch

    paths = {flag: str(fetch(preset, progress=progress)) for flag, preset in to_fetch.items()}
    return dataclasses.replace(job, model_path=paths.get("model_path", job.model_path),
                               classifier_path=paths.get("classifier_path", job.classifier_path))


def _sample(command: str, argv: list[str]) -> int:
    """Check everything, claim the output folder, then draw, keeping each batch as it finishes."""
    prepared = prepare_job(command, argv)
    args, inputs = prepared.args, prepared.inputs
    job = fetch_checkpoints(prepared.job, prepared.to_fetch, prepared.job.settings.progress)
    out_dir = Path(args.out_dir or default_out_dir())
    seed, chosen = choose_run_seed(args.seed, resume=args.resume, directory=out_dir, job=job)
    job = dataclasses.replace(job, seed=seed)
    folder = SampleFolder(out_dir, job, command=shlex.join(["guided-diffusion", command, *argv]))

    def draw() -> int:
        logs.configure(dir=str(out_dir))
        _log_start(job, prepared.from_checkpoint, chosen, folder)
        try:
            run(job, device=prepared.device, low_res=inputs.base[0] if inputs.base is not None else None,
                init_noise=inputs.init_noise[0] if inputs.init_noise is not None else None, folder=folder,
                progress=args.progress)
        except NonFiniteSampleError as exc:
            kept = f"; the {folder.resumed_count()} finished samples stay in {folder.store.directory}" if folder.store else ""
            raise UserError(f"sampling stopped: {exc} (try a smaller --classifier_scale/--cfg_scale, or "
                            f"--dynamic_threshold 0.995){kept}") from None
        if distributed.is_main_process():
            logs.log(f"saved {folder.npz_path} (grid {folder.grid_path.name}, settings {folder.record_path.name})")
        distributed.barrier()
        logs.log("sampling complete")
        return 0

    return run_claimed(command, argv, folder, draw, seed=seed, resume=args.resume, overwrite=args.overwrite)


def _log_start(job: SamplingJob, from_checkpoint: list[str], chosen: bool, folder: SampleFolder) -> None:
    if from_checkpoint:
        logs.log(f"flags from the checkpoint's saved config: {', '.join(from_checkpoint)}")
    if chosen:
        logs.log(f"seed: {job.seed} (pass --seed {job.seed} to draw the same samples again)")
    if folder.store is not None and folder.resumed_count():
        logs.log(f"resuming: {folder.resumed_count()} of {job.num_samples} samples already in {folder.store.directory}")
    verb = "upsampling" if job.is_upsampler else "sampling"
    levels = job.settings.steps or job.build_diffusion().num_timesteps  # with --steps: the un-respaced diffusion
    logs.log(f"{verb} {job.num_samples} images with {job.settings.sampler} ({levels} levels, "
             f"{job.settings.evaluations(levels)} model evaluations)...")


# The subcommands (`cli.SUBCOMMANDS` says what each does): one body, run under the command's name.
image_sample = functools.partial(_sample, "image_sample")
classifier_sample = functools.partial(_sample, "classifier_sample")
super_res_sample = functools.partial(_sample, "super_res_sample")
