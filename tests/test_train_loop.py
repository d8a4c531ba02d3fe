"""The training loop in-process: microbatch averaging, EMA, LR annealing, fp16 loss scaling,
classifier-free label dropout, loss logging, and resuming the exact state."""
from __future__ import annotations

import itertools

import pytest
import torch

from guided_diffusion import logger
from guided_diffusion.config import DiffusionConfig, ModelConfig
from guided_diffusion.data.dataset import ImageBatch
from guided_diffusion.runtime.errors import UserError
from guided_diffusion.training import snapshots
from guided_diffusion.training.loop import DiffusionTrainer, LoopOptions, TrainBatch, log_loss_dict
from guided_diffusion.training.precision import MixedPrecisionTrainer

STEPS = 40


@pytest.fixture(autouse=True)
def _quiet_logger(tmp_path, one_thread):
    logger.configure(dir=str(tmp_path / "log"), format_strs=[])
    yield
    logger.reset()


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions="")
    cfg.update(kw)
    return ModelConfig(**cfg).build()


def _diffusion():
    return DiffusionConfig(diffusion_steps=STEPS).build()


def _batches(n=4, labels=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for step in itertools.count():
        images = torch.rand(n, 3, 8, 8, generator=generator) * 2 - 1
        yield ImageBatch(
            images=images,
            labels=torch.arange(n) % 2 if labels else torch.zeros(n, dtype=torch.int64),
            seeds=torch.arange(n) + 1000 * step,
            bad_files=[],
            failed=False,
        )


def _trainer(tmp_path, model=None, data=None, **options):
    opts = dict(batch_size=4, lr=1e-3, ema_rate="0.9,0.99", log_interval=1000, save_interval=1000, progress=False, seed=5)
    opts.update(options)
    return DiffusionTrainer(model=model or _model(), diffusion=_diffusion(), data=data or _batches(), options=LoopOptions(**opts),
                            run_dir=tmp_path / "run")


def _grads(trainer):
    return torch.cat([p.grad.reshape(-1) for p in trainer.mp_trainer.master_params if p.grad is not None])


def test_microbatch_gradients_are_averaged_unless_summing_is_asked_for(tmp_path):
    batch = TrainBatch(images=torch.rand(4, 3, 8, 8) * 2 - 1, cond={}, seeds=torch.arange(4))
    whole = _trainer(tmp_path)
    whole.forward_backward(batch)
    chunked = _trainer(tmp_path, microbatch=1)
    chunked.forward_backward(batch)
    summed = _trainer(tmp_path, microbatch=2, sum_microbatch_grads=True)
    summed.forward_backward(batch)
    torch.testing.assert_close(_grads(chunked), _grads(whole), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_grads(summed), 2 * _grads(whole), rtol=1e-4, atol=1e-6)


def test_ema_lr_anneal_and_stop(tmp_path):
    trainer = _trainer(tmp_path, lr_anneal_steps=4, ema_rate="0.9")
    before = [p.detach().clone() for p in trainer.mp_trainer.master_params]
    seen_lrs = []
    original_step = trainer.run_step

    def recording_step(batch):
        original_step(batch)
        seen_lrs.append(trainer.opt.param_groups[0]["lr"])

    trainer.run_step = recording_step
    trainer.run()
    assert trainer.step == 4  # lr_anneal_steps stops the run
    assert seen_lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    # With rate 0.9 after 4 updates the EMA lies between the first and the last weights.
    after = trainer.mp_trainer.master_params
    ema = trainer.ema_params[0]
    moved = [i for i, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
    assert moved
    i = moved[0]
    assert not torch.equal(ema[i], after[i]) and not torch.equal(ema[i], before[i])
    assert (tmp_path / "run" / "model000004.pt").is_file()  # final save


def test_ema_formula_matches_the_original(tmp_path):
    trainer = _trainer(tmp_path, ema_rate="0.75")
    old = [e.clone() for e in trainer.ema_params[0]]
    with torch.no_grad():
        for p in trainer.mp_trainer.master_params:
            p.add_(1.0)
    trainer.update_ema()
    for e_old, e_new, p in zip(old, trainer.ema_params[0], trainer.mp_trainer.master_params):
        torch.testing.assert_close(e_new, 0.75 * e_old + 0.25 * p.detach())


def test_nn_update_ema_is_the_trainers_and_bit_exact_with_the_original():
    from guided_diffusion.nn import update_ema

    torch.manual_seed(0)
    targets, sources = [torch.randn(5, 3), torch.randn(7)], [torch.randn(5, 3), torch.randn(7)]
    expected = [t.clone().mul_(0.9999).add_(s, alpha=1 - 0.9999) for t, s in zip(targets, sources)]  # the original's line
    update_ema(targets, sources, rate=0.9999)
    assert all(torch.equal(t, e) for t, e in zip(targets, expected))


def test_build_trainer_picks_the_trainer_of_the_network(tmp_path):
    from guided_diffusion.config import ClassifierConfig
    from guided_diffusion.training.classifier import ClassifierTrainer
    from guided_diffusion.training.trainers import build_trainer

    common = dict(diffusion=_diffusion(), data=_batches(), run_dir=tmp_path / "run")
    options = LoopOptions(batch_size=4, ema_rate="0.9", progress=False)
    unet = build_trainer(ModelConfig(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1", attention_resolutions=""),
                         model=_model(), options=options, **common)
    assert type(unet) is DiffusionTrainer and unet.ema_rate == [0.9]
    config = ClassifierConfig(image_size=8, classifier_width=64, classifier_depth=1, classifier_channel_mult="1",
                              classifier_attention_resolutions="", num_classes=2)
    classifier = build_trainer(config, model=config.build(), options=LoopOptions(batch_size=4, ema_rate="", class_cond=True, progress=False),
                               noised=False, **common)
    assert isinstance(classifier, ClassifierTrainer) and not classifier.noised and classifier.ema_rate == []


def test_fp16_overflow_skips_step_lowers_scale_to_floor_and_survives_resume(tmp_path):
    trainer = _trainer(tmp_path, model=_model(use_fp16=True), use_fp16=True, min_lg_loss_scale=18.0, save_interval=6, ema_rate="0.9")
    assert trainer.mp_trainer.lg_loss_scale == 20.0
    poison = {"on": True}
    first = trainer.mp_trainer.model_params[0]
    first.register_hook(lambda g: g * float("inf") if poison["on"] else g)
    masters_before = [p.detach().clone() for p in trainer.mp_trainer.master_params]
    ema_before = [e.clone() for e in trainer.ema_params[0]]
    data = _batches()
    scales = []
    for _ in range(3):
        trainer.run_step(_to_train(next(data)))
        scales.append(trainer.mp_trainer.lg_loss_scale)
    assert scales == [19.0, 18.0, 18.0]  # halved per overflow, never below the floor
    assert trainer.step == 3 and trainer.mp_trainer.skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(masters_before, trainer.mp_trainer.master_params))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, trainer.ema_params[0]))
    poison["on"] = False
    for _ in range(3):
        trainer.run_step(_to_train(next(data)))
    assert trainer.mp_trainer.lg_loss_scale == pytest.approx(18.003)
    assert not all(torch.equal(a, b) for a, b in zip(masters_before, trainer.mp_trainer.master_params))
    # The model holds the fp32 masters: exactly outside the torso, rounded to half inside it.
    masters, params = trainer.mp_trainer.master_params, trainer.mp_trainer.model_params
    assert first.dtype == torch.float32 and torch.equal(first.detach(), masters[0].detach())
    conv = next(i for i, p in enumerate(params) if p.dtype == torch.float16)
    assert torch.equal(params[conv].detach(), masters[conv].detach().half())
    trainer.save()

    resumed = _trainer(tmp_path, use_fp16=True, min_lg_loss_scale=18.0, ema_rate="0.9", model=_model(seed=9, use_fp16=True))
    resumed.load_resume_point(snapshots.resolve_resume_point("auto", tmp_path / "run"))
    assert resumed.step == 6
    assert resumed.mp_trainer.lg_loss_scale == pytest.approx(18.003)
    assert resumed.mp_trainer.skipped_steps == 3
    for a, b in zip(resumed.mp_trainer.master_params, trainer.mp_trainer.master_params):
        assert torch.equal(a, b)
    # The saved model file holds plain fp32 tensors, as the original's.
    state = torch.load(tmp_path / "run" / "model000006.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())


def _to_train(item: ImageBatch) -> TrainBatch:
    return TrainBatch.from_item(item, labels=False)


def test_diverged_run_stops_with_a_clear_error():
    model = _model(use_fp16=True)
    trainer = MixedPrecisionTrainer(model=model, use_fp16=True, max_consecutive_skips=3)
    opt = torch.optim.AdamW(trainer.master_params, lr=1e-3)
    x = torch.rand(2, 3, 8, 8)
    for attempt in range(3):
        trainer.zero_grad()
        loss = model(x, torch.zeros(2, dtype=torch.long)).float().mean() * float("nan")
        trainer.backward(loss)
        if attempt < 2:
            assert trainer.optimize(opt) is False
    with pytest.raises(UserError, match="not finite for 3 steps in a row.*lower lr"):
        trainer.optimize(opt)


def test_class_dropout_uses_the_null_label(tmp_path):
    model = _model(class_cond=True, num_classes=2, class_dropout_prob=0.5)
    assert model.label_emb.weight.shape[0] == 3  # two classes + the null label
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["y"].clone()), with_kwargs=True)
    trainer = _trainer(tmp_path, model=model, data=_batches(n=16, labels=True), batch_size=16, class_cond=True, class_dropout_prob=0.5, num_classes=2)
    trainer.run_step(trainer.next_batch())
    labels = seen[0]
    dropped = (labels == 2).float().mean().item()
    assert 0.15 < dropped < 0.85  # about half of the 16 labels became the null label
    assert set(labels.tolist()) <= {0, 1, 2}


