"""Compatibility shim: the original `image_datasets` module, re-exported from `guided_diffusion.data`."""
from guided_diffusion.data.files import list_image_files as _list_image_files_recursively
from guided_diffusion.data.load import ImageDataset, load_data
from guided_diffusion.data.transforms import center_crop_arr, random_crop_arr

__all__ = ["load_data", "ImageDataset", "center_crop_arr", "random_crop_arr", "_list_image_files_recursively"]
