"""Report figures (matplotlib, Agg backend). Each function writes one PNG atomically and returns its path."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cryoscope.errors import InvalidValueError  # noqa: E402
from cryoscope.io.atomic import atomic_path  # noqa: E402
from cryoscope.physics.poses import viewing_directions  # noqa: E402

FSC_THRESHOLDS = (0.143, 0.5)


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def plot_fsc(
    path: str | Path,
    curves: Mapping[str, torch.Tensor | np.ndarray],
    box: int,
    voxel_size: float | None = None,
    title: str = "Fourier shell correlation",
    dpi: int = 100,
) -> Path:
    """Labelled FSC curves (shell i at i / box cycles/pixel) with the 0.143 and 0.5 thresholds.

    With `voxel_size` (Å) a top axis gives the resolution in Å.
    """
    if not curves:
        raise InvalidValueError("plot_fsc: no curves given")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, curve in curves.items():
        c = _np(curve).reshape(-1)
        ax.plot(np.arange(c.size) / box, c, label=label, lw=1.5)
    for t in FSC_THRESHOLDS:
        ax.axhline(t, color="grey", ls="--", lw=0.8)
        ax.text(0.005, t + 0.01, f"{t:g}", color="grey", fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlim(0, 0.5)
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.set_xlabel("spatial frequency (cycles/pixel)")
    ax.set_ylabel("FSC")
    ax.legend(loc="upper right", fontsize=8)
    if voxel_size is not None:
        top = ax.twiny()
        top.set_xlim(ax.get_xlim())
        ticks = [f for f in ax.get_xticks() if 0 < f <= 0.5]
        top.set_xticks(ticks)
        top.set_xticklabels([f"{voxel_size / f:.3g}" for f in ticks])
        top.set_xlabel("resolution (Å)")
    ax.set_title(title, fontsize=10, pad=24 if voxel_size is not None else 6)
    fig.tight_layout()
    return _save(fig, path, dpi)


def direction_angles(R: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of the viewing directions (3rd row of each RELION matrix [..., 3, 3])."""
    d = _np(viewing_directions(R)).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(d[:, 1], d[:, 0])), np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))