def test_loss_logging_has_quartiles_weighted_means(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    t = torch.tensor([0, 9, 10, 39])  # T = 40: quartiles 0, 0, 1, 3
    log_loss_dict(_diffusion(), t, {"loss": torch.tensor([1.0, 3.0, 5.0, 7.0])})
    values = logger.getkvs()
    assert values["loss"] == pytest.approx(4.0)
    assert values["loss_q0"] == pytest.approx(2.0)
    assert values["loss_q1"] == pytest.approx(5.0)
    assert values["loss_q3"] == pytest.approx(7.0)
    assert "loss_q2" not in values


def test_original_fp16_optimizer_files_are_converted(tmp_path):
    trainer = _trainer(tmp_path)
    params = trainer.mp_trainer.master_params
    small = [p for p in params if p.ndim <= 1]
    large = [p for p in params if p.ndim > 1]
    flat_small = torch.cat([torch.full((p.numel(),), float(i)) for i, p in enumerate(small)])
    flat_large = torch.cat([torch.full((p.numel(),), float(100 + i)) for i, p in enumerate(large)])
    state = {
        "state": {0: {"step": torch.tensor(7.0), "exp_avg": flat_small, "exp_avg_sq": flat_small.abs()},
                  1: {"step": torch.tensor(7.0), "exp_avg": flat_large, "exp_avg_sq": flat_large}},
        "param_groups": [dict(trainer.opt.param_groups[0], params=[0, 1])],
    }
    point = snapshots.ResumePoint(directory=tmp_path, step=0, model=tmp_path / "m.pt", opt=tmp_path / "o.pt")
    trainer._load_optimizer(state, point)
    index_of_first_large = next(i for i, p in enumerate(params) if p.ndim > 1)
    assert torch.all(trainer.opt.state[params[index_of_first_large]]["exp_avg"] == 100.0)
    assert trainer.opt.state[params[0]]["exp_avg"].shape == params[0].shape


def test_bf16_autocast_trains_with_float32_weights(tmp_path):
    trainer = _trainer(tmp_path, use_bf16=True)
    dtypes = []
    trainer.model.out.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    before = [p.detach().clone() for p in trainer.mp_trainer.master_params]
    trainer.run_step(trainer.next_batch())
    assert dtypes == [torch.bfloat16]  # convolutions ran under bfloat16 autocast
    assert all(p.dtype == torch.float32 for p in trainer.mp_trainer.master_params)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.mp_trainer.master_params))


