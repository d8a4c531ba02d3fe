"""The 15 released checkpoints of the original, by name: their exact flags, download address and the
README's sampling recipe. The flags also catch what weights cannot show (the attention order).

This is the table only; checking a file against a preset is `checkpoints.check_preset_file`, fetching
one into the cache `sampling.fetch.ensure_preset`."""
from __future__ import annotations

import difflib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guided_diffusion.config.flags import (
    classifier_defaults,
    model_and_diffusion_defaults,
    sr_model_and_diffusion_defaults,
    str2bool,
)
from guided_diffusion.runtime.errors import UserError

BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
MIRROR_ENV = "GUIDED_DIFFUSION_MIRROR"


def release_base_url() -> str:
    """Where released files are fetched from: `$GUIDED_DIFFUSION_MIRROR` (files at URL/FILENAME) when
    set, else the original release host."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return mirror.rstrip("/") if mirror else BASE_URL

_COMMON = "--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True --noise_schedule linear --resblock_updown True --use_scale_shift_norm True"
_LSUN = _COMMON + " --class_cond False --dropout 0.1 --image_size 256 --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --use_fp16 True"


def parse_flag_string(flags: str) -> dict[str, Any]:
    """'--a 1 --b True' -> {'a': 1, 'b': True} with the types of the flag defaults."""
    defaults = {**model_and_diffusion_defaults(), **classifier_defaults(), **sr_model_and_diffusion_defaults()}
    tokens = shlex.split(flags)
    out: dict[str, Any] = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        key = name.lstrip("-")
        default = defaults.get(key)
        if isinstance(default, bool):
            out[key] = str2bool(value)
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Preset:
    """A released checkpoint. `flags` build it exactly; for diffusion models, `classifier`,
    `classifier_scale` and `timestep_respacing` are the original README's sampling recipe."""

    name: str
    kind: str  # "diffusion" | "classifier" | "upsampler"
    resolution: int
    flag_string: str
    num_params: int
    classifier: str | None = None
    classifier_scale: float = 1.0
    timestep_respacing: str = "250"
    sha256: str | None = None
    notes: str = ""
    flags: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", parse_flag_string(self.flag_string))

    @property
    def url(self) -> str:
        return f"{release_base_url()}/{self.filename}"

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    @property
    def size_bytes(self) -> int:
        """Approximate file size: fp32 weights plus pickle overhead (the server's length is checked exactly)."""
        return self.num_params * 4


_ENTRIES = [
    Preset("64x64_diffusion", "diffusion", 64, _COMMON + " --class_cond True --dropout 0.1 --image_size 64 --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --noise_schedule cosine --use_new_attention_order True --use_fp16 True", 295904454, classifier="64x64_classifier", classifier_scale=1.0),
    Preset("64x64_classifier", "classifier", 64, "--image_size 64 --classifier_depth 4", 65438568),
    Preset("128x128_diffusion", "diffusion", 128, _COMMON + " --class_cond True --image_size 128 --num_channels 256 --num_heads 4 --num_res_blocks 2 --use_fp16 True", 421529606, classifier="128x128_classifier", classifier_scale=0.5),
    Preset("128x128_classifier", "classifier", 128, "--image_size 128", 42568040),
    Preset("256x256_diffusion", "diffusion", 256, _COMMON + " --class_cond True --image_size 256 --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --use_fp16 True", 553838086, classifier="256x256_classifier", classifier_scale=1.0),
    Preset("256x256_diffusion_uncond", "diffusion", 256, _COMMON + " --class_cond False --image_size 256 --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --use_fp16 True", 552814086, classifier="256x256_classifier", classifier_scale=10.0),
    Preset("256x256_classifier", "classifier", 256, "--image_size 256", 54096360),
    Preset("512x512_diffusion", "diffusion", 512, _COMMON + " --class_cond True --image_size 512 --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --use_fp16 False", 558997638, classifier="512x512_classifier", classifier_scale=4.0),
    Preset("512x512_classifier", "classifier", 512, "--image_size 512", 54448360),
    Preset("64_256_upsampler", "upsampler", 256, _COMMON + " --class_cond True --large_size 256 --small_size 64 --num_channels 192 --num_heads 4 --num_res_blocks 2 --use_fp16 True", 311795910),
    Preset("128_512_upsampler", "upsampler", 512, _COMMON.replace("32,16,8", "32,16") + " --class_cond True --large_size 512 --small_size 128 --num_channels 192 --num_head_channels 64 --num_res_blocks 2 --use_fp16 True", 308835270),
    Preset("lsun_bedroom", "diffusion", 256, _LSUN, 552814086, timestep_respacing="", notes="best with 1000 steps"),
    Preset("lsun_cat", "diffusion", 256, _LSUN, 552814086, timestep_respacing="", notes="best with 1000 steps"),
    Preset("lsun_horse", "diffusion", 256, _LSUN, 552814086, timestep_respacing="", notes="best with 1000 steps"),
    Preset("lsun_horse_nodropout", "diffusion", 256, _LSUN.replace("--dropout 0.1", "--dropout 0.0"), 552814086, timestep_respacing="", notes="best with 1000 steps"),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _ENTRIES}


def get_preset(name: str, kinds: tuple[str, ...] | None = None, purpose: str = "") -> Preset:
    """The preset called `name` (".pt" suffix allowed), of one of `kinds` when given; a one-line UserError
    listing the choices otherwise (`purpose` names what needs it, e.g. "classifier_sample")."""
    key = name[:-3] if name.endswith(".pt") else name
    if key not in PRESETS:
        close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.6)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown preset {name!r}{guess}; the released checkpoints are {', '.join(PRESETS)} "
                        f"(their files come from {BASE_URL}, or from a mirror of it named by {MIRROR_ENV})")
    preset = PRESETS[key]
    if kinds is not None and preset.kind not in kinds:
        wanted = [p.name for p in PRESETS.values() if p.kind in kinds]
        raise UserError(
            f"preset {name!r} is a {preset.kind} checkpoint, but {purpose or 'this command'} needs a "
            f"{' or '.join(kinds)} preset: one of {', '.join(wanted)}"
        )
    return preset


def preset_for_file(path) -> Preset | None:
    """The preset whose released file name matches path's name, if any."""
    return PRESETS.get(Path(path).name.removesuffix(".pt"))
