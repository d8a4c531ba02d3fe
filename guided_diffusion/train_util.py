"""Compatibility shim: the original `train_util` module, re-exported from `guided_diffusion.training.train_loop`."""
from guided_diffusion.training.train_loop import (
    TrainLoop,
    find_ema_checkpoint,
    find_resume_checkpoint,
    get_blob_logdir,
    log_loss_dict,
    parse_resume_step_from_filename,
)

__all__ = ["TrainLoop", "find_ema_checkpoint", "find_resume_checkpoint", "get_blob_logdir", "log_loss_dict", "parse_resume_step_from_filename"]
