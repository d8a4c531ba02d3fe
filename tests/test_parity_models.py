"""Networks against the golden outputs of the original code (relative error < 1e-4)."""
import pytest
import torch
from helpers import load_fixture, rel_err

from guided_diffusion import script_util, unet
from guided_diffusion.models.attention import attention_backend

TOL = 1e-4


def build_unet(kwargs: dict) -> torch.nn.Module:
    defaults = script_util.model_and_diffusion_defaults()
    args = {k: kwargs.get(k, v) for k, v in defaults.items()}
    model, _ = script_util.create_model_and_diffusion(**args)
    return model


@pytest.mark.parametrize("name", ["unet_adm64style", "unet_adm128style", "unet_iddpm_style"])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_unet_matches_original(name, backend):
    fx = load_fixture(name)
    model = build_unet(fx["create_model_kwargs"])
    model.load_state_dict(fx["state_dict"])  # strict: same names and shapes
    model.eval()
    kwargs = {} if fx["y"] is None else {"y": fx["y"]}
    with torch.no_grad(), attention_backend(backend):
        out = model(fx["x"], fx["timesteps"], **kwargs)
    assert rel_err(out, fx["output"]) < TOL


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial", "spatial_v2"])
def test_classifier_matches_original(pool):
    fx = load_fixture(f"classifier_{pool}")
    model = unet.EncoderUNetModel(**fx["encoder_unet_kwargs"])
    model.load_state_dict(fx["state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(fx["x"], fx["timesteps"])
    assert out.shape == fx["output"].shape
    assert rel_err(out, fx["output"]) < TOL


def test_superres_matches_original():
    fx = load_fixture("superres")
    model = unet.SuperResModel(**fx["superres_kwargs"])
    model.load_state_dict(fx["state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(fx["x"], fx["timesteps"], low_res=fx["low_res"], y=fx["y"])
    assert rel_err(out, fx["output"]) < TOL


def test_wrong_attention_order_changes_output():
    """The two orders share shapes but not arithmetic: loading into the wrong one must not match."""
    fx = load_fixture("unet_adm64style")
    kwargs = dict(fx["create_model_kwargs"], use_new_attention_order=False)
    model = build_unet(kwargs)
    model.load_state_dict(fx["state_dict"])
    model.eval()
    with torch.no_grad():
        out = model(fx["x"], fx["timesteps"], y=fx["y"])
    assert rel_err(out, fx["output"]) > 1e-3


def test_use_checkpoint_same_output_and_gradients():
    fx = load_fixture("unet_adm64style")
    plain = build_unet(fx["create_model_kwargs"])
    ckpt = build_unet(dict(fx["create_model_kwargs"], use_checkpoint=True))
    for m in (plain, ckpt):
        m.load_state_dict(fx["state_dict"])
    grads = []
    for m in (plain, ckpt):
        x = fx["x"].clone().requires_grad_(True)
        m(x, fx["timesteps"], y=fx["y"]).square().mean().backward()
        grads.append(x.grad)
    assert rel_err(grads[1], grads[0]) < 1e-5


def test_fp16_boundaries():
    """convert_to_fp16 casts torso convolutions only; embeddings, norms and the head stay fp32."""
    fx = load_fixture("unet_adm128style")
    model = build_unet(dict(fx["create_model_kwargs"], use_fp16=True))
    model.load_state_dict(fx["state_dict"])
    model.convert_to_fp16()
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["input_blocks.0.0.weight"] == torch.float16
    assert dtypes["middle_block.1.qkv.weight"] == torch.float16
    assert dtypes["output_blocks.0.0.in_layers.2.weight"] == torch.float16
    assert dtypes["time_embed.0.weight"] == torch.float32
    assert dtypes["label_emb.weight"] == torch.float32
    assert dtypes["input_blocks.1.0.in_layers.0.weight"] == torch.float32  # GroupNorm
    assert dtypes["input_blocks.1.0.emb_layers.1.weight"] == torch.float32  # Linear
    assert dtypes["out.2.weight"] == torch.float32
    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_timestep_embedding_is_cos_then_sin():
    from guided_diffusion.nn import timestep_embedding

    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    assert torch.allclose(emb[0, :4], torch.ones(4))  # cos(0)
    assert torch.allclose(emb[0, 4:], torch.zeros(4))  # sin(0)
    assert torch.allclose(emb[1, 0], torch.cos(torch.tensor(3.0)))
    assert timestep_embedding(t, 7).shape == (2, 7)  # odd width is zero-padded
