"""Process-group helpers that also work in a plain single process.

Every function here is safe to call without ``torch.distributed`` being initialised:
then it behaves as a world of one process (identity gathers, local permutations).
Launch multi-process runs with ``torchrun``; :func:`init_distributed` reads its
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``).
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo", "init_distributed", "get_rank", "get_world_size", "is_main_process",
    "is_dist", "barrier", "cleanup", "all_gather_nograd", "batch_shuffle", "batch_unshuffle",
    "agree", "all_reduce_counts", "all_gather_objects", "gather_in_order",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool  # True when a process group is initialised (world_size > 1)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def init_distributed(
    *,
    backend: Optional[str] = None,
    timeout: Union[float, datetime.timedelta] = 600.0,
) -> DistInfo:
    """Initialise the process group from torchrun's environment, if there is one.

    Args:
        backend: ``"nccl"``/``"gloo"``; default nccl when CUDA is available, else gloo.
        timeout: collective timeout (seconds or a timedelta); 10 minutes by default so a
            dead peer fails the job instead of hanging it forever.
    Returns:
        A :class:`DistInfo`. With ``WORLD_SIZE`` unset or 1 no process group is created
        and the device is ``cuda:LOCAL_RANK`` (or ``cpu`` without CUDA).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "launch at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, device=device, distributed=False)

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        if isinstance(timeout, (int, float)):
            timeout = datetime.timedelta(seconds=float(timeout))
        dist.init_process_group(
            backend=backend or ("nccl" if cuda else "gloo"),
            init_method="env://",
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
        device=device, distributed=True,
    )


def is_dist() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist() and get_world_size() > 1:
        if dist.get_backend() == "nccl":
            # name the device, or NCCL guesses one and may hang with several GPUs per node
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Destroy the process group (no-op without one), after a barrier: every rank tears down
    together. A rank that destroyed its group while a peer was still writing its reports and
    connected was seen to abort at exit under gloo ("terminate called without an active
    exception", 2 of ~30 loaded torchrun runs). Called only on a clean finish, when every rank
    reaches it."""
    if is_dist():
        barrier()
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s buffers (BatchNorm running statistics, ...), as DDP does at the
    start of each forward. After a training epoch every rank's BatchNorm statistics have moved
    with its own last batch; evaluating, or saving, each rank's own would mix models. No-op in
    one process."""
    if get_world_size() == 1:
        return
    for b in module.buffers():
        dist.broadcast(b, src)


@torch.no_grad()
def all_gather_nograd(t: Tensor) -> Tensor:
    """Concatenate every process's ``t`` along dim 0, without gradient.

    Args:
        t: [B, ...], the same shape on every rank.
    Returns:
        [world_size * B, ...] in rank order; in one process, ``t`` detached.
    """
    if get_world_size() == 1:
        return t.detach()
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(get_world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle(x: Tensor, perm: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """MoCo's shuffle-BN: hand each process a random chunk of the global batch.

    The key encoder then normalises over samples from every process, so batch
    statistics cannot leak which key belongs to which query.

    Args:
        x: [B, ...] local batch (same B on every rank).
        perm: [world_size * B] permutation of the global batch, the same on every rank
            (the training step draws it from a generator every rank seeds alike, so nothing
            is communicated and ``torch.compile`` traces one graph). None: drawn here from
            torch's global generator and, under DDP, broadcast from rank 0 (eager use).
    Returns:
        (x_shuffled [B, ...], unshuffle_idx [world_size * B]) for :func:`batch_unshuffle`.
    """
    world = get_world_size()
    n = world * x.shape[0]
    if perm is None:
        perm = torch.randperm(n, device=x.device)
        if world > 1:
            dist.broadcast(perm, src=0)  # every rank must use rank 0's permutation
    elif perm.shape != (n,):
        raise ValueError(f"batch_shuffle: perm has shape {tuple(perm.shape)}, expected ({n},) "
                         f"(world size {world} x local batch {x.shape[0]})")
    if world == 1:
        return x[perm], torch.argsort(perm)
    mine = perm.view(world, -1)[get_rank()]
    return all_gather_nograd(x)[mine], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle_idx: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle`: ``x`` [B, ...] computed on the shuffled chunk -> this
    process's original samples, in their original order. [B, ...]"""
    world = get_world_size()
    if world == 1:
        return x[unshuffle_idx]
    x_all = all_gather_nograd(x)
    return x_all[unshuffle_idx.view(world, -1)[get_rank()]]


def agree(flags: Sequence[bool], device: torch.device) -> List[bool]:
    """Each flag OR-ed over all ranks (one all-reduce of a few numbers); local values alone
    without a process group. Every rank then takes the same decision (stop, skip a step)."""
    if get_world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def all_reduce_counts(tensors: List[Tensor]) -> List[Tensor]:
    """Sum integer count tensors over all processes with one collective (exact: int64);
    the tensors themselves without a process group."""
    if get_world_size() == 1:
        return tensors
    # NCCL only reduces CUDA tensors; a rank that saw no data may still hold CPU buffers.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.int64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view(t.shape).to(t.device))
        offset += t.numel()
    return out


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_in_order(local: Tensor, num_samples: int, device: torch.device) -> Optional[Tensor]:
    """Rows of a :class:`~gpaco.data.build.ShardSampler` shard (rank r holds samples r, r+W, ...)
    back in dataset order, float32 [num_samples, D], on rank 0 only (None elsewhere)."""
    world, rank = get_world_size(), get_rank()
    if world == 1:
        return local
    n_max = math.ceil(num_samples / world)
    width = local.shape[1]
    buf = torch.zeros(n_max, width, dtype=torch.float32, device=device)
    buf[:local.shape[0]] = local.to(device)
    # gathered to rank 0 only: the other ranks would hold every rank's logits for nothing
    # (ImageNet-scale --save-logits is gigabytes per process)
    parts = [torch.zeros_like(buf) for _ in range(world)] if rank == 0 else None
    dist.gather(buf, parts, dst=0)
    if rank != 0:
        return None
    out = torch.empty(num_samples, width, dtype=torch.float32)
    for r in range(world):
        n_r = len(range(r, num_samples, world))
        out[r::world] = parts[r][:n_r].cpu()
    return out
