"""Image-folder data: file discovery and labels, the original crop arithmetic, resumable sharded
batch streams."""
from guided_diffusion.data.dataset import ImageBatch, ImageFolderDataset
from guided_diffusion.data.files import CLASS_MAP_NAME, ClassMap, list_image_files
from guided_diffusion.data.load import load_data
from guided_diffusion.data.stream import ImageStream, StreamSpec, resolve_class_map
from guided_diffusion.data.transforms import center_crop_arr, random_crop_arr

__all__ = [
    "CLASS_MAP_NAME",
    "ClassMap",
    "ImageBatch",
    "ImageFolderDataset",
    "ImageStream",
    "StreamSpec",
    "center_crop_arr",
    "list_image_files",
    "load_data",
    "random_crop_arr",
    "resolve_class_map",
]
