"""`guided-diffusion presets` and `download`: the released checkpoints, their cache and fetching them."""
from __future__ import annotations

import math

from guided_diffusion.cli.parsing import OneLineParser, add_progress_flag, progress_enabled
from guided_diffusion.config.presets import Preset
from guided_diffusion.runtime.errors import UserError

__all__ = ["presets", "download"]


def _human_size(size: int | None) -> str:
    if not size:
        return "?"
    exponent = min(int(math.log(size, 1024)), 4)
    return f"{size / 1024**exponent:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"


def _verified_state(preset: Preset) -> str:
    """Re-hash a cached checkpoint and re-check its layout: 'verified', or 'BAD: reason'."""
    from guided_diffusion.weights.fetch import checkpoint_path, ensure_preset

    if not checkpoint_path(preset).is_file():
        return "no"
    try:
        ensure_preset(preset, progress=False, verify=True)
    except UserError as exc:
        return f"BAD: {exc}"
    return "verified"


def presets(argv: list[str]) -> int:
    """`guided-diffusion presets [--verify]`: the released checkpoints, and whether each is in the cache."""
    from guided_diffusion.config.presets import PRESETS
    from guided_diffusion.runtime.download import cache_dir
    from guided_diffusion.weights.fetch import cache_state

    parser = OneLineParser(prog="guided-diffusion presets", description="List the released checkpoints usable with --preset NAME.")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash every cached checkpoint against its recorded sha256 and re-check its layout")
    parser.add_argument("--training", action="store_true",
                        help="print the released models' training recipes instead (batch, lr, iterations, flags)")
    args = parser.parse_args(argv)
    if args.training:
        from guided_diffusion.training.recipes import recipes_text

        print(recipes_text())
        return 0
    rows = [("name", "kind", "resolution", "size", "cached")]
    problems = []
    for preset in PRESETS.values():
        state = cache_state(preset)
        if args.verify and state == "yes":
            state = _verified_state(preset)
            if state.startswith("BAD"):
                problems.append(f"{preset.name}: {state[5:]}")
                state = "BAD"
        rows.append((preset.name, preset.kind, str(preset.resolution), _human_size(preset.size_bytes), state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ncache: {cache_dir()} (set GUIDED_DIFFUSION_CACHE to move it); fetch with `guided-diffusion download NAME`")
    if problems:
        raise UserError(f"{len(problems)} cached checkpoint(s) failed verification: " + "; ".join(problems))
    return 0


def download(argv: list[str]) -> int:
    """`guided-diffusion download NAME... | --all [--verify]`: fetch released checkpoints into the cache."""
    from guided_diffusion.config.presets import PRESETS, get_preset
    from guided_diffusion.weights.fetch import ensure_preset

    parser = OneLineParser(prog="guided-diffusion download",
                           description="Download released checkpoints into the cache (resumable, "
                                                 "checked by size, sha256 and layout). Set GUIDED_DIFFUSION_MIRROR=URL "
                                                 "to fetch URL/FILENAME instead of the release host.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="preset names (see `guided-diffusion presets`)")
    parser.add_argument("--all", action="store_true", help="download every released checkpoint")
    parser.add_argument("--verify", action="store_true",
                        help="also re-hash checkpoints already cached and re-check their layout")
    add_progress_flag(parser)
    args = parser.parse_args(argv)
    if not args.names and not args.all:
        raise UserError("name the checkpoints to download (see `guided-diffusion presets`), or pass --all")
    chosen = list(PRESETS.values()) if args.all else [get_preset(name) for name in args.names]
    progress = progress_enabled(args.progress)
    for preset in chosen:
        path = ensure_preset(preset, progress=progress, verify=args.verify)
        print(f"{preset.name}: {path}" + (" (verified)" if args.verify else ""))
    return 0
