"""Synthesis by composing the learnt transfers: Σ11 from Σ00 as (G2 ∘ G1) or (G1 ∘ G2), from Σ01 by G1, from Σ10 by G2
(any source and target sub-domain alike), and the output stack with its RELION STAR file."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Literal

import numpy as np
import torch
from torch import nn

from cryoscope.conceptgan.domains import Domain, Path, routes
from cryoscope.errors import InvalidValueError
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.stack_writer import StackWriter
from cryoscope.io.star import write_star

Order = Literal["both", "x-first", "y-first"]


@torch.no_grad()
def transfer(generators: nn.ModuleDict, images: torch.Tensor, path: Path, batch_size: int = 64) -> torch.Tensor:
    """(path)(images): images [n, N, N] (normalised, on the generators' device) through the transfers of `path` in
    order, `batch_size` at a time (the generators' batch statistics are taken per batch, as in training)."""
    out = []
    for lo in range(0, images.shape[0], batch_size):
        x = images[lo:lo + batch_size]
        for name in path:
            x = generators[name](x)
        out.append(x)
    return torch.cat(out)


def route_choice(n: int, source: Domain, target: Domain, order: Order) -> tuple[list[Path], np.ndarray]:
    """The routes from `source` to `target` and the route index [n] of each image: with two concepts to change,
    "x-first" (G/F1 then G/F2), "y-first", or "both" (alternating, so that the two orders contribute equally)."""
    paths = routes(source, target)
    if order not in ("both", "x-first", "y-first"):
        raise InvalidValueError(f"unknown order {order!r} (both, x-first or y-first)")
    if len(paths) == 1 or order == "x-first":
        return paths, np.zeros(n, np.int64)
    return paths, (np.arange(n) % 2 if order == "both" else np.ones(n, np.int64))


def synthesise(generators: nn.ModuleDict, images: torch.Tensor, source: Domain, target: Domain, order: Order = "both",
               batch_size: int = 64) -> tuple[torch.Tensor, list[Path], np.ndarray]:
    """Images of `source` carried to `target`: (images [n, N, N], routes, route index [n] per image)."""
    paths, which = route_choice(images.shape[0], source, target, order)
    out = torch.empty_like(images)
    for k, path in enumerate(paths):
        sel = torch.from_numpy(np.nonzero(which == k)[0]).to(images.device)
        if sel.numel():
            out[sel] = transfer(generators, images[sel], path, batch_size)
    return out, paths, which


def write_generated(out_dir: str | FilePath, images: torch.Tensor, pixel_size: float, columns: dict[str, np.ndarray],
                    protect: tuple[str | FilePath, ...] = (), name: str = "generated") -> tuple[FilePath, FilePath]:
    """`name`.mrcs (float32, pixel size in the header) and `name`.star (RELION 3.1; `columns`: extra per-image columns);
    both atomic. Returns their paths."""
    out = FilePath(out_dir)
    stack_path, star_path = out / f"{name}.mrcs", out / f"{name}.star"
    n, box = images.shape[0], images.shape[-1]
    with StackWriter(stack_path, n, box, pixel_size, protect=protect) as writer:
        writer.write(0, images)
    meta = ParticleMetadata(n=n, pixel_size=torch.full((n,), float(pixel_size), dtype=torch.float64), box=box,
                            image_names=[(stack_path.name, i) for i in range(n)], root=out.resolve())
    write_star(star_path, meta, protect=protect, extra=columns)
    return stack_path, star_path
