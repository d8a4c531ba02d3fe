"""`guided-diffusion presets --training`: each released model's training recipe parses with its
training command and builds exactly the released architecture."""
from __future__ import annotations

import shlex

import pytest
from helpers import run_cli

from guided_diffusion.cli.train import build_parser
from guided_diffusion.config import ClassifierConfig, ModelConfig, SuperResConfig
from guided_diffusion.config.presets import PRESETS
from guided_diffusion.training.recipes import RECIPES, recipe_command
from guided_diffusion.weights.checkpoints import preset_network_config


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_the_released_architecture(name):
    recipe = RECIPES[name]
    tokens = shlex.split(recipe_command(recipe, data_dir="/data"))
    assert tokens[:2] == ["guided-diffusion", recipe.command]
    args = build_parser(recipe.command).parse_args(tokens[2:])
    config_class = {"image_train": ModelConfig, "super_res_train": SuperResConfig, "classifier_train": ClassifierConfig}[recipe.command]
    built = config_class.from_flags(vars(args))
    assert built.to_dict() == preset_network_config(PRESETS[name]).to_dict()
    assert args.lr > 0 and args.batch_size >= 256


def test_presets_training_lists_every_recipe():
    result = run_cli(["presets", "--training"])
    assert result.returncode == 0, result.stderr
    for name, recipe in RECIPES.items():
        assert f"{name}:" in result.stdout
        assert recipe_command(recipe) in result.stdout
    assert "--iterations 540000" in result.stdout and "--batch_size 2048 --lr 3e-4" in result.stdout
