"""One way to resolve a network's settings, with one precedence, for every command and the Python API.

Each setting takes the value of the first source that has it, in this order (highest first):

1. a flag the user typed (or a keyword the caller passed);
2. the config saved with the checkpoint (`config.json` beside it, or safetensors metadata): its
   architecture settings, the ones the weights need (`ARCHITECTURE[kind]`);
3. the preset (a released checkpoint's published flags, `config.presets`);
4. the default.

So defaults < preset < saved config < typed flags. A typed architecture setting that differs from a
preset's is refused when the weights are the preset's own file (they could only fail to load, or for the
attention order silently give noise). `typed_flags` says which flags were typed on a command line.

    typed = typed_flags(parser, argv)
    resolved = resolve_network("diffusion", vars(args), typed, preset=preset, checkpoint=args.model_path)
    config, diffusion = resolved.network(), resolved.diffusion()
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.presets import Preset
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.weights.checkpoints import read_config_json

__all__ = ["KINDS", "ARCHITECTURE", "SOURCES", "Resolved", "typed_flags", "resolve_network", "network_config_class"]

# The kinds of network a checkpoint holds (the names of `weights.checkpoints.CHECKPOINT_KINDS`).
KINDS = ("diffusion", "superres", "classifier")
SOURCES = ("default", "preset", "checkpoint", "typed")

# Settings that are choices of a run rather than properties of the weights: a saved config does not
# impose them, and changing them never stops a preset's own checkpoint from loading.
RUN_CHOICES = frozenset({
    "use_fp16", "use_checkpoint", "dropout", "timestep_respacing", "classifier_use_fp16", "use_kl",
    "rescale_learned_sigmas",
})
_CONFIG_CLASSES: dict[str, type[ModelConfig] | type[ClassifierConfig]] = {
    "diffusion": ModelConfig, "superres": SuperResConfig, "classifier": ClassifierConfig,
}


def _names(*classes: type) -> frozenset[str]:
    return frozenset(f.name for cls in classes for f in dataclasses.fields(cls))


# The settings the weights of each kind of network need (and a saved config of that kind supplies).
ARCHITECTURE: dict[str, frozenset[str]] = {
    "diffusion": _names(SuperResConfig, DiffusionConfig) - RUN_CHOICES,
    "superres": _names(SuperResConfig, DiffusionConfig) - RUN_CHOICES,
    "classifier": _names(ClassifierConfig) - RUN_CHOICES,
}
# The `kind` a saved config of each network kind records (`config.CONFIG_KINDS`).
_SAVED_KINDS = {"diffusion": ("unet", "superres"), "superres": ("unet", "superres"), "classifier": ("classifier",)}


def network_config_class(kind: str) -> type[ModelConfig] | type[ClassifierConfig]:
    """The config dataclass of a network kind ("diffusion", "superres" or "classifier")."""
    if kind not in _CONFIG_CLASSES:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return _CONFIG_CLASSES[kind]


def typed_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The settings (argparse `dest` names) of the flags typed in `argv`, whatever spelling or alias was
    used (`--use_bf16` and `--bf16` both give "bf16" when they share a dest). `argv` must parse."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(list(argv))))


@dataclass(frozen=True)
class Resolved:
    """Resolved settings of one network: `values` (every setting the caller gave, now resolved) and
    `sources` (setting -> the SOURCES entry its value came from)."""

    kind: str
    values: dict[str, Any]
    sources: dict[str, str]

    def filled_from(self, source: str) -> list[str]:
        """The settings whose value came from `source` ("preset" or "checkpoint"), sorted."""
        return sorted(name for name, came in self.sources.items() if came == source)

    def network(self) -> ModelConfig | ClassifierConfig:
        """The network config these settings describe."""
        config: ModelConfig | ClassifierConfig = network_config_class(self.kind).from_dict(self.values)
        return config

    def diffusion(self) -> DiffusionConfig:
        """The diffusion config these settings describe."""
        config: DiffusionConfig = DiffusionConfig.from_dict(self.values)
        return config


def _defaults(kind: str) -> dict[str, Any]:
    """Every setting of a network of `kind` (and of its diffusion) at its default."""
    network = SuperResConfig() if kind != "classifier" else ClassifierConfig()
    return {**DiffusionConfig().to_dict(), **network.to_dict()}


def _saved_values(kind: str, checkpoint: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The architecture settings saved with `checkpoint` for a network of `kind` ({} when none)."""
    if checkpoint is None or not str(checkpoint) or not Path(checkpoint).is_file():
        return {}
    saved = read_config_json(checkpoint)
    if saved is None:
        return {}
    if kind == "classifier" and saved.get("kind", "unet") != "classifier" and isinstance(saved.get("classifier"), dict):
        saved = {"kind": "classifier", "model": saved["classifier"]}  # a run directory's config.json of both networks
    if saved.get("kind", "unet") not in _SAVED_KINDS[kind]:
        return {}
    values = {**saved.get("model", {}), **(saved.get("diffusion") or {})}
    return {name: value for name, value in values.items() if name in ARCHITECTURE[kind]}


def resolve_network(
    kind: str,
    values: Mapping[str, Any],
    typed: Collection[str] = (),
    *,
    preset: Preset | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Resolved:
    """Resolve the settings of a network of `kind` ("diffusion", "superres" or "classifier").

    values: every setting the caller has (defaults, and the typed values where typed); only these names
    are resolved, so a command resolves just the flags it has. typed: the names the user gave. preset:
    a released checkpoint whose flags fill in (all of them, not only the architecture). checkpoint: the
    weights file when the user named one (its saved config fills in the architecture); None when the
    weights are the preset's own file, and then a typed architecture setting that differs from the
    preset's raises SettingError naming it. Precedence: defaults < preset < saved config < typed.
    """
    network_config_class(kind)  # checks the kind
    architecture = ARCHITECTURE[kind]
    typed = set(typed)
    resolved = dict(values)
    sources = {name: "typed" if name in typed else "default" for name in resolved}
    preset_values = dict(preset.flags) if preset is not None else {}
    if preset is not None and checkpoint is None:
        defaults = _defaults(kind)
        for name in sorted(typed & architecture & set(resolved)):
            expected = preset_values.get(name, defaults.get(name))
            if resolved[name] != expected:
                raise SettingError(name, f"{name} {resolved[name]} does not fit preset {preset.name!r} ({name} = "
                                         f"{expected}): leave {name} at the preset's value, or load a checkpoint "
                                         "of that architecture")
    for source, layer in (("preset", preset_values), ("checkpoint", _saved_values(kind, checkpoint))):
        for name, value in layer.items():
            if name in resolved and name not in typed:
                resolved[name] = value
                sources[name] = source
    return Resolved(kind=kind, values=resolved, sources=sources)
