"""Command-line entry point: `guided-diffusion NAME [FLAGS]` dispatches to one subcommand module.

`SUBCOMMANDS` maps each name to a function `f(argv: list[str]) -> int` in a module of this package
(several subcommands may share a module); modules are imported lazily so `guided-diffusion presets`
does not pay for importing the training stack. Bad input surfaces here as one line and exit code 2.
"""
from __future__ import annotations

import importlib
import sys
import warnings

from guided_diffusion.runtime.errors import SettingError, UserError

# name -> ("module", "function", one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "image_sample": ("guided_diffusion.cli.sample", "image_sample", "sample a diffusion model (DDPM/DDIM/DPM-Solver++)"),
    "classifier_sample": ("guided_diffusion.cli.sample", "classifier_sample", "sample with classifier guidance"),
    "super_res_sample": ("guided_diffusion.cli.sample", "super_res_sample", "upsample base samples with an SR model"),
    "image_nll": ("guided_diffusion.cli.nll", "image_nll", "bits/dim of a model on an image folder"),
    "presets": ("guided_diffusion.cli.presets", "presets", "list the released checkpoints and whether they are cached"),
    "download": ("guided_diffusion.cli.presets", "download", "download released checkpoints into the cache"),
    "image_train": ("guided_diffusion.cli.train", "image_train", "train a diffusion model on an image folder"),
    "classifier_train": ("guided_diffusion.cli.train", "classifier_train", "train a noisy classifier for guidance"),
    "super_res_train": ("guided_diffusion.cli.train", "super_res_train", "train a super-resolution diffusion model"),
    "report": ("guided_diffusion.cli.report", "main", "report.md and plots (loss, lr, samples, FID over time) of a training run"),
    "evaluate": ("guided_diffusion.cli.evaluate", "main", "FID, sFID, IS, precision and recall of two npz batches"),
    "demo": ("guided_diffusion.cli.demo", "main", "train, guide, sample and evaluate on scikit-learn digits (CPU, minutes)"),
    "invert": ("guided_diffusion.cli.edit", "invert", "DDIM inversion of images to noise (latents.npz), with the round-trip PSNR"),
    "img2img": ("guided_diffusion.cli.edit", "img2img", "SDEdit: re-sample images from part-way noise, optionally guided to a class"),
    "inpaint": ("guided_diffusion.cli.edit", "inpaint", "fill masked pixels (RePaint or DPS); kept pixels unchanged"),
    "restore": ("guided_diffusion.cli.edit", "restore", "posterior sampling from a measurement: inpaint, super_res, deblur"),
    "make_inputs": ("guided_diffusion.cli.make_inputs", "main", "example inputs for the editing commands: digits, a mask, 4x4 and blurred copies"),
    "tune_steps": ("guided_diffusion.cli.tune", "tune_steps",
                   "tune a step grid for a model, classifier, scale and sampler (use it with --step_grid FILE.json)"),
}


def _usage() -> str:
    lines = ["usage: guided-diffusion NAME [FLAGS]   (or: python -m guided_diffusion NAME [FLAGS])", "", "subcommands:"]
    for name, (_, _, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<18} {text}")
    lines.append("")
    lines.append("Hyphenated names (image-sample) work too. `guided-diffusion NAME --help` lists a subcommand's flags; "
                 "`guided-diffusion --version` prints the version.")
    return "\n".join(lines)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def flag_message(exc: UserError, flag_of_setting: dict[str, str] | None = None) -> str:
    """The one-line message for bad input. A SettingError speaks of the flag that sets it (`--<setting>`
    unless `flag_of_setting` names another): a message that opens with the setting's name opens with the
    flag instead ("--image_size 10 cannot be halved ..."), any other is prefixed by it. Other errors are
    already in flag terms."""
    if not isinstance(exc, SettingError):
        return str(exc)
    flag = (flag_of_setting or {}).get(exc.setting, f"--{exc.setting}")
    text = str(exc)
    if text.startswith(exc.setting) and text[len(exc.setting):][:1] in (" ", ":", "="):
        return flag + text[len(exc.setting):]
    return f"{flag}: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from guided_diffusion import __version__

        print(f"guided-diffusion {__version__}")
        return 0
    name = argv[0].replace("-", "_")
    if name not in SUBCOMMANDS:
        print(f"guided-diffusion: unknown subcommand {argv[0]!r}; choose one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        with warnings.catch_warnings():  # a library warning reads as one line here, not file:line plus source
            warnings.showwarning = _one_line_warning
            result = func(argv[1:])
    except UserError as exc:  # bad input: one line, no traceback
        print(f"error: {flag_message(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)
