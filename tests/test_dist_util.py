"""`dist_util`: a process group without MPI in a plain process and under torchrun's environment,
and a checkpoint loader that is not a collective."""
from __future__ import annotations

import pytest
import torch
from helpers import child_env, run_python, run_ranks

from guided_diffusion import dist_util
from guided_diffusion.runtime.errors import UserError

ORIGINAL_STYLE_SCRIPT = """
import torch, torch.distributed as dist
from guided_diffusion import dist_util
dist_util.setup_dist()
dist_util.setup_dist()  # a second call is a no-op
world, rank = dist.get_world_size(), dist.get_rank()
x = torch.tensor([float(rank + 1)])
dist.all_reduce(x)
gathered = [torch.zeros(1) for _ in range(world)]
dist.all_gather(gathered, torch.tensor([float(rank)]))
dist.barrier()
p = torch.nn.Parameter(torch.full((2,), float(rank)))
dist_util.sync_params([p])
print(f"OK world={world} rank={rank} sum={x.item():g} gathered={[g.item() for g in gathered]} synced={p.tolist()} dev={dist_util.dev()}")
"""


def test_plain_process_gets_a_one_rank_group():
    result = run_python(ORIGINAL_STYLE_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert "OK world=1 rank=0 sum=1 gathered=[0.0] synced=[0.0, 0.0] dev=cpu" in result.stdout


def test_torchrun_environment_gives_two_cooperating_ranks():
    ranks = run_ranks(ORIGINAL_STYLE_SCRIPT)
    for returncode, _, err in ranks:
        assert returncode == 0, err
    outputs = [(out, err) for _, out, err in ranks]
    assert "OK world=2 rank=0 sum=3 gathered=[0.0, 1.0] synced=[0.0, 0.0]" in outputs[0][0]
    assert "OK world=2 rank=1 sum=3 gathered=[0.0, 1.0] synced=[0.0, 0.0]" in outputs[1][0]


def test_mpiexec_without_mpi4py_is_a_clear_error():
    try:
        import mpi4py  # noqa: F401 - probe: is the optional dependency installed
    except ImportError:
        pass
    else:  # pragma: no cover - only where mpi4py is installed
        pytest.skip("mpi4py installed")
    # A fresh interpreter: other tests may already have started a process group in this one.
    code = (
        "from guided_diffusion import dist_util\n"
        "from guided_diffusion.runtime.errors import UserError\n"
        "try:\n    dist_util.setup_dist()\nexcept UserError as exc:\n    print(exc)\n"
    )
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMPI_COMM_WORLD_SIZE"] = "2"
    result = run_python(code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "launched by mpiexec but mpi4py is not installed: `pip install mpi4py`, or launch with torchrun")


def test_load_state_dict_is_local_and_safe(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)}
    torch.save(state, tmp_path / "m.pt")
    loaded = dist_util.load_state_dict(tmp_path / "m.pt", map_location="cpu")
    assert torch.equal(loaded["w"], state["w"]) and loaded["b"].dtype == torch.float16

    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "m.safetensors"))
    assert torch.equal(dist_util.load_state_dict(str(tmp_path / "m.safetensors"), map_location="cpu")["w"], state["w"])

    # A pickle that would run code when unpickled is refused, not executed.
    torch.save({"w": torch.zeros(1), "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        dist_util.load_state_dict(tmp_path / "evil.pt", map_location="cpu")
    with pytest.raises(UserError, match="does not exist"):
        dist_util.load_state_dict(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))
