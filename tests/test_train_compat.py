"""Drop-in surface: the original training scripts' flags and defaults, and code written against the
original `train_util.TrainLoop` / `image_datasets.load_data` / `resample`."""
from __future__ import annotations

import shlex

import pytest
import torch
from helpers import make_blob_dataset

from guided_diffusion import dist_util, logger
from guided_diffusion.cli.train import build_parser
from guided_diffusion.image_datasets import load_data
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.script_util import args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.train_util import TrainLoop, parse_resume_step_from_filename

# Flag strings from the original READMEs (guided-diffusion and its parent improved-diffusion).
README_FLAGS = {
    "image_train": [
        "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3",
        "--diffusion_steps 4000 --noise_schedule cosine",
        "--lr 1e-4 --batch_size 128",
        "--use_kl True --schedule_sampler loss-second-moment --microbatch 16",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True "
        "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
        "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
        "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
        "--rescale_learned_sigmas False --rescale_timesteps False --ema_rate 0.9999,0.999 --lr_anneal_steps 100",
    ],
    "classifier_train": [
        "--iterations 300000 --anneal_lr True --batch_size 256 --lr 3e-4 --save_interval 10000 --weight_decay 0.05",
        "--image_size 128 --classifier_attention_resolutions 32,16,8 --classifier_depth 2 --classifier_width 128 "
        "--classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True",
        "--learn_sigma True --diffusion_steps 1000 --noise_schedule linear --noised True --val_data_dir val --eval_interval 5",
    ],
    "super_res_train": [
        "--large_size 256 --small_size 64 --learn_sigma True --num_channels 192 --num_heads 4 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --noise_schedule linear",
    ],
}


def flag_values(flag_string: str) -> dict[str, str]:
    """{name: value text} of a `--name value --name value ...` string."""
    tokens = shlex.split(flag_string)
    assert all(name.startswith("--") for name in tokens[::2]) and len(tokens) % 2 == 0, flag_string
    return {name[2:]: value for name, value in zip(tokens[::2], tokens[1::2])}


def typed_like(value: str, default):
    """The README's value text as the original's argparse reads it: the default's type, booleans as True/False."""
    if isinstance(default, bool):
        return {"True": True, "False": False}[value]
    return type(default)(value)


@pytest.mark.parametrize("name", sorted(README_FLAGS))
def test_readme_flag_strings_parse_verbatim(name):
    """Each README flag sets its value (typed as the original's default) and every other flag keeps its default."""
    parser = build_parser(name)
    defaults = vars(parser.parse_args([]))
    for flags in README_FLAGS[name]:
        given = flag_values(flags)
        args = vars(parser.parse_args(shlex.split(flags)))
        assert {k: args[k] for k in given} == {k: typed_like(v, defaults[k]) for k, v in given.items()}
        assert {k: v for k, v in args.items() if k not in given} == {k: v for k, v in defaults.items() if k not in given}
    args = parser.parse_args(shlex.split(" ".join(README_FLAGS[name])))
    if name == "classifier_train":
        assert (args.iterations, args.anneal_lr, args.weight_decay, args.classifier_pool) == (300000, True, 0.05, "attention")
    elif name == "image_train":  # a flag given twice takes its last value, as argparse does
        assert (args.diffusion_steps, args.image_size, args.ema_rate, args.use_kl) == (1000, 64, "0.9999,0.999", True)
    else:
        assert (args.large_size, args.small_size, args.num_heads, args.class_cond) == (256, 64, 4, True)


def test_defaults_are_the_originals():
    image = vars(build_parser("image_train").parse_args([]))
    expected = dict(data_dir="", schedule_sampler="uniform", lr=1e-4, weight_decay=0.0, lr_anneal_steps=0, batch_size=1,
                    microbatch=-1, ema_rate="0.9999", log_interval=10, save_interval=10000, resume_checkpoint="",
                    use_fp16=False, fp16_scale_growth=1e-3)
    expected.update(model_and_diffusion_defaults())
    assert {k: image[k] for k in expected} == expected
    assert image["random_flip"] is True and image["iterations"] == 0 and image["sum_microbatch_grads"] is False
    classifier = vars(build_parser("classifier_train").parse_args([]))
    expected = dict(data_dir="", val_data_dir="", noised=True, iterations=150000, lr=3e-4, weight_decay=0.0, anneal_lr=False,
                    batch_size=4, microbatch=-1, schedule_sampler="uniform", resume_checkpoint="", log_interval=10,
                    eval_interval=5, save_interval=10000)
    assert {k: classifier[k] for k in expected} == expected
    assert classifier["random_crop"] is True  # hard-coded for classifiers by the original
    sr = vars(build_parser("super_res_train").parse_args([]))
    assert (sr["large_size"], sr["small_size"], sr["save_interval"]) == (256, 64, 10000)
    with pytest.raises(UserError, match="--use_fp16: boolean value expected"):  # one line through cli.main
        build_parser("image_train").parse_args(["--use_fp16", "maybe"])


def test_original_style_script_with_train_loop(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    created = not dist_util.is_initialized()
    try:
        dist_util.setup_dist()
        logger.configure(dir=str(tmp_path / "run"), format_strs=["csv"])
        flags = model_and_diffusion_defaults()
        flags.update(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="", diffusion_steps=50,
                     learn_sigma=True)
        model, diffusion = create_model_and_diffusion(**args_to_dict(type("A", (), flags), flags.keys()))
        model.to(dist_util.dev())
        data = load_data(data_dir=str(make_blob_dataset(tmp_path / "d", count=8, size=8)), batch_size=2, image_size=8, num_workers=0)
        loop_args = dict(model=model, diffusion=diffusion, data=data, batch_size=2, microbatch=-1, lr=1e-4, ema_rate="0.9999",
                         log_interval=10, save_interval=3, resume_checkpoint="", use_fp16=False, fp16_scale_growth=1e-3,
                         schedule_sampler=create_named_schedule_sampler("loss-second-moment", diffusion), weight_decay=0.0,
                         lr_anneal_steps=5)
        TrainLoop(**loop_args).run_loop()  # stops at lr_anneal_steps
        run = tmp_path / "run"
        assert {"model000003.pt", "model000005.pt", "ema_0.9999_000005.pt", "opt000005.pt"} <= {p.name for p in run.iterdir()}
        assert parse_resume_step_from_filename(str(run / "model000005.pt")) == 5
        before = (run / "model000005.pt").read_bytes()

        # Resume from the file; DIFFUSION_TRAINING_TEST stops after the first save.
        monkeypatch.setenv("DIFFUSION_TRAINING_TEST", "1")
        loop_args.update(resume_checkpoint=str(run / "model000005.pt"), lr_anneal_steps=100)
        loop = TrainLoop(**loop_args)
        assert loop.resume_step == 5 and loop.step == 5
        loop.run_loop()
        assert loop.step == 6 and (run / "model000006.pt").is_file()
        assert (run / "model000005.pt").read_bytes() == before  # the resumed-from file is never rewritten
    finally:
        logger.reset()
        if created:
            dist_util.teardown_dist()
        torch.set_num_threads(threads)
