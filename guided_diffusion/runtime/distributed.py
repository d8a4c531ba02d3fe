"""Process-group setup and rank helpers; drop-in for the original `dist_util` that needs no MPI.

`setup_dist()` starts a `torch.distributed` process group in every situation the original code
meets, so scripts that call it and then use `torch.distributed` directly keep working:

* launched by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the env);
* launched by `mpiexec` with mpi4py importable (rank 0 picks the address and a free port);
* a plain single process: a one-rank group on 127.0.0.1 and a free port.

NCCL is used when CUDA is available (each rank on `cuda:LOCAL_RANK`, within whatever
`CUDA_VISIBLE_DEVICES` allows), gloo otherwise. `dev()` keeps the original's choice (this rank's GPU,
else the CPU); `resolve_device` reads a `--device` value (auto, cpu, cuda, cuda:N, mps) and refuses, in
one line, a device this PyTorch or machine lacks.
"""
from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist

from guided_diffusion.runtime.errors import SettingError, UserError

T = TypeVar("T")

# Environment variables set by common MPI launchers (Open MPI, MPICH/Hydra, Intel MPI, PMIx).
_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_MPI_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


def _free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _launched_by_mpi() -> bool:
    return any(var in os.environ for var in _MPI_SIZE_VARS)


def backend_for_this_machine() -> str:
    """`nccl` when CUDA is usable, else `gloo`."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _select_cuda_device(local_rank: int) -> None:
    if torch.cuda.is_available():
        # Several ranks per node share the visible devices round-robin; never rewrite
        # CUDA_VISIBLE_DEVICES, so a user's choice of GPUs is respected.
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _setup_from_mpi() -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if rank == 0:
        host = "127.0.0.1" if world == 1 else socket.gethostname()
        info = (host, _free_port("0.0.0.0" if world > 1 else host))
    else:
        info = None
    host, port = comm.bcast(info, root=0)
    os.environ.update(
        MASTER_ADDR=str(host), MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank)
    )
    _select_cuda_device(local_rank)
    dist.init_process_group(backend_for_this_machine(), init_method="env://", rank=rank, world_size=world)


def setup_dist() -> None:
    """Start the default process group unless one is already running (see module docstring)."""
    if dist.is_available() and dist.is_initialized():
        return
    # Scripts written for the original never destroy the group; tearing gloo down at interpreter exit
    # (instead of leaving its threads to the C++ destructors) avoids "terminate called" aborts.
    atexit.register(teardown_dist)
    if _launched_by_torchrun():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            if int(os.environ["WORLD_SIZE"]) > 1:
                raise UserError("RANK/WORLD_SIZE are set but MASTER_PORT is not: launch with torchrun, or set MASTER_ADDR and MASTER_PORT")
            os.environ["MASTER_PORT"] = str(_free_port())
        _select_cuda_device(local_rank)
        dist.init_process_group(backend_for_this_machine(), init_method="env://")
        return
    if _launched_by_mpi():
        try:
            import mpi4py
        except ImportError:
            mpi4py = None
        if mpi4py is not None:
            _setup_from_mpi()
            return
        if _mpi_world_size_from_env() > 1:
            raise UserError("launched by mpiexec but mpi4py is not installed: `pip install mpi4py`, or launch with torchrun")
    # A plain process: a group of one, so code written for several ranks still runs.
    _select_cuda_device(0)
    dist.init_process_group(
        backend_for_this_machine(), init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )


def int_from_env(names: tuple[str, ...], default: int) -> int:
    """The first of the environment variables `names` that holds an integer, else `default`."""
    for var in names:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return default


def _mpi_world_size_from_env() -> int:
    return int_from_env(_MPI_SIZE_VARS, 1)


def is_initialized() -> bool:
    """Whether a default process group is running."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    """Rank within this node, from the launcher's environment (0 when unknown)."""
    for var in ("LOCAL_RANK", *_MPI_LOCAL_RANK_VARS):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                continue
    return 0


