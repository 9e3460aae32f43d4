"""torch.distributed: 2-process Gloo collectives equal serial sums; a sharded reconstruction equals the serial one."""

import pytest
import torch

from cryoscope.distributed import (
    DistContext,
    all_reduce_sum_,
    barrier,
    broadcast_,
    gather_rows,
    init_distributed,
    run_spawned,
    shard_indices,
)
from cryoscope.errors import InvalidValueError, MissingDataError
from cryoscope.geometry.rotations import euler_to_matrix
from cryoscope.particles import ParticleBatch
from cryoscope.physics.ctf import CTFParams, compute_ctf
from cryoscope.physics.forward import ImageFormation
from cryoscope.reconstruction import DirectReconstructor
from cryoscope.representations.voxel import VoxelMap

CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128, torch.long]


def rank_tensors(rank):
    """Each rank's contributions: one tensor per dtype, seeded by the rank."""
    g = torch.Generator().manual_seed(100 + rank)
    out = [
        torch.randint(-1000, 1000, (5, 3), generator=g) if d == torch.long else torch.randn(5, 3, dtype=d, generator=g)
        for d in DTYPES
    ]
    out.append(torch.randn(4, 6, dtype=torch.complex64, generator=g).t())  # non-contiguous
    return out


def rank_rows(rank, n, ctx):
    """This rank's rows of the per-particle arrays [n, 2] float and [n] bool that gather_rows must assemble."""
    idx = shard_indices(torch.arange(n), ctx)
    return idx, torch.stack([idx * 1.5, -idx.double()], 1), idx % 3 == 0


def collectives_worker(ctx, n):
    tensors = rank_tensors(ctx.rank)
    all_reduce_sum_(tensors, ctx)
    # every rank holds the same totals: compare with rank 0's copy
    disagree = torch.zeros((), dtype=torch.long)
    for t in tensors:
        ref = t.clone() if ctx.is_main else torch.zeros_like(t)
        broadcast_([ref], ctx)
        disagree += int(not torch.equal(ref, t))
    all_reduce_sum_([disagree], ctx)
    idx, rows, flags = rank_rows(ctx.rank, n, ctx)
    barrier(ctx)
    return {
        "sums": tensors,
        "disagree": int(disagree),
        "rows": gather_rows(rows, idx, n, ctx),
        "flags": gather_rows(flags, idx, n, ctx),
    }


def failing_worker(ctx):
    if ctx.rank == 1:
        raise ValueError("rank 1 failed on purpose")
    return 0


def test_two_process_collectives_equal_serial_sums():
    n = 11
    out = run_spawned(collectives_worker, 2, n)
    expected = [a + b for a, b in zip(rank_tensors(0), rank_tensors(1))]
    for got, want in zip(out["sums"], expected):
        assert got.dtype == want.dtype and torch.allclose(got, want, rtol=1e-6, atol=0)
    assert out["disagree"] == 0
    ctx1 = DistContext(0, 1, CPU)
    idx, rows, flags = rank_rows(0, n, ctx1)
    assert torch.equal(out["rows"], rows) and torch.equal(out["flags"], flags)


def test_worker_failure_is_raised():
    with pytest.raises(Exception, match="rank 1 failed on purpose"):
        run_spawned(failing_worker, 2)


def test_shards_cover_every_index_once():
    indices = torch.randperm(103)
    for k in (1, 2, 3, 8):
        shards = [shard_indices(indices, DistContext(r, k, CPU)) for r in range(k)]
        assert torch.equal(torch.cat(shards), indices)
        assert max(s.numel() for s in shards) - min(s.numel() for s in shards) <= 1


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.is_main, ctx.distributed) == (0, 1, CPU, True, False)
    t = torch.randn(3, dtype=torch.complex64)
    before = t.clone()
    all_reduce_sum_([t], ctx)
    broadcast_([t], ctx)
    barrier(ctx)
    assert torch.equal(t, before)
    perm = torch.randperm(6)
    assert torch.equal(gather_rows(perm.double() * 2, perm, 6, ctx), torch.arange(6).double() * 2)
    with pytest.raises(InvalidValueError, match="row 5"):
        gather_rows(torch.ones(5), torch.arange(5), 6, ctx)


def test_bad_environment_is_reported(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(MissingDataError, match="MASTER_ADDR"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InvalidValueError, match="RANK=2"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(InvalidValueError, match="WORLD_SIZE"):
        init_distributed("cpu")


def particles(n=240, box=16, pixel_size=3.0):
    """Noiseless particles of a few Gaussian blobs at random poses, with shifts, CTFs and half-set ids."""
    g = torch.Generator().manual_seed(7)
    k = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    centres = [(2, -1, 0), (-3, 2, 1), (0, 3, -2)]
    vol = sum(torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 4.0) for cx, cy, cz in centres)
    rot = euler_to_matrix(torch.rand(n, 3, generator=g) * torch.tensor([360.0, 180.0, 360.0]))
    origins = 2 * torch.randn(n, 2, generator=g)
    df = 8000 + 12000 * torch.rand(n, generator=g)
    ctf = compute_ctf(CTFParams.create(df, df * 0.95, 30.0), box, pixel_size)
    images = ImageFormation()(VoxelMap(vol, pixel_size), rot, origins_px=origins, ctf=ctf)
    half = torch.randperm(n, generator=g) % 2
    return ParticleBatch(images, rot, origins, ctf, half)


def take(batch, idx):
    b = batch
    return ParticleBatch(b.images[idx], b.rotations[idx], b.origins_px[idx], b.ctf[idx], b.half[idx])


def sharded_reconstruction_worker(ctx, batch):
    rec = DirectReconstructor(batch.images.shape[-1], dtype=torch.float64)
    rec.add(take(batch, shard_indices(torch.arange(batch.images.shape[0]), ctx)))
    local = int(rec.count.sum())
    all_reduce_sum_([rec.sums.rows, rec.count], ctx)
    maps = [rec.volume(0), rec.volume(1), rec.volume()]
    return {"local": local, "count": rec.count, "rows": rec.sums.rows, "maps": maps}


def test_sharded_direct_reconstruction_equals_serial():
    batch = particles()
    out = run_spawned(sharded_reconstruction_worker, 2, batch)
    serial = DirectReconstructor(16, dtype=torch.float64)
    serial.add(batch)
    assert out["local"] == 120 and torch.equal(out["count"], serial.count)
    # float64 sums: only the order of additions differs (a half-set's map alone is off by ~3e-3)
    rows = serial.sums.rows
    assert torch.allclose(out["rows"], rows, rtol=1e-12, atol=1e-12 * float(rows.abs().max()))
    for got, want in zip(out["maps"], [serial.volume(0), serial.volume(1), serial.volume()]):
        assert got.dtype == torch.float64 and (got - want).norm() <= 1e-10 * want.norm()
