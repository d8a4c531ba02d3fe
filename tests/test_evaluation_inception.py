"""The TF1 resize, the FID Inception network, its weights file handling and the Inception extractor."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_random_weights

from guided_diffusion.evaluation import InceptionFeatureExtractor, InceptionV3, resize_bilinear_tf1
from guided_diffusion.evaluation.inception import InceptionA, InceptionC, InceptionE
from guided_diffusion.evaluation.weights import inception_weights_file, load_inception_network
from guided_diffusion.runtime.errors import UserError

# ---------------------------------------------------------------- TF1 bilinear resize


def _tf1_resize_numpy(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1 resize_bilinear (align_corners=False, half_pixel_centers=False), pixel by pixel:
    source = dst * (in / out) in float32; lower = floor, upper = min(ceil, in - 1); lerp x then y."""
    in_h, in_w = image.shape
    scale_y = np.float32(in_h) / np.float32(out_h)
    scale_x = np.float32(in_w) / np.float32(out_w)
    out = np.zeros((out_h, out_w), dtype=np.float32)
    for y in range(out_h):
        src_y = np.float32(y) * scale_y
        y0, y1 = int(np.floor(src_y)), min(int(np.ceil(src_y)), in_h - 1)
        wy = np.float32(src_y - np.floor(src_y))
        for x in range(out_w):
            src_x = np.float32(x) * scale_x
            x0, x1 = int(np.floor(src_x)), min(int(np.ceil(src_x)), in_w - 1)
            wx = np.float32(src_x - np.floor(src_x))
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * wx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * wx
            out[y, x] = top + (bottom - top) * wy
    return out


@pytest.mark.parametrize("in_size,out_size", [((5, 7), (11, 3)), ((9, 9), (4, 4)), ((3, 4), (13, 17)),
                                              ((32, 24), (299, 60))])
def test_resize_matches_tf1_formula(in_size, out_size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=in_size).astype(np.float32)
    got = resize_bilinear_tf1(torch.from_numpy(image)[None, None], out_size)[0, 0].numpy()
    np.testing.assert_allclose(got, _tf1_resize_numpy(image, *out_size), rtol=0, atol=1e-4)
    # The TF1 grid is not torch's half-pixel grid: a test that passed for both would prove nothing.
    half_pixel = F.interpolate(torch.from_numpy(image)[None, None], size=out_size, mode="bilinear",
                               align_corners=False)[0, 0].numpy()
    assert np.abs(got - half_pixel).max() > 1


def test_resize_handles_batches_channels_and_identity():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, size=(2, 3, 6, 5)).astype(np.float32))
    got = resize_bilinear_tf1(images, (8, 9))
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c].numpy(), _tf1_resize_numpy(images[n, c].numpy(), 8, 9), atol=1e-4)
    assert resize_bilinear_tf1(images, (6, 5)) is images


# ---------------------------------------------------------------- network structure


def test_state_dict_uses_pytorch_fid_names_and_shapes():
    state = InceptionV3().state_dict()
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6d.branch1x1.conv.weight": (192, 768, 1, 1),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.bn.bias": (384,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith("AuxLogits") for key in state)
    # torchvision's Inception3 has 27,161,264 parameters; minus its auxiliary head (3,326,696) and
    # plus 8 more classes (8 * 2049) gives the FID network's count.
    assert sum(p.numel() for p in InceptionV3().parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    assert all(m.eps == 1e-3 for m in InceptionV3().modules() if isinstance(m, torch.nn.BatchNorm2d))


def _pool_branch(block, x):
    return block(x)[:, -block.branch_pool.conv.out_channels :]


@pytest.mark.parametrize("block,channels,size", [
    (InceptionA(192, pool_features=32), 192, 9),
    (InceptionC(768, channels_7x7=128), 768, 5),
    (InceptionE(1280, pool="avg"), 1280, 4),
])
def test_average_pool_branches_exclude_padding(block, channels, size):
    x = torch.rand(1, channels, size, size)
    with torch.no_grad():
        got = _pool_branch(block.eval(), x)
        tf_style = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        torchvision_style = block.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True))
    torch.testing.assert_close(got, tf_style)
    assert not torch.allclose(got, torchvision_style)


def test_mixed_7c_max_pools():
    network = InceptionV3().eval()
    x = torch.rand(1, 2048, 4, 4)
    with torch.no_grad():
        got = _pool_branch(network.Mixed_7c, x)
        expected = network.Mixed_7c.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1))
    torch.testing.assert_close(got, expected)
    assert network.Mixed_7b.pool == "avg"


# ---------------------------------------------------------------- weights and forward pass


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    return write_random_weights(tmp_path_factory.mktemp("inception") / "random_inception.pth")


@pytest.fixture(scope="module")
def loaded_network(weights_path):
    return load_inception_network(weights_path)


@pytest.mark.parametrize("size", [64, 256, 512])
def test_features_have_the_evaluator_shapes_for_any_input_size(loaded_network, size):
    images = torch.rand(1, 3, size, size) * 255
    with torch.inference_mode():
        out = loaded_network(images)
        unbiased_logits = out.pool @ loaded_network.fc.weight.t()
    assert out.pool.shape == (1, 2048)
    assert out.spatial.shape == (1, 7, 17, 17)
    assert out.logits.shape == (1, 1008)
    # IS logits use fc's weight only (the TF graph's MatMul has no bias).
    torch.testing.assert_close(out.logits, unbiased_logits)
    assert out.pool.abs().max() > 1e-3  # random weights still give non-degenerate features


