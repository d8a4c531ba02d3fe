"""Training checkpoints: the original file names plus a training-state file that makes a
checkpoint complete and verifiable.

A checkpoint at step S in a run directory is

* `modelSSSSSS.pt`, `ema_RATE_SSSSSS.pt` (one per EMA rate), `optSSSSSS.pt`: plain state dicts as
  the original writes them, so released tooling keeps working;
* `train_stateSSSSSS.pt`, written last: step, loss scale, schedule-sampler history, every rank's
  RNG states, data position, and the size and sha256 of each file above.

Every file is written atomically, so a crash leaves whole files only; the state file marks the set
complete, and its digests reveal later corruption. Loading needs no collective: every rank reads
the files itself.
"""
from __future__ import annotations

import os
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.runtime.atomic import atomic_torch_save, file_digest
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.weights.checkpoints import load_state_dict, mark_intact, read_tensor_file

STATE_FORMAT = 1
_MODEL_RE = re.compile(r"^model(\d+)\.pt$")
_STATE_RE = re.compile(r"^train_state(\d+)\.pt$")
_STEP_IN_NAME_RE = re.compile(r"^(?:model|opt|train_state|ema_[^_]+_)(\d+)\.(?:pt|safetensors)$")


def model_name(step: int) -> str:
    return f"model{step:06d}.pt"


def ema_name(rate: float | str, step: int) -> str:
    return f"ema_{rate}_{step:06d}.pt"


def opt_name(step: int) -> str:
    return f"opt{step:06d}.pt"


def state_name(step: int) -> str:
    return f"train_state{step:06d}.pt"


def parse_resume_step_from_filename(filename: str | os.PathLike) -> int:
    """The step in a checkpoint file name (`model000100.pt` -> 100, also `ema_0.9999_000100.pt`
    and `opt000100.pt`); 0 when the name has none. Only the base name is looked at."""
    match = _STEP_IN_NAME_RE.match(os.path.basename(str(filename)))
    return int(match.group(1)) if match else 0


@dataclass
class ResumePoint:
    """Where a run continues from: a step and the files found for it."""

    directory: Path
    step: int
    model: Path
    opt: Path | None
    emas: dict[str, Path] = field(default_factory=dict)
    state: dict[str, Any] | None = None  # the training-state file's contents, when there is one

    def describe(self) -> str:
        kind = (
            "exact resume" if self.state is not None
            else "weights only: no training-state file, so loss scale, sampler, RNG and data order start fresh"
        )
        return f"resuming from {self.model} at step {self.step} ({kind})"


def save_checkpoint_files(
    directory: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    opt_state: dict[str, Any],
    ema_states: dict[str, dict[str, torch.Tensor]],
    train_state: dict[str, Any],
) -> Path:
    """Write one checkpoint set atomically (state file last); returns the state file's path."""
    directory = Path(directory)
    manifest: dict[str, dict[str, Any]] = {}

    def write(name: str, obj: Any) -> None:
        size, digest = atomic_torch_save(obj, directory / name)
        manifest[name] = {"size": size, "sha256": digest}

    try:
        write(model_name(step), model_state)
        for rate, state in ema_states.items():
            write(ema_name(rate, step), state)
        write(opt_name(step), opt_state)
        record = dict(train_state)
        record.update(format=STATE_FORMAT, step=step, files=manifest, ema_rates=list(ema_states))
        path = directory / state_name(step)
        atomic_torch_save(record, path)
    except Exception:
        # A set without its state file is never resumed from; its files would only take the space a
        # full disk lacks. (Not on KeyboardInterrupt: a stop mid-save leaves them to the next prune.)
        for name in manifest:
            (directory / name).unlink(missing_ok=True)
        raise
    return path


def _load_state_record(path: Path) -> dict[str, Any]:
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        raise ValueError("not a training-state file of this format")
    return record


def verify_checkpoint(directory: Path, step: int, check_digests: bool = True) -> tuple[dict[str, Any] | None, str]:
    """(state record, "") when the set at `step` is complete and intact, else (None, reason)."""
    path = directory / state_name(step)
    if not path.is_file():
        return None, f"{state_name(step)} is missing (the save did not finish)"
    try:
        record = _load_state_record(path)
    except Exception as exc:
        return None, f"{state_name(step)} is unreadable ({type(exc).__name__})"
    for name, expected in record["files"].items():
        file = directory / name
        if not file.is_file():
            return None, f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return None, f"{name} has {file.stat().st_size} bytes, {expected['size']} were written"
        if check_digests:
            if file_digest(file)[1] != expected["sha256"]:
                return None, f"{name} does not match its recorded sha256 (corrupt)"
            mark_intact(file, expected["sha256"])  # so loading it next does not hash it a second time
    return record, ""


def _steps_with(directory: Path, pattern: re.Pattern) -> list[int]:
    return sorted({int(m.group(1)) for entry in directory.iterdir() if (m := pattern.match(entry.name))}, reverse=True)