def _rot_tilt_axes(ax) -> None:
    """Axes of a viewing-direction map: rot -180..180° across, tilt 0° (top) to 180° down."""
    ax.set_xlabel("rot (°)")
    ax.set_ylabel("tilt (°)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(180, 0)


def plot_angular_distribution(
    path: str | Path, R: torch.Tensor, bins: tuple[int, int] = (72, 36), title: str = "Angular distribution", dpi: int = 100
) -> Path:
    """2-D histogram of viewing directions in (rot, tilt), as particles per steradian (uniform coverage is flat)."""
    if R.dim() < 2 or R.shape[-2:] != (3, 3) or R.numel() == 0:
        raise InvalidValueError(f"plot_angular_distribution: expected rotation matrices [n, 3, 3], got {tuple(R.shape)}")
    rot, tilt = direction_angles(R)
    rot_edges = np.linspace(-180, 180, bins[0] + 1)
    tilt_edges = np.linspace(0, 180, bins[1] + 1)
    counts, _, _ = np.histogram2d(rot, tilt, bins=(rot_edges, tilt_edges))
    solid = np.radians(360 / bins[0]) * (np.cos(np.radians(tilt_edges[:-1])) - np.cos(np.radians(tilt_edges[1:])))
    density = counts / solid[None, :]
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    vmax = float(np.percentile(density, 99)) or None  # small polar bins would otherwise set the scale
    mesh = ax.pcolormesh(rot_edges, tilt_edges, density.T, cmap="viridis", shading="flat", vmin=0, vmax=vmax)
    fig.colorbar(mesh, ax=ax, label="particles / sr")
    _rot_tilt_axes(ax)
    ax.set_title(f"{title} ({rot.size} views)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _three_panels(path: str | Path, panels: list[tuple[np.ndarray, str]], title: str, dpi: int) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.4))
    for ax, (img, label) in zip(axes, panels):
        ax.imshow(img, cmap="gray", origin="lower", interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _check_volume(vol: torch.Tensor, what: str) -> np.ndarray:
    if vol.dim() != 3:
        raise InvalidValueError(f"{what}: expected a volume [z, y, x], got shape {tuple(vol.shape)}")
    return _np(vol)


def plot_central_slices(path: str | Path, vol: torch.Tensor, title: str = "Central slices", dpi: int = 100) -> Path:
    """Central sections through N // 2 of a volume [z, y, x]: xy (z = 0), xz (y = 0), yz (x = 0)."""
    v = _check_volume(vol, "plot_central_slices")
    cz, cy, cx = (s // 2 for s in v.shape)
    panels = [(v[cz], "xy (z = 0)"), (v[:, cy, :], "xz (y = 0)"), (v[:, :, cx], "yz (x = 0)")]
    return _three_panels(path, panels, title, dpi)


def plot_projections(path: str | Path, vol: torch.Tensor, title: str = "Projections", dpi: int = 100) -> Path:
    """Sums of a volume [z, y, x] along z, y and x."""
    v = _check_volume(vol, "plot_projections")
    panels = [(v.sum(0), "along z (xy)"), (v.sum(1), "along y (xz)"), (v.sum(2), "along x (yz)")]
    return _three_panels(path, panels, title, dpi)


def plot_montage(
    path: str | Path, stack: torch.Tensor, k: int = 16, ncols: int | None = None, title: str = "Images", dpi: int = 100
) -> Path:
    """Grid of the first `k` images of a stack [n, y, x], each scaled to its own range."""
    if stack.dim() != 3 or stack.shape[0] == 0:
        raise InvalidValueError(f"plot_montage: expected a non-empty stack [n, y, x], got shape {tuple(stack.shape)}")
    imgs = _np(stack[:k])
    count = imgs.shape[0]
    ncols = ncols or math.ceil(math.sqrt(count))
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < count:
            ax.imshow(imgs[i], cmap="gray", origin="lower", interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_training(path: str | Path, history: list[dict], keys: tuple[str, ...], title: str = "Training", dpi: int = 100) -> Path:
    """One panel per `keys` entry of the per-iteration log `history` (dicts with 'iteration'), against the iteration."""
    if not history:
        raise InvalidValueError("plot_training: empty history")
    fig, axes = plt.subplots(len(keys), 1, figsize=(6.4, 1.8 * len(keys)), sharex=True, squeeze=False)
    it = np.array([h["iteration"] for h in history])
    for ax, key in zip(axes[:, 0], keys):
        ax.plot(it, [h[key] for h in history], lw=0.8)
        ax.set_ylabel(key.replace("_", " "), fontsize=8)
    axes[-1, 0].set_xlabel("generator iteration")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_embedding(
    path: str | Path, embedding: torch.Tensor | np.ndarray, labels: np.ndarray, title: str = "Embedding", dpi: int = 100
) -> Path:
    """Scatter of a 2-D embedding [n, 2] coloured by integer label [n] (-1 = noise, grey, drawn first), legend with counts."""
    xy, lab = _np(embedding), np.asarray(labels).reshape(-1)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0 or lab.size != xy.shape[0]:
        raise InvalidValueError(f"plot_embedding: expected an embedding [n, 2] and n labels, got {xy.shape} and {lab.size}")
    values = np.unique(lab)
    groups = values[values != -1]
    colours = plt.get_cmap("tab10" if groups.size <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for v in values:
        sel = lab == v
        colour = "lightgrey" if v == -1 else colours(int(np.searchsorted(groups, v)) % colours.N)
        name = "noise" if v == -1 else str(v)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=2, color=colour, lw=0, rasterized=True, label=f"{name} ({int(sel.sum())})")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=4, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} ({xy.shape[0]} particles)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_ritz_history(path: str | Path, history: list[torch.Tensor], title: str = "Lanczos Ritz values", dpi: int = 100) -> Path:
    """Ritz values of every Lanczos iteration (paper Fig. 23): the extreme eigenvalues converge first."""
    if not history:
        raise InvalidValueError("plot_ritz_history: empty history")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("cool")
    for m, ritz in enumerate(history, 1):
        r = _np(ritz)
        ax.scatter(np.full(r.size, m), r, s=3, color=cmap(m / len(history)), lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("Lanczos iteration")
    ax.set_ylabel("Ritz value (NLL per unit ‖ΔF‖²)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_alignment_field(
    path: str | Path, R: torch.Tensor, delta: torch.Tensor, title: str = "Implicit alignment changes", dpi: int = 100
) -> Path:
    """Δτ over viewing directions (paper Fig. 2, 9): each particle's viewing direction in (rot, tilt), coloured by
    |Δτ_j| (degrees), with an arrow along the change of its viewing direction. delta [n, 3]: image-frame rotation
    vectors ω_j (radians) with R_j -> exp([ω_j]x) R_j."""
    d = _np(viewing_directions(R)).reshape(-1, 3)
    w = _np(delta).reshape(-1, 3)
    # exp([ω]x)^T e_z ≈ e_z - ω x e_z, so the direction d = R^T e_z moves by R^T (-ω_y, ω_x, 0)
    dd = np.einsum("nji,nj->ni", _np(R).reshape(-1, 3, 3), np.stack([-w[:, 1], w[:, 0], np.zeros(len(w))], -1))
    rot, tilt = direction_angles(R)
    rho2 = np.maximum(d[:, 0] ** 2 + d[:, 1] ** 2, 1e-12)
    d_rot = np.degrees((d[:, 0] * dd[:, 1] - d[:, 1] * dd[:, 0]) / rho2)
    d_tilt = np.degrees(-dd[:, 2] / np.sqrt(rho2))
    mag = np.degrees(np.linalg.norm(w, axis=-1))
    fig, ax = plt.subplots(figsize=(7.4, 4.0))
    order = np.argsort(mag)
    sc = ax.scatter(rot[order], tilt[order], c=mag[order], s=6, cmap="magma_r", lw=0)
    ax.quiver(rot, tilt, d_rot * np.sin(np.radians(tilt)), d_tilt, mag, cmap="magma_r", angles="xy", width=0.002)
    fig.colorbar(sc, ax=ax, label="|Δτ| (°)")
    _rot_tilt_axes(ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_series(
    path: str | Path, x: np.ndarray | list, series: Mapping[str, np.ndarray | list], xlabel: str, ylabel: str,
    title: str, log_y: bool = False, dpi: int = 100, log_x: bool = False, mark_x: tuple[float, str] | None = None,
) -> Path:
    """Labelled line plots of several series against one x (eigenvalue spectra, stiffness along a path, cost curves);
    `mark_x` = (x, label) draws a dashed vertical line there (a fitted value)."""
    if not series:
        raise InvalidValueError("plot_series: no series given")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, y in series.items():
        ax.plot(np.asarray(x)[: len(y)], np.asarray(y), marker="o", ms=3, lw=1.2, label=label)
    if mark_x is not None:
        ax.axvline(mark_x[0], color="C3", ls="--", label=mark_x[1])
    if log_y:
        ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)
