"""The opt-in fast paths agree with the plain path (no timing here: benchmarks/ measures speed)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_zero_layers

from guided_diffusion import script_util
from guided_diffusion.config import ClassifierConfig, ModelConfig
from guided_diffusion.models.attention import attention_backend
from guided_diffusion.runtime.performance import matmul_precision, optimize_model, unwrap

# torch.compile calls torch.jit.script_method internally, which torch 2.13 marks deprecated: torch's own
# warning, not this package's.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOL = 1e-4


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    unet_cfg = ModelConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                           attention_resolutions="8", num_head_channels=16, learn_sigma=True, class_cond=True,
                           num_classes=10, resblock_updown=True, use_new_attention_order=True)
    clf_cfg = ClassifierConfig(image_size=16, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                               classifier_attention_resolutions="8", classifier_num_head_channels=16, num_classes=10)
    unet, classifier = randomise_zero_layers(unet_cfg.build(), 1, scale=0.05), randomise_zero_layers(clf_cfg.build(), 2, scale=0.05)
    return (unet_cfg, unet.eval()), (clf_cfg, classifier.eval())


def copy_of(cfg, net):
    other = cfg.build().eval()
    other.load_state_dict(net.state_dict())
    return other


def guided_step(model, classifier, diffusion, x, t, y):
    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logp = F.log_softmax(classifier(x_in, t), dim=-1)[torch.arange(len(y)), y]
            return torch.autograd.grad(logp.sum(), x_in)[0] * 2.0

    return diffusion.ddim_sample(model, x, t, cond_fn=cond_fn, model_kwargs={"y": y})["sample"]


def inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(3, 3, 16, 16, generator=gen), torch.tensor([3, 7, 9]), torch.tensor([1, 4, 8])


def test_channels_last_guided_step_matches(nets):
    (ucfg, unet), (ccfg, clf) = nets
    diffusion = script_util.create_gaussian_diffusion(steps=100, learn_sigma=True, timestep_respacing="10")
    x, t, y = inputs()
    with attention_backend("math"):
        plain = guided_step(unet, clf, diffusion, x, t, y)
    fast = guided_step(optimize_model(copy_of(ucfg, unet), channels_last=True),
                       optimize_model(copy_of(ccfg, clf), channels_last=True), diffusion, x, t, y)
    assert rel(fast, plain) < TOL


def test_channels_last_training_gradients_match(nets):
    (ucfg, unet), _ = nets
    diffusion = script_util.create_gaussian_diffusion(steps=100, learn_sigma=True)
    x, _, y = inputs()
    t = torch.tensor([5, 50, 95])
    noise = torch.randn_like(x)
    grads = []
    for channels_last in (False, True):
        model = optimize_model(copy_of(ucfg, unet).train(), channels_last=channels_last)
        loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y}, noise=noise)["loss"].mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel(grads[1], grads[0]) < TOL


def test_compiled_model_matches_and_unwraps(nets):
    """torch.compile (inductor, CPU) gives the plain path's numbers; unwrap reaches the module."""
    (ucfg, unet), _ = nets
    x, t, y = inputs()
    with torch.no_grad():
        plain = unet(x, t, y=y)
        compiled = optimize_model(copy_of(ucfg, unet), compile=True)
        fast = compiled(x, t, y=y)
    assert rel(fast, plain) < TOL
    assert unwrap(compiled).num_classes == 10


def test_matmul_precision_restores_flags():
    before = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(not before):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before)
    assert torch.backends.cuda.matmul.allow_tf32 is before


def test_training_cli_channels_last_matches_plain(tmp_path):
    """`image_train --channels_last True` trains to the same weights as the default layout."""
    from helpers import make_blob_dataset, run_cli

    data = make_blob_dataset(tmp_path / "data", count=8, size=8)
    flags = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
             "--attention_resolutions", "4", "--diffusion_steps", "50", "--num_workers", "0", "--batch_size", "4",
             "--iterations", "4", "--save_interval", "2", "--seed", "3", "--progress", "False", "--lr", "1e-3"]
    runs = {}
    for layout in ("False", "True"):
        run = tmp_path / f"run_{layout}"
        result = run_cli(["image_train", "--data_dir", str(data), "--log_dir", str(run), "--channels_last", layout, *flags])
        assert result.returncode == 0, result.stderr[-2000:]
        runs[layout] = [torch.load(run / f"model00000{s}.pt", weights_only=True) for s in (2, 4)]
    (plain2, plain4), (_, fast4) = runs["False"], runs["True"]
    assert plain4.keys() == fast4.keys()

    def flat(state_dict):
        return torch.cat([v.flatten() for v in state_dict.values()])

    update = flat(plain4) - flat(plain2)  # what two optimizer steps changed
    assert update.norm() > 0
    assert (flat(fast4) - flat(plain4)).norm() / update.norm() < 1e-3
