"""`guided-diffusion image_nll`: bits/dim of a diffusion model on an image folder, with per-timestep terms.

The flags are the original scripts/image_nll.py's (`cli.sample_flags`) plus --label_mode; the images are
read as training reads them (class sub-folders or CLASS_ prefixes, the run's classes.json beside the
checkpoint when there is one) and the loop is `evaluation.nll.bits_per_dim`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from guided_diffusion.cli.parsing import progress_enabled
from guided_diffusion.cli.resumable import check_out_dir
from guided_diffusion.cli.sample_flags import build_parser
from guided_diffusion.cli.sample_job import flag_error, precision, resolve_flags, sampling_device
from guided_diffusion.config import DiffusionConfig, ModelConfig
from guided_diffusion.config.resolve import typed_flags
from guided_diffusion.data.files import list_image_files
from guided_diffusion.data.stream import ImageStream, StreamSpec
from guided_diffusion.evaluation.nll import TERMS, bits_per_dim, nll_class_map
from guided_diffusion.runtime import distributed, logs
from guided_diffusion.runtime.autocast import warn_if_bf16_is_slow
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.sampling.guidance import GuidedModel
from guided_diffusion.sampling.job import check_counts
from guided_diffusion.sampling.networks import check_fits, load_network
from guided_diffusion.sampling.output import save_npz

__all__ = ["image_nll"]


def image_nll(argv: list[str]) -> int:
    """`guided-diffusion image_nll`: bits/dim of a model on an image folder, with per-timestep terms."""
    parser = build_parser("image_nll")
    args = parser.parse_args(argv)
    typed = typed_flags(parser, argv)
    resolution = resolve_flags("image_nll", args, typed)
    flags = resolution.flags
    check_out_dir(args.out_dir)
    try:
        check_counts(num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed)
    except SettingError as exc:
        raise flag_error("image_nll", exc) from None
    if not args.data_dir:
        raise UserError("pass --data_dir DIR: the images to evaluate")
    paths = list_image_files(args.data_dir)
    progress = progress_enabled(args.progress)
    distributed.setup_dist()
    device = sampling_device(args.device)
    try:
        model_config = ModelConfig.from_flags(flags).replace(use_fp16=precision(flags, device)["use_fp16"])
        model_config.validate()
        diffusion = DiffusionConfig.from_flags(flags).build()
    except SettingError as exc:
        raise flag_error("image_nll", exc) from None
    class_map = nll_class_map(paths, args.data_dir, flags["model_path"], args.label_mode) if model_config.class_cond else None
    spec = StreamSpec(data_dir=args.data_dir, batch_size=args.batch_size, image_size=model_config.image_size,
                      class_cond=model_config.class_cond, deterministic=True, random_flip=args.random_flip,
                      label_mode=args.label_mode, seed=0)
    stream = ImageStream(spec, class_map, paths=paths)  # checks the images and their labels before any output
    if "model_path" not in resolution.to_fetch:
        check_fits(model_config, flags["model_path"], "diffusion")
    if args.bf16 and distributed.is_main_process():
        warn_if_bf16_is_slow(device)
    model_path = flags["model_path"]
    if "model_path" in resolution.to_fetch:
        from guided_diffusion.weights.fetch import fetch

        model_path = str(fetch(resolution.to_fetch["model_path"], progress=progress))

    logs.configure(dir=args.out_dir)
    if args.seed is not None:
        torch.manual_seed(args.seed + distributed.get_rank())
    logs.log("creating model and diffusion...")
    model = load_network(model_config, model_path, device, channels_last=args.channels_last, bf16=args.bf16)
    model_fn = GuidedModel(model, class_cond=model_config.class_cond,
                           autocast_dtype=torch.bfloat16 if args.bf16 else None)
    if class_map is not None:
        source = "sub-folders" if class_map.label_mode == "folder" else "file-name prefixes"
        logs.log(f"{len(paths)} images in {len(class_map.names)} classes (labels from {source})")
    batches = ((batch.images, {"y": batch.labels} if model_config.class_cond else {}) for batch in stream)
    logs.log("evaluating...")
    result = bits_per_dim(model_fn, diffusion, batches, num_samples=args.num_samples, device=device,
                          clip_denoised=args.clip_denoised, progress=progress,
                          on_batch=lambda done, bpd: logs.log(f"done {done} samples: bpd={bpd}"))
    stream.close()
    if distributed.is_main_process():
        for name in TERMS:
            out_path = Path(logs.get_dir()) / f"{name}_terms.npz"
            logs.log(f"saving {name} terms to {out_path}")
            save_npz(out_path, result.terms[name])
        print(f"bits/dim: {result.bits_per_dim:.6f} over {result.count} images")
    distributed.barrier()
    logs.log("evaluation complete")
    return 0