def test_gradient_clipping_bounds_the_update():
    model = _model()
    trainer = MixedPrecisionTrainer(model=model, max_grad_norm=0.01)
    opt = torch.optim.SGD(trainer.master_params, lr=1.0)
    before = [p.detach().clone() for p in trainer.master_params]
    loss = (model(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)) - 1).pow(2).mean() * 1000
    trainer.backward(loss)
    assert trainer.optimize(opt)
    step = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(trainer.master_params, before)])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-3)
    assert logger.getkvs()["grad_norm"] > 0.01  # the logged norm is the one before clipping


def test_sigterm_saves_and_stops_after_the_current_step(tmp_path):
    import os
    import signal

    trainer = _trainer(tmp_path, handle_signals=True, iterations=50, keep_last=1, save_interval=2)
    original_step = trainer.run_step

    def step_then_signal(batch):
        original_step(batch)
        if trainer.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.run_step = step_then_signal
    previous = signal.getsignal(signal.SIGTERM)
    trainer.run()
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored
    assert trainer.step == 5
    # Saved at 2 and 4 on schedule and at 5 on the signal; --keep_last 1 left only the last.
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["ema_0.99_000005.pt", "ema_0.9_000005.pt", "model000005.pt", "opt000005.pt", "train_state000005.pt"]
