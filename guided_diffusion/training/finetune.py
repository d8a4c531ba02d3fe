"""`init_from`: a new run that starts from the weights of a released or local checkpoint (weights only:
the optimizer, step count and EMAs start fresh, the EMAs from these weights).

`FineTuneSource.locate` names the checkpoint; `FineTuneSource.settings` resolves the run's network and
diffusion settings through the one resolver (`config.resolve`: defaults < preset < saved config < typed
settings), so the architecture comes from the checkpoint (the config saved beside it, or a released
checkpoint's preset flags) and need not be repeated. A typed architecture setting that disagrees with
the checkpoint is refused, except the label settings (`LABEL_SETTINGS`): with another number of classes
(or `class_cond`, `class_dropout_prob`) the label embedding, the only layer whose shape depends on them,
is initialised afresh and every other weight is copied (`load_initial_weights`).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.config.presets import PRESETS, Preset, preset_for_file
from guided_diffusion.config.resolve import ARCHITECTURE, Resolved, resolve_network
from guided_diffusion.runtime import logs
from guided_diffusion.runtime.errors import SettingError, UserError

__all__ = ["LABEL_EMBEDDING", "LABEL_SETTINGS", "FineTuneSource", "InitWeights", "load_initial_weights"]

LABEL_EMBEDDING = "label_emb.weight"
# Settings a fine-tuning run may change although the weights' config records them: the label layout.
LABEL_SETTINGS = frozenset({"num_classes", "class_cond", "class_dropout_prob"})
# The kind of network each kind of released checkpoint holds (`config.resolve.KINDS`).
_PRESET_KINDS = {"diffusion": "diffusion", "upsampler": "superres", "classifier": "classifier"}
_WHAT = {"diffusion": "a diffusion model", "superres": "a super-resolution model"}
_PRESET_WHAT = {"diffusion": "a diffusion model", "upsampler": "an upsampler", "classifier": "a classifier"}


@dataclass(frozen=True)
class FineTuneSource:
    """The checkpoint a fine-tuning run starts from: `spec` as given (a path or a released preset's name),
    `preset` when the weights are a released checkpoint's, and `local` the file the user named (None: the
    preset's own file, fetched into the cache when the weights are first read)."""

    spec: str
    preset: Preset | None = None
    local: Path | None = None

    @classmethod
    def locate(cls, spec: str, kind: str) -> FineTuneSource:
        """The source `spec` names for a network of `kind` ("diffusion" or "superres"). A local file is read
        and its kind checked now (a damaged file, pickled code or another kind of network is a one-line
        SettingError naming init_from); a preset name is checked against the table, not downloaded."""
        if kind not in _WHAT:
            raise SettingError("init_from", f"init_from starts {' or '.join(_WHAT.values())} from a checkpoint, not a {kind}")
        path = Path(spec).expanduser()
        if path.is_file():
            from guided_diffusion.weights.checkpoints import inspect_checkpoint

            try:
                inspect_checkpoint(path, expected=kind)
            except UserError as exc:
                raise SettingError("init_from", f"init_from {spec}: {exc}") from None
            released = preset_for_file(path)
            return cls(spec, released if released is not None and _PRESET_KINDS[released.kind] == kind else None, path)
        preset = PRESETS.get(spec.removesuffix(".pt"))
        if preset is None:
            raise SettingError("init_from", f"init_from {spec!r} is neither a checkpoint file nor a released preset name")
        if _PRESET_KINDS[preset.kind] != kind:
            raise SettingError("init_from", f"init_from {spec}: that preset is {_PRESET_WHAT[preset.kind]}, not {_WHAT[kind]}")
        return cls(spec, preset, None)

    @property
    def path(self) -> Path:
        """The checkpoint file (a preset's place in the cache, whether or not downloaded yet)."""
        if self.local is not None:
            return self.local
        from guided_diffusion.weights.fetch import checkpoint_path

        assert self.preset is not None  # `locate` gives a preset whenever there is no local file
        return checkpoint_path(self.preset)

    def settings(self, kind: str, values: Mapping[str, Any], typed: Collection[str] = ()) -> Resolved:
        """The run's settings of a network of `kind` from `values` (every setting the caller has; `typed`
        the ones the user gave), with the checkpoint's config filling in (`config.resolve.resolve_network`).
        A typed architecture setting other than the label settings must agree with the checkpoint."""
        own = resolve_network(kind, values, preset=self.preset, checkpoint=self.path)
        if self.preset is None and not own.filled_from("checkpoint"):
            raise SettingError("init_from", f"init_from {self.spec} has no saved config (config.json beside it, or "
                                            "safetensors metadata) and is not a released checkpoint's file: fine-tuning "
                                            "takes the architecture from it")
        for name in sorted((set(typed) & ARCHITECTURE[kind] & set(values)) - LABEL_SETTINGS):
            if own.sources[name] != "default" and values[name] != own.values[name]:
                raise SettingError(name, f"{name} {values[name]} disagrees with {self.path.name}'s {own.values[name]}: "
                                         f"with init_from the architecture comes from the checkpoint (leave {name} unset)")
        return resolve_network(kind, values, typed, preset=self.preset, checkpoint=self.path)

    def read_weights(self) -> InitWeights:
        """The checkpoint's weights (a preset's file is downloaded first when missing)."""
        from guided_diffusion.weights.checkpoints import load_state_dict

        if self.local is not None:
            path = self.local
        else:
            from guided_diffusion.weights.fetch import fetch

            assert self.preset is not None
            path = fetch(self.preset)
        return InitWeights(source=str(path), state=load_state_dict(path))


@dataclass
class InitWeights:
    """The weights a run starts from, and the file they came from."""

    source: str
    state: dict[str, torch.Tensor]


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
