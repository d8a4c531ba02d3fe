"""Reading and writing weights: safe loading (never unpickles code), atomic saves, the model config kept
beside the weights, and errors that say which flag to change when weights and flags disagree."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from guided_diffusion.config import (
    CONFIG_KINDS,
    ClassifierConfig,
    DiffusionConfig,
    ModelConfig,
    SuperResConfig,
    config_from_dict,
    config_to_dict,
)
from guided_diffusion.config.presets import Preset, preset_for_file
from guided_diffusion.models.factory import CHANNEL_MULT_BY_SIZE
from guided_diffusion.runtime.atomic import atomic_write_path, file_digest
from guided_diffusion.runtime.download import recorded_sha256, sidecar_path
from guided_diffusion.runtime.errors import UserError

CONFIG_FILENAME = "config.json"
METADATA_KEY = "guided_diffusion_config"


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: dict | None = None) -> Path:
    """Save weights atomically. `.safetensors` files carry `config` as metadata; `.pt` files are plain
    state dicts in the released layout (write the config with write_config_json)."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {METADATA_KEY: json.dumps(config)} if config is not None else None
        return atomic_write_path(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return atomic_write_path(path, lambda tmp: torch.save(tensors, tmp))


def write_config_json(directory: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Save a model config (config_to_dict's form) as config.json in a checkpoint directory."""
    text = json.dumps(dict(config), indent=2, sort_keys=True)
    return atomic_write_path(Path(directory) / CONFIG_FILENAME, lambda tmp: tmp.write_text(text))


def read_config_json(path: str | os.PathLike) -> dict | None:
    """The config saved with a checkpoint: safetensors metadata, or config.json in the same directory."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                text = (handle.metadata() or {}).get(METADATA_KEY)
        except Exception:
            raise UserError(_describe_unreadable(path, ValueError("header"))) from None
        if text:
            return parse_config_text(text, f"the config stored in {path}")
    candidate = path if path.name == CONFIG_FILENAME else path.parent / CONFIG_FILENAME
    if candidate.is_file():
        try:
            text = candidate.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {candidate} ({type(exc).__name__}): fix or delete it") from None
        return parse_config_text(text, str(candidate))
    return None


def parse_config_text(text: str, source: str) -> dict:
    """A saved model config from JSON text, checked: an object whose sections are objects and whose
    values have the types of the config fields. Anything else is a one-line `UserError` naming `source`."""
    fix = "fix or delete it (it is rewritten by training), or pass the model flags instead"
    try:
        data = json.loads(text)
    except ValueError as exc:
        reason = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise UserError(f"{source} is not valid JSON ({reason}): {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source} holds a JSON {type(data).__name__}, not an object with the model config: {fix}")
    validate_config_dict(data, source)
    return data


_JSON_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}


def validate_config_dict(data: Mapping[str, Any], source: str) -> None:
    """Check the structure and value types of a config dict (config_to_dict's form)."""
    fix = "fix or delete it, or pass the model flags instead"
    kind = data.get("kind", "unet")
    if not isinstance(kind, str) or kind not in CONFIG_KINDS:
        raise UserError(f"{source}: \"kind\" is {kind!r}, expected one of {sorted(CONFIG_KINDS)}: {fix}")
    sections: list[tuple[str, type[Any]]] = [
        ("model", CONFIG_KINDS[kind]), ("diffusion", DiffusionConfig), ("classifier", CONFIG_KINDS["classifier"]),
    ]
    for section, cls in sections:
        values = data.get(section)
        if values is None and section != "model":
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: \"{section}\" must be an object of settings, got {type(values).__name__}: {fix}")
        for field in dataclasses.fields(cls):
            if field.name not in values:
                continue
            value = values[field.name]
            allowed = _JSON_TYPES.get(str(field.type), (object,))
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise UserError(f"{source}: {section}.{field.name} is {value!r} ({type(value).__name__}), "
                                f"expected a {field.type}: {fix}")


# -- loading ------------------------------------------------------------------------------------------

def _describe_unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a checkpoint file that failed to load, in plain words (judged from the file's
    first bytes and structure, not from the loader's message)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
    refused = ("contains pickled Python objects besides tensors, which could run code when loaded; it was not "
               "loaded. Save only tensors (model.state_dict()) with torch.save, or use .safetensors")
    if path.suffix == ".safetensors":
        return (f"{path} is named .safetensors but is not a readable safetensors file (its header is "
                "missing or damaged); save it again with safetensors.torch.save_file, or rename it if it is a .pt")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return (f"{path} is cut short ({size} bytes, the end of its zip archive is missing): the download or "
                    "save did not finish; download or save it again")
        if "Unsupported global" in str(exc):
            return f"{path} {refused}"
        return f"{path} is a zip archive but not a readable PyTorch checkpoint (damaged, or another kind of zip)"
    if head[:1] == b"\x80":  # a pickle stream: torch's legacy format, or a plain pickle
        if isinstance(exc, EOFError) or "ran out of input" in str(exc).lower():
            return f"{path} is cut short ({size} bytes): the download or save did not finish; download or save it again"
        return f"{path} is a Python pickle that {refused.removeprefix('contains ')}"
    return (f"{path} is not a checkpoint (it starts with bytes {head!r}); pass a file written by torch.save "
            "or safetensors")


# -- integrity: the recorded sha256, else the zip archive's CRCs ---------------------------------------------

# A run's checkpoint files and the training-state file that records their sha256 (training/snapshots.py
# writes `files: {name: {"size", "sha256"}}` into train_stateNNNNNN.pt beside modelNNNNNN.pt,
# ema_RATE_NNNNNN.pt and optNNNNNN.pt).
_RUN_FILE = re.compile(r"^(?:model|opt|ema_.+_)(\d+)\.(?:pt|safetensors)$")
_RUN_STATE_NAME = "train_state{step:06d}.pt"

# Files this process has already found intact, by identity and modification: a file loaded twice (its
# kind inspected, then its weights loaded) is hashed once. A change of size, mtime or inode re-checks it.
_INTACT: dict[tuple[str, int, int, int], str] = {}


def _identity(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def recorded_digest(path: str | os.PathLike) -> tuple[str, str] | None:
    """(sha256 hex digest, where it is recorded) for a file whose digest was recorded when it was written:
    `NAME.sha256` beside it (written when a file is installed in the cache), or the training-state file
    of the run checkpoint it belongs to. None when nothing records it."""
    path = Path(path)
    digest = recorded_sha256(path)
    if digest is not None:
        return digest, sidecar_path(path).name
    match = _RUN_FILE.match(path.name)
    if match is None:
        return None
    state_file = path.parent / _RUN_STATE_NAME.format(step=int(match.group(1)))
    if not state_file.is_file():
        return None
    try:  # the state file is a plain torch file of numbers, strings and tensors
        record = torch.load(state_file, map_location="cpu", weights_only=True)
        entry = record["files"][path.name]
        digest = str(entry["sha256"])
    except Exception:  # unreadable or without an entry for this file: nothing is recorded that we can use
        return None
    return (digest, state_file.name) if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _check_zip_crcs(path: Path) -> None:
    """Read every member of a zip archive (torch's format since 1.6) and compare its CRC-32 with the one
    stored in the archive; torch.load itself never checks them, so a flipped bit loads silently."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is damaged: its zip archive fails its integrity check ({reason}); "
                        "copy or download it again, or use another checkpoint") from None
    if bad is not None:
        raise UserError(f"{path} is damaged: {bad} inside it fails its CRC check, so its bytes changed after it "
                        "was written (bit rot or a bad copy); copy or download it again, or use another checkpoint")


def verify_checkpoint_bytes(path: str | os.PathLike) -> None:
    """Raise a one-line `UserError` when `path`'s bytes changed since it was written: its sha256 differs from
    the one recorded beside it or in its run's training state (`recorded_digest`), or, with nothing
    recorded, a member of its zip archive fails its CRC. Files found intact are remembered for this process."""
    path = Path(path)
    key = _identity(path)
    if key in _INTACT:
        return
    recorded = recorded_digest(path)
    if recorded is not None:
        expected, where = recorded
        digest = file_digest(path)[1]
        if digest != expected:
            raise UserError(
                f"{path} does not match the sha256 recorded in {where} (file {digest[:16]}..., recorded "
                f"{expected[:16]}...): its bytes changed after it was written (bit rot or a bad copy); "
                "restore it, download it again, or use another checkpoint"
            )
    else:
        with open(path, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"
        if zipped and zipfile.is_zipfile(path):  # a cut-short archive is described by the loader
            _check_zip_crcs(path)
        digest = "unrecorded"
    _INTACT[key] = digest


def mark_intact(path: str | os.PathLike, digest: str) -> None:
    """Note that `path` (as it is now) was just hashed to `digest` and found as recorded, so the next load
    in this process does not hash it again (e.g. after `runtime.download.verify_installed`)."""
    _INTACT[_identity(Path(path))] = digest


def read_tensor_file(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """The object stored in a `.pt` (weights only: no pickled code runs) or `.safetensors` file, with
    a one-line `UserError` saying what is wrong when the file is missing, empty, cut short, not a
    checkpoint, holds pickled objects, or changed since it was written (`verify_checkpoint_bytes`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path (or download it with `guided-diffusion download`)")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): the download or save did not finish; download or save it again")
    verify_checkpoint_bytes(path)
    return _load_tensor_file(path, map_location, mmap)


def _load_tensor_file(path: Path, map_location: Any, mmap: bool) -> Any:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
            return load_file(str(path), device=device)
        with warnings.catch_warnings():  # a raw pickle's protocol note would precede our one-line verdict on it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        if mmap and "mmap" in str(exc):  # legacy (non-zip) files cannot be memory-mapped
            return _load_tensor_file(path, map_location, False)
        raise UserError(_describe_unreadable(path, exc)) from None


def check_finite(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise `UserError` naming the file when floating-point weights hold NaN or infinity (a diverged
    or damaged checkpoint gives black images otherwise)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{path} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. {bad[0]}): the weights "
                        "are damaged or come from a diverged run; use an earlier checkpoint")


def load_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from `.pt` (weights only, no pickled code runs) or `.safetensors`; refuses
    files that are not a plain dict of tensors or whose weights are not finite."""
    path = Path(path)
    state = read_tensor_file(path, map_location)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a plain state dict of tensors; save model.state_dict() instead")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    check_finite(state, path)
    return dict(state)


# -- what a file holds, before any flag is looked at ------------------------------------------------------

CHECKPOINT_KINDS = ("diffusion", "superres", "classifier")
_KIND_PHRASES = {
    "diffusion": "a diffusion model", "superres": "a super-resolution model", "classifier": "a classifier",
    "optimizer": "an optimizer state", "training-state": "a training-state record", "tensors": "a file of tensors",
}


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, read from the file alone.

    `kind`: "diffusion" (a UNet on images), "superres" (a UNet that also takes the low-resolution image),
    "classifier" (a noisy classifier), "optimizer" (an optNNNNNN.pt), "training-state" (a
    train_stateNNNNNN.pt) or "tensors" (a state dict of no network of this package, e.g. the Inception
    weights). `state`: its tensors (memory-mapped where the format allows; a "module." prefix removed),
    None for the optimizer and training-state kinds. `facts`: `describe_state_dict`'s architecture facts."""

    path: Path
    kind: str
    state: Mapping[str, torch.Tensor] | None
    facts: Mapping[str, Any]

    def describe(self) -> str:
        """"a classifier checkpoint", "an optimizer state", ..."""
        phrase = _KIND_PHRASES[self.kind]
        return f"{phrase} checkpoint" if self.kind in CHECKPOINT_KINDS else phrase


def _kind_of(state: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    if facts.get("kind") == "classifier":
        return "classifier"
    if facts.get("kind") == "unet":
        # A super-resolution UNet takes the noisy RGB image and the upsampled low-resolution one (6 channels)
        # and predicts 3 (6 with learned variances); a diffusion UNet takes 3 and predicts 3 or 6.
        channels_in, channels_out = facts["in_channels"], facts["out_channels"]
        return "superres" if channels_in == 6 or channels_in > channels_out else "diffusion"
    return "tensors"


def inspect_checkpoint(path: str | os.PathLike, expected: str | None = None) -> CheckpointInfo:
    """Read `path` safely (`read_tensor_file`: missing, empty, cut short, damaged, not a checkpoint, or
    pickled code are one-line `UserError`s) and tell what it holds. With `expected` (one of
    `CHECKPOINT_KINDS`) anything else is refused in one line naming both, e.g. "X is a classifier
    checkpoint, not a diffusion model". Call it before building a network from flags, so a wrong file is
    reported as such rather than as a flag problem."""
    if expected is not None and expected not in CHECKPOINT_KINDS:
        raise ValueError(f"expected must be one of {CHECKPOINT_KINDS}, got {expected!r}")
    path = Path(path)
    loaded = read_tensor_file(path, "cpu", mmap=True)
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} is not a checkpoint: it holds a {type(loaded).__name__}, not a state dict of tensors; "
                        "save model.state_dict() with torch.save")
    if "param_groups" in loaded and "state" in loaded:
        info = CheckpointInfo(path, "optimizer", None, {})
    elif "files" in loaded and "format" in loaded:
        info = CheckpointInfo(path, "training-state", None, {})
    else:
        if not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise UserError(f"{path} is not a checkpoint: it is a dict that holds more than tensors, not a state "
                            "dict; save model.state_dict() with torch.save")
        state: Mapping[str, torch.Tensor] = loaded
        if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
            state = {k[len("module."):]: v for k, v in state.items()}
        facts = describe_state_dict(state)
        info = CheckpointInfo(path, _kind_of(state, facts), state, facts)
    if expected is not None and info.kind != expected:
        advice = {
            "optimizer": f"; pass the model{path.name[3:]} beside it" if path.name.startswith("opt") else "",
            "training-state": "; pass the modelNNNNNN.pt of the same step" if path.name.startswith("train_state") else "",
        }.get(info.kind, "")
        raise UserError(f"{path} is {info.describe()}, not {_KIND_PHRASES[expected]}{advice}")
    return info


def layout_differences(given: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str:
    """How the key -> shape table `given` (a checkpoint's) differs from `expected` (a network's), in a
    few words with one example of each kind; empty when they agree."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and expected[k] != given[k]]
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        details.append(f"{len(reshaped)} tensors of another shape (e.g. {k}: checkpoint {given[k]}, network {expected[k]})")
    return ", ".join(details)


def check_layout(path: str | os.PathLike, network_config, label: str) -> None:
    """Raise `UserError` unless the checkpoint at `path` has exactly the keys and tensor shapes of
    the network `network_config` builds (built on the "meta" device: no memory, no weights)."""
    path = Path(path)
    state = read_tensor_file(path, "cpu", mmap=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path.name} is not a state dict of tensors, so it is not {label}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in network_config.build().state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    details = layout_differences(given, expected)
    if details:
        raise UserError(f"{path.name} does not have the layout of {label}: {details}")


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                 flags: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Load state_dict into model strictly; on any mismatch raise a one-line UserError naming the
    hyperparameters that differ and the flags that fix them."""
    problems = diagnose_mismatch(state_dict, model)
    if flags is not None:
        problems += check_released_flags(source, flags)
    if problems:
        raise UserError(f"{source} does not match the model flags: " + "; ".join(problems))
    # Cast to the model's dtypes (fp16 torsos load fp32 master weights, as the original).
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state_dict.items()})
    return model


def load_model(path: str | os.PathLike, model: torch.nn.Module | None = None, flags: Mapping[str, Any] | None = None,
               map_location: Any = "cpu") -> torch.nn.Module:
    """Load a checkpoint into `model`, or into a network built from the config saved with the file
    (safetensors metadata or config.json beside it), or from the released preset of the same name."""
    state = load_state_dict(path, map_location=map_location)
    if model is None:
        network_config = config_for_checkpoint(path, state)
        model = network_config.build()
        flags = flags if flags is not None else network_config.to_dict()
    return load_weights(model, state, source=str(path), flags=flags)


def config_for_checkpoint(path: str | os.PathLike, state: Mapping[str, torch.Tensor] | None = None):
    """The network config that goes with a checkpoint file, or a UserError saying how to supply one."""
    saved = read_config_json(path)
    if saved is not None:
        network, _ = config_from_dict(saved)
        if state is not None and isinstance(network, ModelConfig) and "output_blocks.0.0.in_layers.0.weight" not in state:
            # A classifier saved in a run directory whose config.json describes the diffusion model.
            if "classifier" in saved:
                return ClassifierConfig.from_dict(saved["classifier"])
        return network
    preset = preset_for_file(path)
    if preset is not None:
        return preset_network_config(preset)
    raise UserError(
        f"no model config found for {path}: pass the model flags it was trained with, keep config.json beside it, "
        "or save it as .safetensors with its config"
    )


# The config class of each kind of released checkpoint.
PRESET_CONFIG_CLASSES: dict[str, type[ModelConfig] | type[ClassifierConfig]] = {
    "diffusion": ModelConfig, "classifier": ClassifierConfig, "upsampler": SuperResConfig,
}


def preset_network_config(preset: Preset, overrides: Mapping[str, Any] | None = None) -> ModelConfig | ClassifierConfig:
    """The network config that builds a released checkpoint (`overrides`: flag values that replace the preset's)."""
    return PRESET_CONFIG_CLASSES[preset.kind].from_dict({**preset.flags, **(overrides or {})})


def check_preset_file(preset: Preset, path: str | os.PathLike) -> None:
    """Raise `UserError` unless `path` loads without unpickling code and has exactly the keys and
    shapes of `preset`'s architecture (checked on an unallocated "meta" copy of the network)."""
    check_layout(path, preset_network_config(preset), f"the released {preset.name} checkpoint")


def check_released_flags(source: str, flags: Mapping[str, Any]) -> list[str]:
    """For a released checkpoint (recognised by file name), the flags that weights cannot reveal (the
    attention order and head layout) must equal the published ones."""
    preset = preset_for_file(source)
    if preset is None or preset.kind == "classifier":
        return []
    expected = preset_network_config(preset).to_dict()
    problems = []
    for key in ("use_new_attention_order", "num_heads", "num_head_channels"):
        if key in flags and key in expected and flags[key] != expected[key] and not (
            key == "num_heads" and expected.get("num_head_channels", -1) != -1
        ):
            problems.append(f"{preset.name} was trained with --{key} {expected[key]}: use --{key} {expected[key]}")
    return problems


# -- diagnosis ----------------------------------------------------------------------------------------

def _block_modules(state: Mapping[str, torch.Tensor], prefix: str) -> dict[int, dict[int, str]]:
    """{block index: {layer index: "res" | "attn" | "conv" | "op"}} for input_blocks / output_blocks."""
    blocks: dict[int, dict[int, str]] = {}
    for key in state:
        if not key.startswith(prefix + "."):
            continue
        parts = key.split(".")
        block, layer, name = int(parts[1]), int(parts[2]), parts[3]
        kind = {"in_layers": "res", "qkv": "attn", "conv": "conv", "op": "op"}.get(name)
        if kind:
            blocks.setdefault(block, {})[layer] = kind
        else:
            blocks.setdefault(block, {}).setdefault(layer, "other")
    return blocks


def _fmt_mult(mult) -> str:
    return ",".join(str(int(m)) if float(m).is_integer() else str(m) for m in mult)


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts readable from a UNet or classifier state dict's keys and shapes."""
    facts: dict[str, Any] = {}
    if "time_embed.0.weight" not in state or "input_blocks.0.0.weight" not in state:
        return facts
    width = state["time_embed.0.weight"].shape[1]
    facts["width"] = width
    facts["in_channels"] = state["input_blocks.0.0.weight"].shape[1]
    if "input_blocks.1.0.emb_layers.1.weight" in state:
        facts["use_scale_shift_norm"] = (
            state["input_blocks.1.0.emb_layers.1.weight"].shape[0] == 2 * state["input_blocks.1.0.out_layers.3.weight"].shape[0]
        )
    inputs = _block_modules(state, "input_blocks")
    facts["num_input_blocks"] = len(inputs)
    facts["attention_blocks"] = sum(1 for b in inputs.values() if "attn" in b.values())
    if any(k.startswith("output_blocks.") for k in state):
        facts["kind"] = "unet"
        facts["out_channels"] = state["out.2.weight"].shape[0]
        facts["label_rows"] = state["label_emb.weight"].shape[0] if "label_emb.weight" in state else None
        outputs = _block_modules(state, "output_blocks")
        up_blocks = [k for k in sorted(outputs) if any(j >= 1 and t in ("res", "conv") for j, t in outputs[k].items())]
        num_res_blocks = up_blocks[0] if up_blocks else len(outputs) - 1
        levels = len(outputs) // (num_res_blocks + 1)
        facts["num_res_blocks"] = num_res_blocks
        if up_blocks:
            facts["resblock_updown"] = any(outputs[up_blocks[0]].get(j) == "res" for j in (1, 2))
        mult, attn_ds = [], set()
        for m in range(levels):
            k = m * (num_res_blocks + 1)
            ch = state[f"output_blocks.{k}.0.out_layers.3.weight"].shape[0]
            mult.append(ch / width)
            if "attn" in outputs[k].values():
                attn_ds.add(2 ** (levels - 1 - m))
        facts["channel_mult"] = tuple(reversed(mult))
        facts["attention_ds"] = attn_ds
    else:
        facts["kind"] = "classifier"
        if "out.2.positional_embedding" in state:
            facts["pool"], facts["out_channels"] = "attention", state["out.2.c_proj.weight"].shape[0]
        elif "out.3.weight" in state and state["out.3.weight"].ndim > 2:
            facts["pool"], facts["out_channels"] = "adaptive", state["out.3.weight"].shape[0]
        elif "out.1.weight" in state and state["out.0.weight"].ndim == 2:
            facts["pool"], facts["out_channels"] = "spatial_v2", state["out.3.weight"].shape[0]
        elif "out.0.weight" in state:
            facts["pool"], facts["out_channels"] = "spatial", state["out.2.weight"].shape[0]
        facts["has_downsample_conv"] = any(".op.weight" in k for k in state)
    return facts


def diagnose_mismatch(state: Mapping[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Human-readable differences between a checkpoint and a model, each naming the flag to use;
    empty when every key and shape agrees."""
    own = model.state_dict()
    details = layout_differences({k: tuple(v.shape) for k, v in state.items()},
                                 {k: tuple(v.shape) for k, v in own.items()})
    if not details:
        return []
    ckpt, mine = describe_state_dict(state), describe_state_dict(own)
    problems: list[str] = []
    if ckpt and mine and ckpt.get("kind") != mine.get("kind"):
        return [f"checkpoint is a {ckpt.get('kind')} network but the flags build a {mine.get('kind')}"]
    if ckpt and mine:
        problems = (_unet_problems if ckpt["kind"] == "unet" else _classifier_problems)(ckpt, mine, model)
    if not problems:
        problems = [details + "; check the model flags against those used for training"]
    return problems


def _unet_problems(ckpt: dict, mine: dict, model: torch.nn.Module) -> list[str]:
    image_size = getattr(model, "image_size", None)
    out = []
    if ckpt["in_channels"] != mine["in_channels"]:
        out.append(f"checkpoint takes {ckpt['in_channels']} input channels (6 = super-resolution): use the matching model type")
    if ckpt["out_channels"] != mine["out_channels"]:
        out.append(f"checkpoint has {ckpt['out_channels']} output channels: use --learn_sigma {ckpt['out_channels'] == 6}")
    rows_c, rows_m = ckpt["label_rows"], mine["label_rows"]
    if (rows_c is None) != (rows_m is None):
        out.append("checkpoint has label_emb: use --class_cond True" if rows_c else "checkpoint has no label_emb: use --class_cond False")
    elif rows_c is not None and rows_c != rows_m:
        out.append(f"checkpoint embeds {rows_c} labels: use --num_classes {rows_c} (or {rows_c - 1} with --class_dropout_prob > 0)")
    if ckpt["width"] != mine["width"]:
        out.append(f"checkpoint has num_channels {ckpt['width']}: use --num_channels {ckpt['width']}")
    if ckpt["num_res_blocks"] != mine["num_res_blocks"]:
        out.append(f"checkpoint has {ckpt['num_res_blocks']} res blocks per level: use --num_res_blocks {ckpt['num_res_blocks']}")
    elif ckpt["channel_mult"] != mine["channel_mult"]:
        size = _size_with_default_mult(ckpt["channel_mult"], mine["channel_mult"], image_size)
        if size is not None:  # both are the defaults of their image sizes: the size is what differs
            out.append(f"checkpoint has the default channel_mult of --image_size {size} ({_fmt_mult(ckpt['channel_mult'])}), "
                       f"the flags give --image_size {image_size}: use --image_size {size}")
        else:
            out.append(f"checkpoint has channel_mult {_fmt_mult(ckpt['channel_mult'])}: use --channel_mult {_fmt_mult(ckpt['channel_mult'])}")
    if "resblock_updown" in ckpt and "resblock_updown" in mine and ckpt["resblock_updown"] != mine["resblock_updown"]:
        out.append(f"checkpoint {'resamples with ResBlocks' if ckpt['resblock_updown'] else 'uses conv resampling'}: "
                   f"use --resblock_updown {ckpt['resblock_updown']}")
    if ckpt.get("use_scale_shift_norm") != mine.get("use_scale_shift_norm"):
        out.append(f"use --use_scale_shift_norm {ckpt.get('use_scale_shift_norm')}")
    if not out and ckpt["attention_ds"] != mine["attention_ds"] and image_size:
        size = _size_that_places_attention(ckpt["attention_ds"], mine["attention_ds"], image_size)
        res = ",".join(str(image_size // ds) for ds in sorted(ckpt["attention_ds"], reverse=True))
        if size is not None:
            # The same --attention_resolutions at another image size moves attention by the same factor
            # at every level: the likelier mistake is the size.
            out.append(f"checkpoint was trained at another image size: its attention layers sit where --image_size {size} "
                       f"puts them, so use --image_size {size} (the flags give {image_size})")
        else:
            out.append(f"checkpoint has attention at resolutions {res or 'none'}: use --attention_resolutions {res}")
    return out


def _size_with_default_mult(ckpt_mult: tuple, mine_mult: tuple, image_size: int | None) -> int | None:
    """The image size whose default channel_mult the checkpoint has, when the flags' channel_mult is the
    default of their own image size (so --image_size, not --channel_mult, is the mistake); else None."""
    def same(a, b) -> bool:
        return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))

    if image_size is None or not same(mine_mult, CHANNEL_MULT_BY_SIZE.get(image_size, ())):
        return None
    sizes = [size for size, mult in CHANNEL_MULT_BY_SIZE.items() if size != image_size and same(ckpt_mult, mult)]
    return sizes[0] if len(sizes) == 1 else None


def _size_that_places_attention(ckpt_ds: set, mine_ds: set, image_size: int) -> int | None:
    """The image size at which the flags' attention resolutions land on the checkpoint's attention
    levels (every downsample factor scaled by one power of two), or None."""
    if not ckpt_ds or len(ckpt_ds) != len(mine_ds):
        return None
    ratios = {c / m for c, m in zip(sorted(ckpt_ds), sorted(mine_ds))}
    if len(ratios) != 1:
        return None
    ratio = ratios.pop()
    size = image_size * ratio
    return int(size) if ratio != 1 and size.is_integer() and size >= 1 else None


def _classifier_problems(ckpt: dict, mine: dict, model: torch.nn.Module) -> list[str]:
    out = []
    if ckpt.get("pool") != mine.get("pool"):
        out.append(f"checkpoint pools with {ckpt.get('pool')!r}: use --classifier_pool {ckpt.get('pool')}")
    if ckpt.get("out_channels") != mine.get("out_channels"):
        out.append(f"checkpoint predicts {ckpt.get('out_channels')} classes: use --num_classes {ckpt.get('out_channels')}")
    if ckpt["width"] != mine["width"]:
        out.append(f"checkpoint has classifier_width {ckpt['width']}: use --classifier_width {ckpt['width']}")
    if ckpt["num_input_blocks"] != mine["num_input_blocks"]:
        # An encoder of L levels and depth d has L * (d + 1) blocks; L comes from the image size.
        levels = len(getattr(model, "channel_mult", ())) or 1
        hint = ""
        if ckpt["num_input_blocks"] % levels == 0:
            hint = f": use --classifier_depth {ckpt['num_input_blocks'] // levels - 1}"
        out.append(f"checkpoint has {ckpt['num_input_blocks']} encoder blocks, the flags give {mine['num_input_blocks']}{hint}")
    if ckpt.get("has_downsample_conv") != mine.get("has_downsample_conv"):
        out.append(f"use --classifier_resblock_updown {not ckpt.get('has_downsample_conv')}")
    if ckpt.get("use_scale_shift_norm") != mine.get("use_scale_shift_norm"):
        out.append(f"use --classifier_use_scale_shift_norm {ckpt.get('use_scale_shift_norm')}")
    if not out and ckpt["attention_blocks"] != mine["attention_blocks"]:
        out.append(f"checkpoint has {ckpt['attention_blocks']} attention blocks in the encoder: check --classifier_attention_resolutions")
    return out


def save_model_with_config(path: str | os.PathLike, model: torch.nn.Module, network_config, diffusion_config=None) -> Path:
    """Save a model's weights with its config: as metadata for .safetensors, as config.json beside a .pt."""
    config = config_to_dict(network_config, diffusion_config)
    path = Path(path)
    if path.suffix != ".safetensors":
        write_config_json(path.parent, config)
    return save_checkpoint(path, model.state_dict(), config)
