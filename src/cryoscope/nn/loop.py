"""The training loop of the learning engines (gan, vaegan, conceptgan): steps up to a total or a wall-clock limit,
a progress bar, and checkpoints every so many steps and when the loop ends."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from cryoscope.distributed import DistContext, broadcast_
from cryoscope.errors import InvalidValueError


def train_loop(step: Callable[[], dict], count: Callable[[], int], total: int, save: Callable[[], None],
               checkpoint_every: int, bar, postfix: Callable[[dict], dict], time_limit: float | None = None,
               ctx: DistContext | None = None) -> bool:
    """Call `step` (one training step, returning its log entry) until `count()` reaches `total` or `time_limit`
    seconds have passed; the clock is read after each step and, under torch.distributed, rank 0's reading decides for
    every rank. `save` runs on the main process every `checkpoint_every` steps and when the loop ends. Closes `bar`
    (a tqdm). Returns True when the time limit stopped the loop before `total`."""
    if time_limit is not None and not time_limit > 0:
        raise InvalidValueError(f"--time-limit must be > 0 seconds, got {time_limit}")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    main = ctx is None or ctx.is_main
    stopped = False
    while count() < total:
        entry = step()
        bar.update(1)
        bar.set_postfix(**postfix(entry))
        if deadline is not None:
            late = time.monotonic() >= deadline
            if ctx is not None and ctx.distributed:  # every rank stops at the same step
                flag = torch.tensor([float(late)], device=ctx.device)
                broadcast_([flag], ctx)
                late = bool(flag.item())
            stopped = late and count() < total
        if main and (count() % checkpoint_every == 0 or count() == total or stopped):
            save()
        if stopped:
            break
    bar.close()
    return stopped