def test_loaded_weights_are_the_saved_ones(weights_path, loaded_network):
    saved = torch.load(weights_path, weights_only=True)
    for key, value in loaded_network.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_spatial_features_come_from_mixed_6d_branch1x1(loaded_network):
    captured = {}
    hook = loaded_network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        with torch.inference_mode():
            out = loaded_network(torch.rand(1, 3, 64, 64) * 255)
    finally:
        hook.remove()
    torch.testing.assert_close(out.spatial, captured["out"][:, :7])


def test_extractor_fuses_batchnorm_and_flattens_spatial_like_tf(weights_path, loaded_network):
    images = np.random.default_rng(2).integers(0, 256, size=(1, 64, 64, 3), dtype=np.uint8)
    extractor = InceptionFeatureExtractor.from_weights(weights_path, device="cpu", progress=False)
    features = extractor.extract(images)
    with torch.inference_mode():
        reference = loaded_network(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    np.testing.assert_allclose(features.pool, reference.pool.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(features.logits, reference.logits.numpy(), rtol=1e-3, atol=1e-3)
    # TF flattened mixed_6/conv[..., :7] in NHWC order: index = (row * 17 + column) * 7 + channel.
    nhwc = reference.spatial.permute(0, 2, 3, 1).reshape(1, -1).numpy()
    assert features.spatial.shape == (1, 2023)
    np.testing.assert_allclose(features.spatial, nhwc, rtol=1e-3, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.network.modules())


def test_wrong_weights_files_are_user_errors(tmp_path, loaded_network):
    with pytest.raises(UserError, match="not found"):
        load_inception_network(tmp_path / "missing.pth")
    state = loaded_network.state_dict()
    torchvision_like = {**state, "AuxLogits.fc.weight": torch.zeros(1000, 768)}
    torch.save(torchvision_like, tmp_path / "aux.pth")
    with pytest.raises(UserError, match="unexpected"):
        load_inception_network(tmp_path / "aux.pth")
    wrong_classes = {**state, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(wrong_classes, tmp_path / "fc.pth")
    with pytest.raises(UserError, match="fc.weight has shape"):
        load_inception_network(tmp_path / "fc.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_inception_network(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a state dict"):
        load_inception_network(tmp_path / "list.pth")


@pytest.fixture()
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_weights_download_once_into_cache_with_hash_prefix_check(file_server, tmp_path, monkeypatch, weights_path):
    served, base = file_server
    payload = weights_path.read_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    name = f"pt_inception-test-{prefix}.pth"
    (served / name).write_bytes(payload)
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    got = inception_weights_file(url=f"{base}/{name}", progress=False)
    assert got == tmp_path / "cache" / name
    assert got.read_bytes() == payload
    (served / name).unlink()  # a second call must use the cache, not the server
    assert inception_weights_file(url=f"{base}/{name}", progress=False) == got


def test_weights_with_wrong_hash_or_no_server_give_a_clear_error(file_server, tmp_path, monkeypatch):
    served, base = file_server
    (served / "pt_inception-test-00000000.pth").write_bytes(b"payload whose sha256 does not start with zeros")
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="the Inception weights are not in the cache"):
        inception_weights_file(url=f"{base}/pt_inception-test-00000000.pth", progress=False)
    assert not list((tmp_path / "cache").iterdir())
    with pytest.raises(UserError, match="the Inception weights are not in the cache") as info:
        inception_weights_file(url=f"{base}/absent-12345678.pth", progress=False)
    # The library speaks of the cache, the URL and the variable; each command adds the flags it has
    # (image_train has no --inception_weights), and the way out by hand is given once.
    message = str(info.value)
    assert "--" not in message and "GUIDED_DIFFUSION_CACHE" in message and f"{base}/absent-12345678.pth" in message
    assert message.count("by hand") == 1 and "\n" not in message


def test_evaluate_offline_names_its_own_flag_once(file_server, tmp_path, monkeypatch, capsys):
    """Issue 20 item 16: the offline error of `evaluate` gives each way out once, in its own flags."""
    from guided_diffusion.cli import main
    from guided_diffusion.evaluation import weights as weights_module

    _, base = file_server
    real_download = weights_module.download
    # The real downloader, pointed at a server that does not have the file (as when offline).
    monkeypatch.setattr(weights_module, "download", lambda url, dest, **kw: real_download(f"{base}/gone.pth", dest, **kw))
    monkeypatch.setenv("GUIDED_DIFFUSION_CACHE", str(tmp_path / "cache"))
    batch = tmp_path / "batch.npz"
    np.savez(batch, np.zeros((4, 8, 8, 3), dtype=np.uint8))
    assert main(["evaluate", str(batch), str(batch)]) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "HTTP/1.1" not in line and "code 404" not in line)
    assert err.count("\n") == 0 and err.startswith("error: the Inception weights are not in the cache"), err
    assert err.count("--inception_weights") == 1 and err.count("by hand") == 1 and "--features classifier:" in err
