"""`--init_from PRESET_OR_PATH`: a new run that starts from the weights of a released or local
checkpoint (weights only: the optimizer, step count and EMAs start fresh, the EMAs from these weights).

The architecture comes from the checkpoint (config.json beside it, safetensors metadata, or the released
preset's flags), so architecture flags need not be repeated; an explicitly given architecture flag that
disagrees is an error. `--num_classes` (and `--class_cond`, `--class_dropout_prob`) may differ: then the
label embedding, the only layer whose shape depends on them, is initialised afresh and every other
weight is copied.
"""
from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import torch

from guided_diffusion.config.presets import Preset
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.errors import SettingError, UserError

__all__ = ["LABEL_EMBEDDING", "LABEL_FLAGS", "InitWeights", "load_initial_weights", "resolve_init_from"]

LABEL_EMBEDDING = "label_emb.weight"
# Flags a fine-tuning run may change: the label layout, and settings that do not change any weight's shape.
LABEL_FLAGS = ("num_classes", "class_cond", "class_dropout_prob")
_FREE_FLAGS = LABEL_FLAGS + ("dropout", "use_fp16", "use_checkpoint")


@dataclass
class InitWeights:
    """The checkpoint a run starts from."""

    source: str
    state: dict[str, torch.Tensor]


def _checkpoint_file(spec: str) -> tuple[Path, Preset | None]:
    """(local file, preset or None) for a path or a released preset's name (downloaded when missing)."""
    from guided_diffusion.config.presets import PRESETS

    path = Path(spec).expanduser()
    if path.is_file():
        return path, None
    name = spec.removesuffix(".pt")
    if name in PRESETS:
        from guided_diffusion.weights.fetch import fetch

        preset = PRESETS[name]
        return fetch(preset), preset
    raise SettingError("init_from", f"init_from {spec!r} is neither a checkpoint file nor a released preset name")


def resolve_init_from(args: Namespace, kind: str) -> InitWeights | None:
    """For `--init_from`: read the checkpoint, put its architecture (and diffusion settings, when it
    records them) into `args` so the run builds that network, and return its weights. None without
    the flag. Flags named in `args.explicit_flags` win for label and training settings; explicit
    architecture flags must agree with the checkpoint."""
    spec = getattr(args, "init_from", "") or ""
    if not spec:
        return None
    from guided_diffusion.config import (
        ClassifierConfig,
        DiffusionConfig,
        SuperResConfig,
    )
    from guided_diffusion.weights.checkpoints import (
        config_for_checkpoint,
        load_state_dict,
        read_config_json,
    )

    path, preset = _checkpoint_file(spec)
    state = load_state_dict(path)
    network = config_for_checkpoint(path, state)
    wanted = SuperResConfig if kind == "superres" else None
    if isinstance(network, ClassifierConfig) or (wanted is not None and not isinstance(network, wanted)) or (
        wanted is None and isinstance(network, SuperResConfig)
    ):
        what = {"superres": "super-resolution model", "image": "diffusion model"}.get(kind, kind)
        raise SettingError("init_from", f"init_from {spec}: that checkpoint is a {type(network).__name__}, not a {what}")
    explicit = set(getattr(args, "explicit_flags", set()) or set())
    for key, value in network.to_dict().items():
        if key in _FREE_FLAGS and key in explicit:
            continue
        if key in explicit and hasattr(args, key) and getattr(args, key) != value:
            raise SettingError(key, f"{key} {getattr(args, key)} disagrees with {path.name}'s {value}: with init_from the "
                                    f"architecture comes from the checkpoint (leave {key} unset)")
        setattr(args, key, value)
    saved = read_config_json(path)
    diffusion = None
    if saved is not None and saved.get("diffusion"):
        diffusion = DiffusionConfig.from_dict(saved["diffusion"])
    elif preset is not None:
        diffusion = DiffusionConfig.from_dict(preset.flags)
    if diffusion is not None:
        for key, value in diffusion.to_dict().items():
            if key == "timestep_respacing" or (key in explicit and key != "learn_sigma"):
                continue
            setattr(args, key, value)
    logs.log(f"init_from {spec}: a new run from the weights of {path} (architecture from the checkpoint; optimizer fresh)")
    return InitWeights(source=str(path), state=state)


def load_initial_weights(model: torch.nn.Module, init: InitWeights) -> list[str]:
    """Copy `init`'s weights into `model`. Only the label embedding may differ (other classes, or a
    conditional model from an unconditional one): it keeps the model's fresh initialisation, and one
    line says so. Returns the names left fresh."""
    own = model.state_dict()
    fresh = []
    loaded = {}
    for name, value in own.items():
        given = init.state.get(name)
        if given is not None and tuple(given.shape) == tuple(value.shape):
            loaded[name] = given.to(value.dtype)
        elif name == LABEL_EMBEDDING:
            fresh.append(name)
        elif given is None:
            raise UserError(f"{init.source} lacks {name}: it does not match the architecture it describes")
        else:
            raise UserError(f"{init.source}: {name} has shape {tuple(given.shape)}, the model {tuple(value.shape)}")
    unexpected = sorted(set(init.state) - set(own) - {LABEL_EMBEDDING})
    if unexpected:
        raise UserError(f"{init.source} has weights the model lacks ({', '.join(unexpected[:3])}): check the architecture")
    model.load_state_dict({**own, **loaded})
    if LABEL_EMBEDDING in fresh:
        before = tuple(init.state[LABEL_EMBEDDING].shape) if LABEL_EMBEDDING in init.state else None
        what = f"{before[0]} rows" if before else "no label embedding"
        logs.log(f"the checkpoint has {what}, this run needs {own[LABEL_EMBEDDING].shape[0]}: the label embedding is "
                   "initialised afresh (all other weights come from the checkpoint)")
    elif LABEL_EMBEDDING in init.state and LABEL_EMBEDDING not in own:
        logs.log("this run is unconditional: the checkpoint's label embedding is not used")
    return fresh
