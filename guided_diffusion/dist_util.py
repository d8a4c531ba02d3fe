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
    load_state_dict,
    setup_dist,
    sync_params,
    teardown_dist,
)

__all__ = [
    "backend_for_this_machine", "setup_dist", "int_from_env", "is_initialized", "get_rank",
    "get_world_size", "get_local_rank", "is_main_process", "barrier", "dev", "load_state_dict",
    "sync_params", "teardown_dist",
]
