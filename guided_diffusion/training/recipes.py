"""The training recipes of the released models: the flags that reproduce each checkpoint's training run,
shown by `guided-diffusion presets --training`.

Architecture flags are the released presets' (`guided_diffusion.config.presets`, the original README's
MODEL_FLAGS). The training hyperparameters are from Dhariwal & Nichol 2021, "Diffusion Models Beat GANs
on Image Synthesis", Appendix I (Tables 11-14): AdamW, EMA rate 0.9999, fp16 with loss scaling;
ImageNet 64: batch 2048, lr 3e-4, 540K iterations; ImageNet 128 / 256 / 512: batch 256, lr 1e-4, 4360K /
1980K / 1940K iterations; LSUN: batch 256, lr 1e-4, 200K-500K iterations depending on the class; the
upsamplers 500K (64->256) and 1050K (128->512) iterations. The classifier recipe is the original
README's (given for 128x128, "modify these for other resolutions"), with the paper's iteration counts
(300K at 128, 500K at 256 and 512). The batch size is global: divide it by the number of processes.
"""
from __future__ import annotations

from dataclasses import dataclass

from guided_diffusion.config.presets import PRESETS

__all__ = ["RECIPES", "Recipe", "recipe_command"]

_CLASSIFIER_TRAIN = "--anneal_lr True --batch_size 256 --lr 3e-4 --save_interval 10000 --weight_decay 0.05"
_UPSAMPLER_NOTE = "batch and lr as the base models (not listed separately)"
_CLASSIFIER_ARCH = ("--classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 "
                    "--classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True")


@dataclass(frozen=True)
class Recipe:
    """How a released checkpoint was trained: `command` with `architecture` and `training` flags."""

    preset: str
    command: str  # image_train | super_res_train | classifier_train
    training: str
    note: str = ""

    @property
    def architecture(self) -> str:
        preset = PRESETS[self.preset]
        # Classifiers: the README's flags, with what the released file differs in (e.g. depth 4 at 64x64).
        # Later flags win, as on a command line, so each flag is printed once with its final value.
        merged = dict(_pairs(_CLASSIFIER_ARCH)) if preset.kind == "classifier" else {}
        merged.update(_pairs(preset.flag_string))
        return " ".join(f"{key} {value}" for key, value in merged.items())


def _pairs(flags: str) -> list[tuple[str, str]]:
    tokens = flags.split()
    return list(zip(tokens[0::2], tokens[1::2]))


def _diffusion(batch: int, lr: str, iterations: str) -> str:
    return f"--batch_size {batch} --lr {lr} --ema_rate 0.9999 --save_interval 10000" + (f" --iterations {iterations}" if iterations else "")


RECIPES: dict[str, Recipe] = {r.preset: r for r in [
    Recipe("64x64_diffusion", "image_train", _diffusion(2048, "3e-4", "540000")),
    Recipe("128x128_diffusion", "image_train", _diffusion(256, "1e-4", "4360000")),
    Recipe("256x256_diffusion", "image_train", _diffusion(256, "1e-4", "1980000")),
    Recipe("256x256_diffusion_uncond", "image_train", _diffusion(256, "1e-4", ""),
           note="iterations not listed in the paper's table; the conditional 256 model ran 1980K"),
    Recipe("512x512_diffusion", "image_train", _diffusion(256, "1e-4", "1940000")),
    Recipe("lsun_bedroom", "image_train", _diffusion(256, "1e-4", ""), note="LSUN models ran 200K-500K iterations depending on the class"),
    Recipe("lsun_cat", "image_train", _diffusion(256, "1e-4", ""), note="LSUN models ran 200K-500K iterations depending on the class"),
    Recipe("lsun_horse", "image_train", _diffusion(256, "1e-4", ""), note="LSUN models ran 200K-500K iterations depending on the class"),
    Recipe("64_256_upsampler", "super_res_train", _diffusion(256, "1e-4", "500000"), note=_UPSAMPLER_NOTE),
    Recipe("128_512_upsampler", "super_res_train", _diffusion(256, "1e-4", "1050000"), note=_UPSAMPLER_NOTE),
    Recipe("64x64_classifier", "classifier_train", _CLASSIFIER_TRAIN + " --iterations 300000",
           note="the README's 128x128 recipe; the released 64x64 classifier is deeper (--classifier_depth 4)"),
    Recipe("128x128_classifier", "classifier_train", _CLASSIFIER_TRAIN + " --iterations 300000"),
    Recipe("256x256_classifier", "classifier_train", _CLASSIFIER_TRAIN + " --iterations 500000"),
    Recipe("512x512_classifier", "classifier_train", _CLASSIFIER_TRAIN + " --iterations 500000"),
]}


def recipe_command(recipe: Recipe, data_dir: str = "DATA_DIR") -> str:
    """The full command line of a recipe."""
    return f"guided-diffusion {recipe.command} --data_dir {data_dir} {recipe.architecture} {recipe.training}"


def recipes_text() -> str:
    """What `guided-diffusion presets --training` prints."""
    lines = ["Training recipes of the released models (Dhariwal & Nichol 2021, Appendix I; classifiers: the original README).",
             "Batch sizes are global: pass --batch_size B/N to each of N processes. Fine-tune instead with --init_from PRESET.", ""]
    for recipe in RECIPES.values():
        lines.append(f"{recipe.preset}:")
        lines.append(f"  {recipe_command(recipe)}")
        if recipe.note:
            lines.append(f"  ({recipe.note})")
    return "\n".join(lines)
