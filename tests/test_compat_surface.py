"""The drop-in surface: released-checkpoint key layouts, module names, flag parsing."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from helpers import COMPAT

from guided_diffusion import script_util
from guided_diffusion.config.presets import PRESETS, parse_flag_string

MANIFESTS = sorted(COMPAT.glob("*.json"))


def build_from_manifest(manifest: dict) -> torch.nn.Module:
    flags = parse_flag_string(manifest["flags"])
    with torch.device("meta"):  # shapes only, no memory
        if manifest["kind"] == "classifier":
            args = {**script_util.classifier_defaults(), **flags}
            return script_util.create_classifier(**{k: args[k] for k in script_util.classifier_defaults()})
        if manifest["kind"] == "super_resolution":
            args = {**script_util.sr_model_and_diffusion_defaults(), **flags}
            return script_util.sr_create_model_and_diffusion(**args)[0]
        args = {**script_util.model_and_diffusion_defaults(), **flags}
        return script_util.create_model_and_diffusion(**args)[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_released_key_layout(path):
    manifest = json.loads(path.read_text())
    model = build_from_manifest(manifest)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == [[k, list(s)] for k, s in manifest["keys"]]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_presets_build_released_layout(path):
    """Each preset's flags reproduce the manifest (LSUN cat/horse share lsun_bedroom's)."""
    manifest = json.loads(path.read_text())
    from guided_diffusion.weights.checkpoints import preset_network_config

    names = [path.stem] + ([f"lsun_{a}" for a in ("cat", "horse", "horse_nodropout")] if path.stem == "lsun_bedroom" else [])
    for name in names:
        with torch.device("meta"):
            model = preset_network_config(PRESETS[name]).build()
        assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == [[k, list(s)] for k, s in manifest["keys"]]


def test_fifteen_presets():
    assert len(PRESETS) == 15
    assert PRESETS["128x128_diffusion"].flags["num_heads"] == 4
    assert PRESETS["64x64_diffusion"].flags["use_new_attention_order"] is True
    assert PRESETS["256x256_diffusion_uncond"].classifier_scale == 10.0
    assert PRESETS["512x512_diffusion"].url.endswith("/jul-2021/512x512_diffusion.pt")


def test_compat_imports_without_mpi():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "from guided_diffusion import script_util, gaussian_diffusion, respace, unet, nn, losses, dist_util, logger\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("module,names", [
    ("script_util", ["NUM_CLASSES", "diffusion_defaults", "model_and_diffusion_defaults", "classifier_defaults",
                     "classifier_and_diffusion_defaults", "sr_model_and_diffusion_defaults", "create_model_and_diffusion",
                     "create_model", "create_classifier_and_diffusion", "create_classifier", "sr_create_model_and_diffusion",
                     "sr_create_model", "create_gaussian_diffusion", "add_dict_to_argparser", "args_to_dict", "str2bool"]),
    ("gaussian_diffusion", ["get_named_beta_schedule", "betas_for_alpha_bar", "ModelMeanType", "ModelVarType", "LossType",
                            "GaussianDiffusion", "_extract_into_tensor"]),
    ("respace", ["space_timesteps", "SpacedDiffusion"]),
    ("unet", ["UNetModel", "SuperResModel", "EncoderUNetModel", "AttentionPool2d", "ResBlock", "AttentionBlock", "Upsample",
              "Downsample", "TimestepBlock", "TimestepEmbedSequential", "QKVAttention", "QKVAttentionLegacy"]),
    ("nn", ["timestep_embedding", "mean_flat", "update_ema", "normalization", "zero_module", "scale_module", "conv_nd",
            "linear", "avg_pool_nd", "checkpoint"]),
    ("losses", ["normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood"]),
])
def test_compat_names(module, names):
    import importlib

    mod = importlib.import_module(f"guided_diffusion.{module}")
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing


def test_original_readme_idiom_and_booleans():
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, script_util.model_and_diffusion_defaults())
    args = parser.parse_args("--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 "
                             "--attention_resolutions 16 --learn_sigma yes --class_cond 1 --use_fp16 F".split())
    assert args.learn_sigma is True and args.class_cond is True and args.use_fp16 is False
    model, diffusion = script_util.create_model_and_diffusion(
        **script_util.args_to_dict(args, script_util.model_and_diffusion_defaults().keys()))
    assert model.out_channels == 6 and model.num_classes == 1000 and diffusion.num_timesteps == 1000
    with pytest.raises(SystemExit):
        parser.parse_args(["--use_fp16", "maybe"])


def test_new_flags_keep_old_behaviour_and_extend():
    m = script_util.create_model(32, 64, 1, channel_mult="0.5,1", attention_resolutions="16", class_cond=True,
                                 num_classes=10, class_dropout_prob=0.1)
    assert m.input_blocks[0][0].out_channels == 32  # 0.5 * 64
    assert m.label_emb.weight.shape[0] == 11  # 10 classes + the null label
    c = script_util.create_classifier(16, False, 32, 1, "8", True, True, "attention", classifier_channel_mult="1,2",
                                      classifier_num_head_channels=16, num_classes=10)
    assert c(torch.randn(2, 3, 16, 16), torch.tensor([0, 5])).shape == (2, 10)
