"""Checkpoint loading: safe formats, config beside the weights, and errors naming the wrong flag."""
import pytest
import torch

from guided_diffusion import script_util
from guided_diffusion.config import ClassifierConfig, DiffusionConfig, ModelConfig, config_to_dict
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.weights.checkpoints import (
    diagnose_mismatch,
    load_model,
    load_state_dict,
    load_weights,
    save_checkpoint,
    save_model_with_config,
    write_config_json,
)

BASE = dict(
    image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2", attention_resolutions="16,8",
    num_heads=2, learn_sigma=False, class_cond=False, resblock_updown=False, use_scale_shift_norm=True,
)


def make(**changes):
    return ModelConfig.from_dict({**BASE, **changes}).build()


@pytest.mark.parametrize("saved,flags,expected", [
    ({"learn_sigma": True}, {}, "checkpoint has 6 output channels: use --learn_sigma True"),
    ({}, {"learn_sigma": True}, "checkpoint has 3 output channels: use --learn_sigma False"),
    ({"class_cond": True}, {}, "checkpoint has label_emb: use --class_cond True"),
    ({}, {"class_cond": True}, "checkpoint has no label_emb: use --class_cond False"),
    ({"num_channels": 64}, {}, "checkpoint has num_channels 64: use --num_channels 64"),
    ({"num_res_blocks": 2}, {}, "checkpoint has 2 res blocks per level: use --num_res_blocks 2"),
    ({"resblock_updown": True}, {}, "use --resblock_updown True"),
    ({}, {"resblock_updown": True}, "use --resblock_updown False"),
    ({"channel_mult": "1,2,4"}, {}, "checkpoint has channel_mult 1,2,4: use --channel_mult 1,2,4"),
    ({"channel_mult": "1,2"}, {}, "checkpoint has channel_mult 1,2: use --channel_mult 1,2"),
    ({"use_scale_shift_norm": False}, {}, "use --use_scale_shift_norm False"),
    ({"attention_resolutions": "16"}, {}, "use --attention_resolutions 16"),
    ({"class_cond": True, "num_classes": 10}, {"class_cond": True}, "use --num_classes 10"),
])
def test_wrong_flags_name_the_hyperparameter(tmp_path, saved, flags, expected):
    path = tmp_path / "model.pt"
    save_checkpoint(path, make(**saved).state_dict())
    with pytest.raises(UserError) as info:
        load_weights(make(**flags), load_state_dict(path), source=str(path))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_classifier_wrong_flags(tmp_path):
    def clf(**kw):
        base = dict(image_size=32, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                    classifier_channel_mult="1,2,2", classifier_num_head_channels=16, num_classes=10)
        return ClassifierConfig.from_dict({**base, **kw}).build()

    cases = [
        ({"classifier_depth": 2}, "use --classifier_depth 2"),
        ({"classifier_width": 64}, "use --classifier_width 64"),
        ({"classifier_pool": "adaptive"}, "use --classifier_pool adaptive"),
        ({"num_classes": 7}, "use --num_classes 7"),
        ({"classifier_resblock_updown": False}, "use --classifier_resblock_updown False"),
    ]
    for saved, expected in cases:
        with pytest.raises(UserError, match=expected):
            load_weights(clf(), clf(**saved).state_dict())


def test_unet_vs_classifier_kind():
    clf = ClassifierConfig(image_size=32, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                           classifier_attention_resolutions="8", classifier_num_head_channels=16).build()
    with pytest.raises(UserError, match="classifier network but the flags build a unet"):
        load_weights(make(), clf.state_dict())


def test_pt_is_loaded_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"a": Evil()}, path)
    with pytest.raises(UserError, match="pickled Python objects"):
        load_state_dict(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pt")
    path = tmp_path / "cut.pt"
    save_checkpoint(path, make().state_dict())
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="cut short"):
        load_state_dict(path)


def test_safetensors_carries_config_and_loads_without_flags(tmp_path):
    model = make(learn_sigma=True, class_cond=True, num_classes=10)
    cfg = ModelConfig.from_dict({**BASE, "learn_sigma": True, "class_cond": True, "num_classes": 10})
    path = save_model_with_config(tmp_path / "w.safetensors", model, cfg, DiffusionConfig(learn_sigma=True))
    loaded = load_model(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert loaded.num_classes == 10 and loaded.out_channels == 6


def test_pt_with_config_json_loads_without_flags(tmp_path):
    cfg = ModelConfig.from_dict({**BASE, "num_res_blocks": 2})
    model = cfg.build()
    save_checkpoint(tmp_path / "model000010.pt", model.state_dict())
    write_config_json(tmp_path, config_to_dict(cfg))
    loaded = load_model(tmp_path / "model000010.pt")
    assert loaded.num_res_blocks == 2
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([5])
    assert torch.equal(loaded(x, t), model(x, t))


def test_no_config_anywhere_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "m.pt", make().state_dict())
    with pytest.raises(UserError, match="no model config found"):
        load_model(tmp_path / "m.pt")


def test_released_name_catches_attention_order(tmp_path):
    """Shapes cannot tell the attention order apart; the released file name can."""
    from guided_diffusion.weights.checkpoints import check_released_flags

    flags = {**script_util.model_and_diffusion_defaults(), "num_heads": 4, "use_new_attention_order": True}
    problems = check_released_flags("models/128x128_diffusion.pt", flags)
    assert problems == ["128x128_diffusion was trained with --use_new_attention_order False: use --use_new_attention_order False"]
    assert check_released_flags("models/128x128_diffusion.pt", {**flags, "use_new_attention_order": False}) == []
    assert check_released_flags("mine/model000100.pt", flags) == []


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"w": torch.ones(3)})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": torch.zeros(3)})
    assert torch.equal(load_state_dict(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind


def test_ddp_prefix_is_stripped(tmp_path):
    """A state dict saved from a DistributedDataParallel wrapper ("module." keys) loads into the bare network."""
    model = make()
    save_checkpoint(tmp_path / "m.pt", {f"module.{k}": v for k, v in model.state_dict().items()})
    state = load_state_dict(tmp_path / "m.pt")
    assert list(state) == list(model.state_dict())
    torch.manual_seed(1)  # other random weights, so equality below shows the load
    other = make()
    assert not all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    loaded = load_weights(other, state)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_of_another_image_size_names_image_size():
    """The same flags at another --image_size move attention and (with default multipliers) change
    channel_mult; the error names --image_size, not the flags that merely follow from it."""
    def build(size: int, **extra):
        with torch.device("meta"):
            return ModelConfig(image_size=size, num_channels=32, num_res_blocks=1, **extra).build()

    defaults = diagnose_mismatch(build(64, attention_resolutions="16").state_dict(), build(128, attention_resolutions="16"))
    assert defaults == ["checkpoint has the default channel_mult of --image_size 64 (1,2,3,4), the flags give "
                        "--image_size 128: use --image_size 64"]
    fixed = diagnose_mismatch(build(64, attention_resolutions="16", channel_mult="1,2,2").state_dict(),
                              build(32, attention_resolutions="16", channel_mult="1,2,2"))
    assert len(fixed) == 1 and "use --image_size 64" in fixed[0] and "--attention_resolutions" not in fixed[0]
