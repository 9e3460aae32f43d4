"""The shared training loop: total, wall-clock limit, checkpoints."""

import time

import pytest
import torch
from tqdm import tqdm

from cryoscope.errors import InvalidValueError
from cryoscope.nn.loop import train_loop


class Counter:
    def __init__(self, seconds_per_step: float = 0.0):
        self.n, self.saved, self.dt = 0, [], seconds_per_step

    def step(self) -> dict:
        time.sleep(self.dt)
        self.n += 1
        return {"n": self.n}

    def run(self, total: int, every: int, limit: float | None) -> bool:
        return train_loop(self.step, lambda: self.n, total, lambda: self.saved.append(self.n), every,
                          tqdm(disable=True), lambda e: {}, limit)


def test_the_loop_runs_to_its_total_and_checkpoints_every_k_steps_and_at_the_end():
    c = Counter()
    assert c.run(7, 3, None) is False
    assert c.n == 7 and c.saved == [3, 6, 7]


def test_a_time_limit_stops_early_with_a_checkpoint_and_a_resumed_loop_finishes():
    c = Counter(0.02)
    assert c.run(1000, 500, 0.1) is True
    assert 1 <= c.n < 1000 and c.saved == [c.n]  # stopped well before the total, checkpointed where it stopped
    assert c.run(c.n + 2, 500, None) is False and c.saved[-1] == c.n  # resume: continues to the new total


def test_a_limit_reached_on_the_last_step_is_not_reported_as_a_stop():
    c = Counter(0.05)
    assert c.run(1, 10, 0.01) is False and c.saved == [1]


def test_a_non_positive_time_limit_is_refused():
    with pytest.raises(InvalidValueError, match="time-limit"):
        Counter().run(3, 1, 0.0)


def _ranks_stop_together(ctx, limit: float) -> list[float]:
    """Each rank steps at its own pace; returns [sum, sum of squares] of the ranks' step counts."""
    from cryoscope.distributed import all_reduce_sum_

    c = Counter(0.01 * (1 + 3 * ctx.rank))
    stopped = train_loop(c.step, lambda: c.n, 10_000, lambda: None, 10_000, tqdm(disable=True), lambda e: {}, limit, ctx)
    sums = torch.tensor([float(c.n), float(c.n) ** 2, float(stopped)], dtype=torch.float64)
    all_reduce_sum_([sums], ctx)
    return sums.tolist()


def test_under_torch_distributed_every_rank_stops_at_the_same_step():
    from cryoscope.distributed import run_spawned

    total, squares, stops = run_spawned(_ranks_stop_together, 2, 0.2)
    assert stops == 2 and total >= 2 and squares == 2 * (total / 2) ** 2  # equal counts: sum² / 2 = sum of squares
