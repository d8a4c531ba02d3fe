"""Compatibility shim: the original `dist_util` module (no MPI needed), re-exported from
`guided_diffusion.runtime.distributed`."""
from guided_diffusion.runtime.distributed import (
    backend_for_this_machine,
    barrier,
    dev,
    get_local_rank,
    get_rank,
    get_world_size,
    int_from_env,
    is_initialized,
    is_main_process,
    setup_dist,
    sync_params,
    teardown_dist,
)
from guided_diffusion.weights.checkpoints import read_tensor_file

__all__ = [
    "backend_for_this_machine", "setup_dist", "int_from_env", "is_initialized", "get_rank",
    "get_world_size", "get_local_rank", "is_main_process", "barrier", "dev", "load_state_dict",
    "sync_params", "teardown_dist",
]


def load_state_dict(path, **kwargs):
    """Kept only for the original's signature (torch.load's keywords); the safe loader is checkpoints.read_tensor_file."""
    return read_tensor_file(path, kwargs.pop("map_location", None), **kwargs)
