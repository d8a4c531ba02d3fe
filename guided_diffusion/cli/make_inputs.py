"""`guided-diffusion make_inputs`: the example inputs of the editing commands, from the demo's held-out digits.

Writes into --out_dir the files the editing commands of docs/editing.md take: digits.npz (held-out digits of
scikit-learn's 8x8 set, never trained on by `guided-diffusion demo`, with their labels), top_half.png (a
mask keeping the top half), small_4x4.npz (the digits box-downsampled by 2) and blurred.npz (blurred by a
Gaussian of sigma 1). The same digits every time; files already holding them are left as they are.
"""
from __future__ import annotations

import numpy as np

from guided_diffusion.cli import flag_message
from guided_diffusion.cli.parsing import OneLineParser
from guided_diffusion.editing.inputs import EXAMPLE_FILES, write_example_inputs
from guided_diffusion.runtime.atomic import directory_write_problem
from guided_diffusion.runtime.errors import SettingError, UserError

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="guided-diffusion make_inputs", description=" ".join(__doc__.split("\n\n")[1].split()))
    parser.add_argument("--out_dir", default="editing_inputs", help="where the files go")
    parser.add_argument("--num_images", type=int, default=64,
                        help="held-out digits to write, spread over the split so every class is there (0 = all 359)")
    parser.add_argument("--overwrite", action="store_true", help="replace files of these names that hold something else")
    args = parser.parse_args(argv)
    if args.num_images < 0:
        raise UserError(f"--num_images must be >= 0, got {args.num_images}")
    problem = directory_write_problem(args.out_dir)
    if problem is not None:
        raise UserError(f"--out_dir {args.out_dir}: {problem}; choose another folder")
    from guided_diffusion.demo.data import load_digits_dataset

    digits = load_digits_dataset()
    images, labels = digits.subset(digits.test)
    if 0 < args.num_images < len(images):
        pick = np.linspace(0, len(images) - 1, args.num_images).round().astype(np.int64)
        images, labels = images[pick], labels[pick]
    try:
        written = write_example_inputs(args.out_dir, images, labels, overwrite=args.overwrite)
    except SettingError as exc:
        raise UserError(flag_message(exc)) from None
    for name, what in EXAMPLE_FILES.items():
        state = "written" if name in written else "already there"
        print(f"{args.out_dir}/{name}: {what} ({state})")
    print(f"{len(images)} held-out digits (8x8); edit them with the models of `guided-diffusion demo` (see docs/editing.md)")
    return 0
