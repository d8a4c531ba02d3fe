"""Finding images in a folder tree and deriving their class labels."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from guided_diffusion.runtime.errors import UserError

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp"})
LABEL_MODES = ("auto", "filename", "folder")
CLASS_MAP_NAME = "classes.json"


def find_image_files(root: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Files under the folder `root` (recursively, following links) whose extension, lower-cased and
    without the dot, is in `extensions`; hidden files skipped; sorted by path. Empty when there are none."""
    found: list[str] = []
    for directory, subdirs, names in os.walk(str(root), followlinks=True):
        subdirs.sort()
        for name in names:
            if not name.startswith(".") and "." in name and name.rsplit(".", 1)[-1].lower() in extensions:
                found.append(os.path.join(directory, name))
    return sorted(found)


def list_image_files(data_dir: str | os.PathLike) -> list[str]:
    """All image files under `data_dir` (recursively, following links), sorted by path."""
    root = Path(data_dir)
    if not str(data_dir):
        raise UserError("no data directory given: pass --data_dir DIR (a folder of jpg/jpeg/png/gif/webp images)")
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist or is not a folder: check --data_dir")
    found = find_image_files(root)
    if not found:
        raise UserError(
            f"no images found under {root}: put .jpg/.jpeg/.png/.gif/.webp files there (sub-folders are searched too)"
        )
    return found


def filename_label(path: str) -> str | None:
    """The original's label: the file name up to its first underscore (None without one)."""
    name = os.path.basename(path)
    return name.split("_", 1)[0] if "_" in name else None


def folder_label(path: str, root: str | os.PathLike) -> str | None:
    """The name of the top-level sub-folder of `root` holding `path` (None at top level)."""
    parts = Path(os.path.relpath(path, root)).parts
    return parts[0] if len(parts) > 1 else None


def choose_label_mode(paths: list[str], root: str | os.PathLike, mode: str = "auto") -> str:
    """Resolve `auto`: one sub-folder per class when every image sits in one of at least two
    top-level sub-folders, else the filename prefix (the original's rule)."""
    if mode not in LABEL_MODES:
        raise UserError(f"unknown label mode {mode!r}: use one of {', '.join(LABEL_MODES)}")
    if mode != "auto":
        return mode
    folders = {folder_label(path, root) for path in paths}
    if None not in folders and len(folders) >= 2:
        return "folder"
    return "filename"


def label_names(paths: list[str], root: str | os.PathLike, mode: str) -> list[str | None]:
    """Each image's class name under a resolved `mode` (None where the image has none)."""
    if mode == "folder":
        return [folder_label(path, root) for path in paths]
    return [filename_label(path) for path in paths]


@dataclass(frozen=True)
class ClassMap:
    """Class names in index order, and how they were derived from paths."""

    names: tuple[str, ...]
    label_mode: str

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def to_dict(self) -> dict:
        return {"label_mode": self.label_mode, "classes": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict) -> ClassMap:
        return cls(names=tuple(str(n) for n in data["classes"]), label_mode=str(data["label_mode"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        from guided_diffusion.runtime.atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassMap:
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.from_dict(json.load(handle))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot read class map {path} ({exc}): delete it to rebuild it from the data") from exc


def build_class_map(paths: list[str], root: str | os.PathLike, mode: str) -> ClassMap:
    """Sorted unique class names of `paths` (labels must exist for every image)."""
    names = label_names(paths, root, mode)
    missing = [path for path, name in zip(paths, names) if name is None]
    if missing:
        raise UserError(_missing_label_message(missing, mode))
    return ClassMap(names=tuple(sorted(set(n for n in names if n is not None))), label_mode=mode)


def _missing_label_message(missing: list[str], mode: str) -> str:
    where = "is not inside a class sub-folder" if mode == "folder" else "has no CLASS_ prefix in its name"
    return (
        f"image {missing[0]} {where} ({len(missing)} images without a class label): for --class_cond True name "
        "files CLASS_anything.png or put them in one sub-folder per class"
    )


def labels_for(paths: list[str], root: str | os.PathLike, class_map: ClassMap) -> list[int]:
    """Class indices of `paths` under an existing map; unknown classes are an error."""
    names = label_names(paths, root, class_map.label_mode)
    missing = [path for path, name in zip(paths, names) if name is None]
    if missing:
        raise UserError(_missing_label_message(missing, class_map.label_mode))
    index = class_map.index
    unknown = sorted({name for name in names if name is not None and name not in index})
    if unknown:
        example = next(path for path, name in zip(paths, names) if name == unknown[0])
        raise UserError(
            f"image {example} has class {unknown[0]!r}, which is not among the {len(index)} training classes "
            f"({len(unknown)} unknown classes): name or place the images with the training class names"
        )
    return [index[name] for name in names]  # type: ignore[index]