def find_latest_checkpoint(directory: str | os.PathLike, log=print) -> ResumePoint | None:
    """The newest complete checkpoint in `directory` (None when there is none). Incomplete or
    corrupt sets are passed over with a message. Directories written by the original code (no
    training-state files) resume from their newest loadable `modelNNNNNN.pt`."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    state_steps = _steps_with(directory, _STATE_RE)
    model_steps = _steps_with(directory, _MODEL_RE)
    if state_steps or not model_steps:
        for step in sorted(set(state_steps) | set(model_steps), reverse=True):
            record, reason = verify_checkpoint(directory, step)
            if record is not None:
                return _point_from_record(directory, step, record)
            log(f"checkpoint at step {step} in {directory} is incomplete or corrupt ({reason}); trying the previous one")
        return None
    for step in model_steps:  # a run of the original code: no completeness marker, so try to load
        try:
            torch.load(directory / model_name(step), map_location="cpu", weights_only=True)
        except Exception as exc:
            log(f"{model_name(step)} in {directory} cannot be loaded ({type(exc).__name__}); trying the previous one")
            continue
        return legacy_resume_point(directory / model_name(step))
    return None


def _point_from_record(directory: Path, step: int, record: dict[str, Any]) -> ResumePoint:
    emas = {str(rate): directory / ema_name(rate, step) for rate in record.get("ema_rates", [])}
    return ResumePoint(directory=directory, step=step, model=directory / model_name(step), opt=directory / opt_name(step), emas=emas, state=record)


def legacy_resume_point(model_path: Path) -> ResumePoint:
    """A resume point for a bare `modelNNNNNN.pt` (the original's layout): the optimizer and EMA
    files beside it are used when present."""
    directory = model_path.parent
    step = parse_resume_step_from_filename(model_path)
    opt = directory / opt_name(step)
    emas = {}
    for entry in directory.glob(f"ema_*_{step:06d}.pt"):
        rate = entry.name[len("ema_") : -len(f"_{step:06d}.pt")]
        emas[rate] = entry
    return ResumePoint(directory=directory, step=step, model=model_path, opt=opt if opt.is_file() else None, emas=emas)


def resolve_resume_point(resume: str, run_dir: str | os.PathLike | None, log=print, *, setting: str = "resume_checkpoint") -> ResumePoint | None:
    """Interpret a resume setting: "auto" (the latest complete set in `run_dir`), a model file or a run
    directory. `setting` names it in errors (`resume` or `resume_checkpoint`)."""
    if not resume:
        return None
    if resume == "auto":
        if not run_dir:
            raise SettingError(setting, f"{setting} 'auto' looks in the run directory: set log_dir (or OPENAI_LOGDIR)")
        point = find_latest_checkpoint(run_dir, log=log)
        if point is None:
            log(f"no complete checkpoint in {run_dir} yet: starting from scratch")
        return point
    path = Path(resume).expanduser()
    if path.is_dir():
        point = find_latest_checkpoint(path, log=log)
        if point is None:
            raise SettingError(setting, f"no complete checkpoint in {path}: give {setting} a modelNNNNNN.pt file or a run directory with checkpoints")
        return point
    if not path.is_file():
        raise SettingError(setting, f"resume checkpoint {path} does not exist: give {setting} a modelNNNNNN.pt file or a run directory")
    step = parse_resume_step_from_filename(path)
    if _MODEL_RE.match(path.name) and (path.parent / state_name(step)).is_file():
        record, reason = verify_checkpoint(path.parent, step)
        if record is None:
            raise SettingError(setting, f"checkpoint {path} is incomplete or corrupt ({reason}): resume from an earlier one or from 'auto'")
        return _point_from_record(path.parent, step, record)
    if step == 0 and not _MODEL_RE.match(path.name):
        log(f"{path.name} does not carry a step in its name (modelNNNNNN.pt): counting steps from 0")
    return legacy_resume_point(path)


def load_resume_files(point: ResumePoint, device: torch.device) -> tuple[dict, dict | None, dict[str, dict]]:
    """(model state, optimizer state or None, {rate: EMA state}) of `point`, read by this rank alone."""
    model_state = load_state_dict(point.model, map_location="cpu")
    opt_state = read_tensor_file(point.opt, map_location=device) if point.opt is not None else None
    if opt_state is not None and not isinstance(opt_state, dict):
        raise UserError(f"{point.opt} holds a {type(opt_state).__name__}, not an optimizer state dict: delete it to start the optimizer fresh")
    emas = {rate: load_state_dict(path, map_location="cpu") for rate, path in point.emas.items() if path.is_file()}
    return model_state, opt_state, emas


def prune_checkpoints(directory: str | os.PathLike, keep_last: int, protect: AbstractSet[int] = frozenset()) -> list[int]:
    """Delete checkpoint sets beyond the `keep_last` newest (none when keep_last <= 0); returns the
    steps removed. A set's state file is removed last: a kill mid-way leaves the state file, which
    marks the set incomplete (resume skips it) and keeps it counted, so the next prune finishes the
    job and no file is ever orphaned."""
    if keep_last <= 0:
        return []
    directory = Path(directory)
    steps = _steps_with(directory, _STATE_RE)
    removed = []
    for step in steps[keep_last:]:
        if step in protect:
            continue
        for entry in list(directory.iterdir()):
            if parse_resume_step_from_filename(entry.name) == step and entry.name != state_name(step) and _belongs_to_set(entry.name):
                entry.unlink(missing_ok=True)
        (directory / state_name(step)).unlink(missing_ok=True)
        removed.append(step)
    return removed


def _belongs_to_set(name: str) -> bool:
    return bool(_STEP_IN_NAME_RE.match(name))
