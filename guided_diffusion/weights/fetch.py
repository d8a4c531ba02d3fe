"""Released checkpoints on disk: where a preset's file lives in the cache, and fetching it on first use."""
from __future__ import annotations

import os
from pathlib import Path

from guided_diffusion.config.presets import MIRROR_ENV, Preset, release_base_url
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.download import cache_dir, download, recorded_sha256, verify_installed
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights.checkpoints import check_preset_file, mark_intact

__all__ = ["checkpoint_path", "cache_state", "ensure_preset", "fetch"]


def checkpoint_path(preset: Preset) -> Path:
    """Where the preset's checkpoint is (or will be) cached."""
    return cache_dir() / preset.filename


def cache_state(preset: Preset) -> str:
    """'yes' when the checkpoint is cached, 'partial' when an interrupted download can resume, else 'no'."""
    path = checkpoint_path(preset)
    if path.is_file():
        return "yes"
    return "partial" if path.with_name(path.name + ".part").is_file() else "no"


def ensure_preset(preset: Preset, *, progress: bool = True, verify: bool = False) -> Path:
    """The cached file of `preset`, downloaded (size-, hash- and layout-checked) when missing. An
    installed file is checked against the table's sha256, or the one recorded at its install, on
    every call; `verify` also re-checks its layout. A file placed by hand is layout-checked once,
    then its sha256 is recorded. This process alone: `fetch` coordinates ranks."""
    path = checkpoint_path(preset)
    if path.is_file():
        first_use = preset.sha256 is None and recorded_sha256(path) is None
        if verify or first_use:
            check_preset_file(preset, path)
        mark_intact(path, verify_installed(path, preset.sha256))  # loading it next need not hash it again
        return path
    try:
        download(preset.url, path, sha256=preset.sha256, progress=progress,
                 validate=lambda part: check_preset_file(preset, part))
    except UserError as exc:
        if os.environ.get(MIRROR_ENV, "").strip():
            raise UserError(f"{exc} (the file was asked from the mirror {MIRROR_ENV}={release_base_url()})") from None
        raise UserError(f"{exc}; or set {MIRROR_ENV}=URL to fetch URL/{preset.filename} from a mirror") from None
    recorded = recorded_sha256(path)
    if recorded is not None:  # hashed while installing
        mark_intact(path, recorded)
    return path


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