def is_main_process() -> bool:
    """True on rank 0 (and in a process without a process group)."""
    return get_rank() == 0


def barrier() -> None:
    """`dist.barrier()` when several ranks run; a no-op otherwise."""
    if get_world_size() > 1:
        dist.barrier()


def dev() -> torch.device:
    """The device this rank should compute on."""
    if torch.cuda.is_available():
        if is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cuda", get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _unavailable(name: str, device_type: str) -> str:
    """Why PyTorch cannot compute on `device_type` here, and what to use instead (one line)."""
    if device_type == "cuda":
        why = ("this PyTorch is built without CUDA (a CPU-only wheel)" if torch.version.cuda is None
               else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
    elif device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        why = ("this PyTorch is built without MPS, Apple's GPU backend" if mps is None or not mps.is_built()
               else "MPS is built in but not usable here (it needs Apple silicon and macOS 12.3 or newer)")
    else:
        why = f"this PyTorch has no usable {device_type} backend on this machine"
    return f"device {name!r} is not available: {why}; use {', '.join(available_devices())}"


def available_devices() -> list[str]:
    """The device names `resolve_device` accepts on this machine, most capable first ("auto" included)."""
    names = ["auto"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if _mps_available():
        names.append("mps")
    return names + ["cpu"]


def resolve_device(name: str | None = None) -> torch.device:
    """The device to compute on, from a `--device` value.

    None, "" or "auto": this rank's GPU when CUDA is available, else Apple's GPU (MPS) when available,
    else the CPU. "cuda" is this rank's GPU (as `dev()`), "cuda:N" that GPU, "mps" Apple's GPU, "cpu" the
    CPU; other device types PyTorch names (e.g. "xpu") are taken when their backend is available. A name
    this PyTorch or machine lacks raises SettingError naming `device`, with the names that would work.
    """
    text = (name or "").strip().lower()
    if text in ("", "auto"):
        if torch.cuda.is_available():
            return dev()
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise SettingError("device", f"device {name!r} is not a device name; use {', '.join(available_devices())}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError("device", _unavailable(name or text, "cuda"))
        if device.index is None:
            return dev()
        count = torch.cuda.device_count()
        if device.index >= count:
            raise SettingError("device", f"device {name!r} does not exist: this machine has {count} CUDA device(s); "
                                         f"use {', '.join(available_devices())}")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise SettingError("device", _unavailable(name or text, "mps"))
        return torch.device("mps")
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return device
    raise SettingError("device", _unavailable(name or text, device.type))


def sync_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values of `params` to every rank (no-op with a single rank)."""
    if get_world_size() <= 1:
        return
    with torch.no_grad():
        for param in params:
            dist.broadcast(param, 0)


def teardown_dist() -> None:
    """Destroy the default process group if one is running."""
    if is_initialized():
        dist.destroy_process_group()


def decide_on_rank0(action: Callable[[], T]) -> T:
    """Run `action` on rank 0 alone and give every rank its result (broadcast; it must pickle).

    A `UserError` (or `SettingError`) raised there is raised on every rank with the same message and
    setting, so no rank is left waiting in a later collective when rank 0 refuses. Without a process
    group, or with one rank, this is `action()`."""
    if get_world_size() <= 1:
        return action()
    result: T | None = None
    failure: tuple[str | None, str] | None = None
    error: UserError | None = None
    if is_main_process():
        try:
            result = action()
        except UserError as exc:
            error = exc
            failure = (exc.setting if isinstance(exc, SettingError) else None, str(exc))
    box = [(result, failure)]
    dist.broadcast_object_list(box, src=0)
    result, failure = box[0]
    if error is not None:
        raise error
    if failure is not None:
        setting, message = failure
        raise SettingError(setting, message) if setting is not None else UserError(message)
    return result  # type: ignore[return-value]  # rank 0's result, None only if action returned None
