"""The bfloat16 path (issue 22): networks prepared once by `prepare_for_bf16` agree with float32 to bfloat16
precision, keep float32 where the numerics need it, run without autocast, and give the guidance gradient
in float32; `bf16_is_native` and the slowness warning. Speed is measured by benchmarks/bench_bf16_cpu.py."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_zero_layers, rel_err

from guided_diffusion.config import ClassifierConfig, ModelConfig
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.models.layers import GroupNorm32
from guided_diffusion.runtime import autocast as autocast_module
from guided_diffusion.runtime.autocast import (
    autocast_for,
    bf16_is_native,
    bf16_slowness,
    network_dtype,
    warn_if_bf16_is_slow,
)
from guided_diffusion.runtime.performance import prepare_for_bf16
from guided_diffusion.sampling.guidance import GuidedModel, classifier_cond_fn

BF16 = torch.bfloat16


def tiny_unet(new_order: bool):
    cfg = ModelConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8,4",
                      num_head_channels=16, learn_sigma=True, class_cond=True, num_classes=10, resblock_updown=True,
                      use_scale_shift_norm=True, use_new_attention_order=new_order)
    torch.manual_seed(0)
    return randomise_zero_layers(cfg.build(), 1).eval()


def tiny_classifier(pool: str = "attention"):
    cfg = ClassifierConfig(image_size=16, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                           classifier_attention_resolutions="8", classifier_num_head_channels=16, num_classes=10,
                           classifier_pool=pool)
    torch.manual_seed(0)
    return randomise_zero_layers(cfg.build(), 2).eval()


def inputs(n: int = 3):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.tensor([10, 400, 900][:n]), torch.tensor([1, 4, 8][:n])


@pytest.mark.parametrize("new_order", [True, False])
def test_prepared_unet_runs_a_bf16_torso_and_agrees_with_fp32(new_order):
    unet = tiny_unet(new_order)
    x, t, y = inputs()
    with torch.no_grad():
        expected = unet(x, t, y=y)
        prepared = prepare_for_bf16(copy.deepcopy(unet))
        got = prepared(x, t, y=y)
    assert got.dtype == torch.float32 and network_dtype(prepared) == BF16
    assert rel_err(got, expected) < 3e-2
    # Convolutions of the torso hold bfloat16; the embedding, norms and the head stay float32.
    torso = [m for part in (prepared.input_blocks, prepared.middle_block, prepared.output_blocks) for m in part.modules()]
    assert all(m.weight.dtype == BF16 for m in torso if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)))
    assert all(m.weight.dtype == torch.float32 for m in torso if isinstance(m, (GroupNorm32, torch.nn.Linear)))
    assert all(p.dtype == torch.float32 for p in [*prepared.time_embed.parameters(), *prepared.out.parameters()])
    assert prepared.input_blocks[1][0].in_layers[2].weight.is_contiguous(memory_format=torch.channels_last)


def test_convert_to_fp32_undoes_bf16():
    unet = tiny_unet(True)
    x, t, y = inputs()
    prepared = prepare_for_bf16(copy.deepcopy(unet), channels_last=False)
    prepared.convert_to_fp32()
    assert network_dtype(prepared) == torch.float32 and all(p.dtype == torch.float32 for p in prepared.parameters())
    with torch.no_grad():
        assert rel_err(prepared(x, t, y=y), unet(x, t, y=y)) < 1e-2  # the weights went through bfloat16


@pytest.mark.parametrize("pool", ["attention", "adaptive", "spatial"])
@pytest.mark.parametrize("scaling", ["none", "entropy"])
def test_guidance_gradient_of_a_prepared_classifier_is_float32_and_agrees(pool, scaling):
    classifier = tiny_classifier(pool)
    x, t, y = inputs()
    expected = classifier_cond_fn(classifier, 3.0, scaling=scaling)(x, t, y=y)
    autocast_got = classifier_cond_fn(classifier, 3.0, autocast_dtype=BF16, scaling=scaling)(x, t, y=y)
    prepared = prepare_for_bf16(copy.deepcopy(classifier))
    got = classifier_cond_fn(prepared, 3.0, autocast_dtype=BF16, scaling=scaling)(x, t, y=y)
    assert got.dtype == torch.float32 and got.shape == x.shape
    # A gradient through a bfloat16 network differs from float32 by a few percent (more with spatial
    # pooling, which sums every block's features); the prepared network is as close as autocast.
    assert rel_err(got, expected) < min(0.1, 1.3 * max(rel_err(autocast_got, expected), 0.02))
    # Its backward runs GroupNorm, slow in NHWC on a CPU: the classifier keeps NCHW there.
    assert not prepared.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_prepared_networks_run_without_autocast_and_others_under_it():
    unet = tiny_unet(True)
    prepared = prepare_for_bf16(copy.deepcopy(unet))
    x, t, y = inputs()
    seen = []
    for network in (unet, prepared):
        hook = network.time_embed.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
        with torch.no_grad():
            GuidedModel(network, class_cond=True, autocast_dtype=BF16)(x, t, y=y)
        hook.remove()
    assert seen == [True, False]
    # The check looks through wrappers: torch.compile's (`_orig_mod`) and DDP's (`module`).
    compiled, parallel = torch.nn.Module(), torch.nn.Module()
    compiled._orig_mod, parallel.module = prepared, compiled
    assert network_dtype(parallel) == BF16 and network_dtype(unet) == torch.float32
    with autocast_for(parallel, torch.device("cpu"), BF16):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for(unet, torch.device("cpu"), BF16):
        assert torch.is_autocast_enabled("cpu")


def test_guided_model_on_a_prepared_unet_matches_autocast_to_bf16_precision():
    unet = tiny_unet(False)
    x, t, y = inputs()
    with torch.no_grad():
        reference = GuidedModel(unet, class_cond=True)(x, t, y=y)
        autocast_out = GuidedModel(unet, class_cond=True, autocast_dtype=BF16)(x, t, y=y)
        prepared_out = GuidedModel(prepare_for_bf16(copy.deepcopy(unet)), class_cond=True, autocast_dtype=BF16)(x, t, y=y)
    assert prepared_out.dtype == autocast_out.dtype == torch.float32
    assert rel_err(autocast_out, reference) < 3e-2 and rel_err(prepared_out, reference) < 3e-2


def test_group_norm_keeps_bf16_activations_with_float32_statistics():
    norm = GroupNorm32(4, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = (torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0)) * 50 + 300).to(BF16)
    with torch.no_grad():
        out = norm(x)
    assert out.dtype == BF16
    expected = F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps)
    # A large mean: bfloat16 statistics would lose the variance; float32 ones keep bfloat16 rounding only.
    assert rel_err(out, expected) < 5e-3
    assert norm(x.half()).dtype == torch.float16  # fp16 keeps the original's upcast


def test_bf16_attention_on_cpu_agrees_with_the_original_formula():
    unet = tiny_unet(True)
    x, t, y = inputs()
    prepared = prepare_for_bf16(copy.deepcopy(unet))
    with torch.no_grad():
        with attention_backend("math"):
            expected = unet(x, t, y=y)
        got = prepared(x, t, y=y)
    assert rel_err(got, expected) < 3e-2


def test_prepare_refuses_a_module_without_a_bf16_torso():
    with pytest.raises(TypeError, match="convert_to_bf16"):
        prepare_for_bf16(torch.nn.Linear(2, 2))


def test_bf16_is_native_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(autocast_module, "_cpu_has_native_bf16", lambda: False)
    assert not bf16_is_native("cpu")
    message = bf16_slowness("cpu")
    assert message is not None and "\n" not in message and "slower" in message and "--bf16" in message
    with pytest.warns(RuntimeWarning, match="slower than float32"):
        assert warn_if_bf16_is_slow(torch.device("cpu"))
    monkeypatch.setattr(autocast_module, "_cpu_has_native_bf16", lambda: True)
    assert bf16_is_native(torch.device("cpu")) and bf16_slowness("cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_bf16_is_slow("cpu")
    if not torch.cuda.is_available():
        assert not bf16_is_native("cuda")


def test_cpu_bf16_detection_reads_this_machine():
    """Whatever this CPU is, the answer agrees with the flags the kernel reports for it."""
    autocast_module._cpu_has_native_bf16.cache_clear()
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert bf16_is_native("cpu") == bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))
