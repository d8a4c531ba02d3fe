"""`load_data` and `ImageDataset` with the original signatures, built on `ImageStream`."""
from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from guided_diffusion.data.stream import ImageStream, StreamSpec
from guided_diffusion.data.transforms import center_crop_arr, load_rgb, random_crop_arr, to_model_input


def load_data(
    *,
    data_dir: str,
    batch_size: int,
    image_size: int,
    class_cond: bool = False,
    deterministic: bool = False,
    random_crop: bool = False,
    random_flip: bool = True,
    label_mode: str = "filename",
    num_workers: int = -1,
    skip_bad_images: bool = False,
    seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Endless generator of `(images NCHW float32 in [-1, 1], {"y": labels} or {})`, sharded over
    torch.distributed ranks. Labels come from the filename prefix as in the original (or from
    sub-folders with `label_mode="folder"`/`"auto"`). Bad input raises `UserError` at the call."""
    spec = StreamSpec(
        data_dir=data_dir,
        batch_size=batch_size,
        image_size=image_size,
        class_cond=class_cond,
        deterministic=deterministic,
        random_crop=random_crop,
        random_flip=random_flip,
        label_mode=label_mode,
        num_workers=num_workers,
        skip_bad_images=skip_bad_images,
        seed=random.SystemRandom().randrange(1 << 62) if seed is None else seed,
    )
    stream = ImageStream(spec)  # validates eagerly, before the generator starts
    return _batches(stream, class_cond)


def _batches(stream: ImageStream, class_cond: bool) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    for batch in stream:
        yield batch.images, ({"y": batch.labels} if class_cond else {})


class ImageDataset(Dataset):
    """The original's dataset: one shard of `image_paths`, items `(CHW float32, {"y": int64})`,
    augmentation drawn from Python's global `random`."""

    def __init__(
        self,
        resolution: int,
        image_paths: list[str],
        classes: list[int] | None = None,
        shard: int = 0,
        num_shards: int = 1,
        random_crop: bool = False,
        random_flip: bool = True,
    ):
        self.resolution = resolution
        self.local_images = image_paths[shard::num_shards]
        self.local_classes = None if classes is None else classes[shard::num_shards]
        self.random_crop = random_crop
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.local_images)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        image = load_rgb(self.local_images[idx])
        arr = random_crop_arr(image, self.resolution) if self.random_crop else center_crop_arr(image, self.resolution)
        if self.random_flip and random.random() < 0.5:
            arr = arr[:, ::-1]
        out = {} if self.local_classes is None else {"y": np.array(self.local_classes[idx], dtype=np.int64)}
        return to_model_input(arr), out
