"""Released checkpoints on disk: where a preset's file lives in the cache, and fetching it on first use."""
from __future__ import annotations

from pathlib import Path

from guided_diffusion.download import cache_dir
from guided_diffusion.errors import UserError
from guided_diffusion.presets import Preset, ensure_preset
from guided_diffusion.runtime import distributed

__all__ = ["checkpoint_path", "cache_state", "fetch"]


def checkpoint_path(preset: Preset) -> Path:
    """Where the preset's checkpoint is (or will be) cached."""
    return cache_dir() / preset.filename


def cache_state(preset: Preset) -> str:
    """'yes' when the checkpoint is cached, 'partial' when an interrupted download can resume, else 'no'."""
    path = checkpoint_path(preset)
    if path.is_file():
        return "yes"
    return "partial" if path.with_name(path.name + ".part").is_file() else "no"


def fetch(preset: Preset, *, progress: bool = True) -> Path:
    """The local checkpoint of `preset`, downloaded into the cache first when missing.

    With several ranks only rank 0 downloads; the others wait at a barrier and then use the file.
    """
    path = checkpoint_path(preset)
    failure: UserError | None = None
    if distributed.is_main_process():
        try:  # downloads when missing (size, sha256 and layout checked); else checks the recorded sha256
            ensure_preset(preset, progress=progress)
        except UserError as exc:  # reach the barrier first, so the other ranks do not wait forever
            failure = exc
    distributed.barrier()
    if failure is not None:
        raise failure
    if not path.is_file():
        raise UserError(f"checkpoint for preset {preset.name!r} is missing at {path}: run `guided-diffusion download {preset.name}`")
    return path
