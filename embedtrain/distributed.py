"""Process-group setup and the one collective the objectives need: all-gather with gradient."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "auto") -> torch.device:
    """Join (or, for a plain process, create) the process group; returns this rank's device.

    Works the same under torchrun, the deepspeed launcher, Slurm-started launchers and a plain
    `python`/`embedtrain` process (world size 1, for which we set the rendezvous variables).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # We create the group ourselves (DeepSpeed then adopts it): on CPU this skips the shared-memory
        # helper deepspeed.init_distributed compiles on first use.
        dist.init_process_group(backend, timeout=timedelta(minutes=int(os.environ.get("EMBEDTRAIN_DIST_TIMEOUT_MIN", 30))))
    import deepspeed

    if not cuda and "OMP_NUM_THREADS" not in os.environ:
        # The deepspeed launcher leaves it unset (torchrun sets 1): share the cores between local ranks
        # instead of every rank starting a thread per core.
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not cuda and os.environ.get("EMBEDTRAIN_DS_SHM") != "1":
        # DeepSpeed's CPU shared-memory all-reduce helper is a C++ extension compiled on first use
        # (~80 s) and only speeds up its inference collectives; gloo gives identical training results.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)
    return device


RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(base: dict | None = None, **extra: str) -> dict:
    """An environment for a child training process: `base` (default os.environ) without the rank and
    rendezvous variables this process may carry (init_distributed sets them in a plain process, and a
    child would join that group), plus `extra`."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in RENDEZVOUS_VARS}
    env.update(extra)
    return env


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's rows; backward returns this rank's rows of the summed gradient.

    Each rank's loss depends on every rank's rows, so the gradient w.r.t. our rows is the sum over
    ranks of d(loss_r)/d(rows): an all-reduce of the full gradient, then our slice. Rows per rank may
    differ (examples carry different numbers of hard negatives).
    """

    @staticmethod
    def forward(ctx, x_ND: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        world = dist.get_world_size()
        top = max(sizes)
        padded = x_ND.new_zeros((top,) + x_ND.shape[1:])
        padded[: x_ND.shape[0]] = x_ND
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad_GD: torch.Tensor) -> torch.Tensor:
        grad = grad_GD.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x_ND: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N_local, D) -> ((N_global, D), offset of this rank's rows). Identity at world size 1."""
    if world_size() == 1:
        return x_ND, 0
    sizes = all_gather_ints(x_ND.shape[0], x_ND.device)
    return _GatherWithGrad.apply(x_ND, sizes), sum(sizes[: rank()])


def all_gather_ints(value: int, device) -> list[int]:
    if world_size() == 1:
        return [value]
    t = torch.tensor([value], device=device)
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(o) for o in out]


def all_reduce_max_ints(values: list[int], device) -> list[int]:
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, device=device, dtype=torch.long)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_sum(values: dict[str, float], device) -> dict[str, float]:
    """Sum scalar metrics over ranks (one collective for the whole dict)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def all_reduce_mean(values: dict[str, float], device) -> dict[str, float]:
    return {k: v / world_size() for k, v in all_reduce_sum(values, device).items()}


def broadcast_object(obj, device):
    """rank 0's picklable `obj` on every rank (small things: metadata, an error message)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def broadcast_array(array, device):
    """rank 0's numpy array on every rank (others pass an array of the same shape and dtype to fill)."""
    if world_size() == 1:
        return array
    t = torch.from_numpy(array).to(device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()
