"""The shared run machinery: one resolver with one precedence (defaults < preset < saved config < typed),
one "which flags were typed", one "decide on rank 0 and broadcast", one seed source."""
from __future__ import annotations

import argparse

import pytest
import torch
from helpers import run_ranks

from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.config.presets import Preset
from guided_diffusion.config.resolve import resolve_network, typed_flags
from guided_diffusion.runtime.distributed import decide_on_rank0
from guided_diffusion.runtime.errors import SettingError, UserError
from guided_diffusion.runtime.rng import choose_seed
from guided_diffusion.weights.checkpoints import save_checkpoint, write_config_json

PRESET = Preset("tiny", "diffusion", 8, "--image_size 8 --num_channels 64 --num_res_blocks 3 --use_fp16 True", 1)


def _values(**typed):
    return {**DiffusionConfig().to_dict(), **ModelConfig().to_dict(), **typed}


def test_typed_flags_are_the_flags_on_the_command_line_by_setting_name():
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_channels", type=int, default=128)
    parser.add_argument("--bf16", "--use_bf16", dest="bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=None)
    assert typed_flags(parser, ["--num_channels", "128", "--use_bf16"]) == {"num_channels", "bf16"}
    assert typed_flags(parser, ["--seed=3"]) == {"seed"}  # typed at its default still counts as typed
    assert typed_flags(parser, []) == set()


def test_each_source_wins_over_the_ones_below_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = save_checkpoint(run_dir / "model.pt", {"w": torch.zeros(1)})
    write_config_json(run_dir, config_to_dict(ModelConfig(image_size=8, num_channels=32, num_res_blocks=2,
                                                          use_fp16=True, dropout=0.3)))
    resolved = resolve_network("diffusion", _values(num_res_blocks=5), {"num_res_blocks"}, preset=PRESET, checkpoint=path)
    values = resolved.values
    assert values["num_res_blocks"] == 5  # typed beats the saved config and the preset
    assert values["num_channels"] == 32  # the saved config beats the preset
    assert values["use_fp16"] is True and values["dropout"] == 0.0  # run choices: preset yes, saved config no
    assert values["attention_resolutions"] == ModelConfig().attention_resolutions  # nobody set it: the default
    assert resolved.filled_from("checkpoint") == sorted(set(ModelConfig(image_size=8).to_dict()) - {
        "use_fp16", "use_checkpoint", "dropout", "num_res_blocks"})
    assert resolved.filled_from("preset") == ["use_fp16"]
    assert resolved.sources["num_res_blocks"] == "typed"
    network = resolved.network()
    assert isinstance(network, ModelConfig) and (network.num_channels, network.num_res_blocks) == (32, 5)


def test_a_typed_architecture_that_cannot_load_the_presets_own_file_is_refused():
    with pytest.raises(SettingError, match="num_channels 32 does not fit preset 'tiny'") as info:
        resolve_network("diffusion", _values(num_channels=32), {"num_channels"}, preset=PRESET)
    assert info.value.setting == "num_channels"
    with pytest.raises(SettingError, match="num_classes"):  # a setting the preset leaves at its default counts too
        resolve_network("diffusion", _values(num_classes=10), {"num_classes"}, preset=PRESET)
    # the same value, a run choice, or the user's own checkpoint: fine
    assert resolve_network("diffusion", _values(num_channels=64, use_fp16=False), {"num_channels", "use_fp16"},
                           preset=PRESET).values["use_fp16"] is False
    assert resolve_network("diffusion", _values(num_channels=32), {"num_channels"}, preset=PRESET,
                           checkpoint="elsewhere.pt").values["num_channels"] == 32


def test_a_classifier_takes_its_own_section_of_a_run_directory_config(tmp_path):
    path = save_checkpoint(tmp_path / "classifier.pt", {"w": torch.zeros(1)})
    saved = config_to_dict(ModelConfig(image_size=8))
    saved["classifier"] = ClassifierConfig(image_size=8, classifier_depth=3).to_dict()
    write_config_json(tmp_path, saved)
    values = {**ClassifierConfig().to_dict()}
    resolved = resolve_network("classifier", values, checkpoint=path)
    assert resolved.values["classifier_depth"] == 3 and resolved.values["image_size"] == 8
    assert isinstance(resolved.network(), ClassifierConfig)
    assert resolve_network("diffusion", _values(), checkpoint=path).values["image_size"] == 8


def test_decide_on_rank0_alone_is_the_action():
    assert decide_on_rank0(lambda: 7) == 7
    with pytest.raises(UserError, match="no"):
        decide_on_rank0(lambda: (_ for _ in ()).throw(UserError("no")))
    assert choose_seed(5) == (5, False)
    seed, chosen = choose_seed(None)
    assert chosen and 0 <= seed < 2**31


def test_two_ranks_share_rank0s_seed_and_its_refusal():
    code = """
import torch.distributed as dist
from guided_diffusion.runtime import distributed
from guided_diffusion.runtime.errors import SettingError
from guided_diffusion.runtime.rng import choose_seed
distributed.setup_dist()
seed, chosen = choose_seed(None)
def refuse():
    raise SettingError("seed", "seed must be >= 0")
try:
    distributed.decide_on_rank0(refuse)
except SettingError as exc:
    print(seed, chosen, exc.setting, exc, flush=True)
dist.barrier()
"""
    results = run_ranks(code)
    assert all(rc == 0 for rc, _, _ in results), results
    outputs = [out.split() for _, out, _ in results]
    assert outputs[0] == outputs[1] and outputs[0][1:] == ["True", "seed", "seed", "must", "be", ">=", "0"]
