"""Data-parallel runs with torch.distributed: particles are sharded over processes, sums are all-reduced.

Works under `torchrun --nproc_per_node=K` (one process per GPU, NCCL; or CPU processes, Gloo). With a
world size of 1 there is no process group and every collective is a no-op, so the same code runs
single-process. The likelihood engines shard particle indices with `shard_indices`, accumulate their
sums (reconstruction grids `DirectReconstructor.sums.rows/.count`, noise power sums, ...) locally,
then call `all_reduce_sum_` so every rank holds the totals, and `gather_rows` for per-particle results.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cryoscope.device import resolve_device
from cryoscope.errors import InvalidValueError, MissingDataError


@dataclass(frozen=True)
class DistContext:
    """This process's place in a run: rank in [0, world_size), its compute device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes outputs and logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one process (collectives communicate)."""
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Context from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    WORLD_SIZE > 1 initialises the default process group if there is none (NCCL with device
    cuda:LOCAL_RANK on CUDA, Gloo on the CPU; collectives fail after `timeout_s` seconds of waiting).
    Without these variables: rank 0 of 1, no process group.
    """
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise InvalidValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        if local >= torch.cuda.device_count():
            raise InvalidValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible")
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise MissingDataError(f"WORLD_SIZE={world} but {var} is not set (launch with torchrun)")
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if dist.is_initialized() and (dist.get_rank(), dist.get_world_size()) != (rank, world):
        raise InvalidValueError(
            f"process group has rank {dist.get_rank()} of {dist.get_world_size()}, environment says {rank} of {world}"
        )
    return DistContext(rank, world, dev)


def finalize_distributed(ctx: DistContext) -> None:
    """Tear down the process group at the end of a run (no-op for a single process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous block of `indices` [n]; block sizes differ by at most one, their union is `indices`."""
    return torch.tensor_split(indices, ctx.world_size)[ctx.rank]


def all_reduce_sum_(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """Replace each tensor by its sum over ranks, in place, in its own dtype (complex tensors included).

    Tensors may live on any device: those the backend cannot reduce in place (CPU tensors under
    NCCL, CUDA tensors under Gloo, non-contiguous ones) go through a contiguous copy.
    """
    _collective(tensors, ctx, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM))


def average_gradients_(params, ctx: DistContext | None) -> None:
    """Data-parallel SGD: replace each parameter's gradient by its mean over ranks (a no-op outside torch.distributed).

    Explicit rather than DDP's hooks, so that losses with a double backward (gradient penalties) average the same way."""
    if ctx is None or not ctx.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    all_reduce_sum_(grads, ctx)
    for g in grads:
        g /= ctx.world_size


def broadcast_(tensors: list[torch.Tensor], ctx: DistContext, src: int = 0) -> None:
    """Overwrite each tensor, in place, with rank `src`'s copy (same shapes and dtypes on every rank)."""
    if not 0 <= src < ctx.world_size:
        raise InvalidValueError(f"broadcast source rank {src} is not in [0, {ctx.world_size})")
    _collective(tensors, ctx, lambda t: dist.broadcast(t, src=src))


def gather_rows(values: torch.Tensor, indices: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Assemble a per-particle array [n, ...] on every rank from each rank's rows `values` [m, ...] at `indices` [m].

    Every index in [0, n) must be given by exactly one rank (e.g. the shards of `shard_indices`).
    """
    if values.shape[0] != indices.shape[0] or indices.dim() != 1:
        raise InvalidValueError(f"gather_rows: {values.shape[0]} rows but indices of shape {tuple(indices.shape)}")
    idx = indices.to(values.device, torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise InvalidValueError(f"gather_rows: indices must be in [0, {n})")
    work = values.to(torch.uint8) if values.dtype == torch.bool else values
    out = torch.zeros((n, *values.shape[1:]), dtype=work.dtype, device=values.device)
    out[idx] = work
    cover = torch.bincount(idx, minlength=n).to(torch.int32)
    all_reduce_sum_([out, cover], ctx)
    if not bool((cover == 1).all()):
        bad = int((cover != 1).nonzero()[0])
        raise InvalidValueError(f"gather_rows: row {bad} was given {int(cover[bad])} times (must be exactly once)")
    return out.to(torch.bool) if values.dtype == torch.bool else out


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (no-op for a single process)."""
    if not ctx.distributed:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def run_spawned(fn: Callable[..., Any], world_size: int, *args: Any) -> Any:
    """Run fn(ctx, *args) in `world_size` spawned CPU processes joined by Gloo; returns rank 0's return value.

    For tests and tools: the workers go through `init_distributed` with torchrun's environment variables
    (127.0.0.1, a free port). `fn` and `args` must be picklable (a module-level function). A failure in a
    worker is raised here with its traceback.
    """
    if world_size < 1:
        raise InvalidValueError(f"world size must be >= 1, got {world_size}")
    with tempfile.TemporaryDirectory(prefix="cryoscope-dist-") as tmp:
        result = Path(tmp) / "rank0.pt"
        mp.start_processes(
            _spawned_worker,
            args=(fn, world_size, _free_port(), str(result), args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        # our own file, written by rank 0 a moment ago: any picklable return value is allowed
        return torch.load(result, weights_only=False)


def _spawned_worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, result: str, args: tuple) -> None:
    """One process of `run_spawned`: torchrun-like environment, process group, fn, rank 0's result saved."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    ctx = init_distributed("cpu", timeout_s=120.0)
    barrier(ctx)  # every rank has joined: one that returns at once cannot tear the group down under another's setup
    try:
        out = fn(ctx, *args)
        if ctx.is_main:
            torch.save(out, result)
    finally:
        finalize_distributed(ctx)
    # A worker that got here has done its work. Leave without interpreter teardown: static C++ thread pools destroyed
    # at exit() can abort (std::terminate, SIGABRT) a process whose results are already saved; seen in 1 of ~10 CI runs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _collective(tensors: list[torch.Tensor], ctx: DistContext, op: Callable[[torch.Tensor], Any]) -> None:
    """Apply an in-place collective to each tensor (complex as real pairs), through a copy where needed."""
    if not ctx.distributed:
        return
    comm = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    for t in tensors:
        direct = t.device == comm and t.is_contiguous()
        buf = t if direct else t.to(comm).contiguous()
        op(torch.view_as_real(buf) if buf.is_complex() else buf)
        if not direct:
            t.copy_(buf)


def _env_int(name: str, default: int) -> int:
    """Integer environment variable (torchrun's), or `default` when unset."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidValueError(f"environment variable {name}={value!r} is not an integer") from None


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
