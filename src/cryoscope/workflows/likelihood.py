"""Runs of the likelihood engine on files: input checks, checkpoints and resume, outputs (maps, STAR, metrics).

Shared by `cryoscope refine`, `cryoscope classify` and `cryoscope abinitio` and by the demo. Output layout of
a folder OUT: `checkpoint.pt` (the state after the last finished iteration; `--resume` continues from it),
maps (`map.mrc`, `half_map1.mrc`, `half_map2.mrc` for one class; `class001.mrc`, `class001_half1.mrc`, ... for
several), `particles.star` (best pose, origin, class, half-set, posterior spreads), `fsc.png`,
`params.json` and `metrics.json`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cryoscope.distributed import DistContext
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.alignment import align_poses
from cryoscope.io.checkpoint import CheckpointDir
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import write_map
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.io.convert import read_metadata
from cryoscope.io.star import write_star
from cryoscope.likelihood.abinitio import (
    AbinitioIteration,
    AbinitioResult,
    AbinitioState,
    abinitio,
)
from cryoscope.likelihood.data import ParticleSource
from cryoscope.likelihood.em import (
    EMResult,
    EMSettings,
    expectation_maximization,
    from_state_dict,
    state_dict,
)
from cryoscope.physics.filters import fourier_resize, lowpass, soft_mask
from cryoscope.simulation.states import fit_box
from cryoscope.validation.align import fsc_after_alignment
from cryoscope.validation.fsc import fsc, resolution_at


def open_particles(
    star: str | Path, pixel_size: float | None = None, use_ctf: bool = True, device: torch.device | str = "cpu", batch_size: int = 512
) -> tuple[ParticleMetadata, ParticleSource]:
    """Read a particle STAR (or cryoSPARC .cs) file and its images; CTF off (with a warning) when the file has no CTF
    columns.

    Every image is checked for NaN/Inf before any work is done (one pass over the stack).
    """
    meta = read_metadata(star, pixel_size=pixel_size)
    if pixel_size is not None:
        meta = meta.with_overrides(pixel_size=pixel_size)
    if use_ctf and not meta.has_ctf:
        warnings.warn(f"{star}: no CTF columns; running with the CTF off", stacklevel=2)
        use_ctf = False
    stack = meta.images()
    for lo in range(0, meta.n, batch_size):  # the stack reader refuses NaN/Inf images: find them before any work
        stack[np.arange(lo, min(meta.n, lo + batch_size))]
    return meta, ParticleSource(meta, stack, device, use_ctf)


def match_map(vol: torch.Tensor, voxel_size: float, box: int, pixel_size: float, source: str) -> torch.Tensor:
    """A reference map [M, M, M] at `voxel_size` Å brought to the particles' box and pixel size (Fourier crop/pad)."""
    if abs(voxel_size - pixel_size) / pixel_size > 1e-3:
        m = round(vol.shape[-1] * voxel_size / pixel_size)
        if abs(m * pixel_size - vol.shape[-1] * voxel_size) / (vol.shape[-1] * voxel_size) > 0.01:
            raise InvalidValueError(f"voxel size {voxel_size:g} Å cannot be resampled to the particles' {pixel_size:g} Å", source)
        vol = fourier_resize(vol, m, ndim=3)
    if vol.shape[-1] != box:
        vol = fit_box(vol, box)
    return vol


def read_references(spec: str, n_classes: int, box: int, pixel_size: float) -> torch.Tensor:
    """Comma-separated truth map paths, one per class, as [K, N, N, N] in the particles' box and pixel size."""
    from cryoscope.io.mrc import read_map

    paths = [p for p in str(spec).split(",") if p]
    if len(paths) != n_classes:
        raise InvalidValueError(f"{len(paths)} reference maps for {n_classes} classes", str(spec))
    maps = [read_map(p) for p in paths]
    return torch.stack([match_map(m.data.float(), m.voxel_size, box, pixel_size, p) for p, m in zip(paths, maps)])


def _checkpoint(out_dir: str | Path, params: dict, resume: bool) -> tuple[CheckpointDir, dict | None]:
    """The run's checkpoint folder (created) and, when resuming, the saved state (None without a checkpoint: warned)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = CheckpointDir(out, params)
    if resume and ckpt.exists():
        return ckpt, ckpt.load()[1]
    if resume:
        warnings.warn(f"{ckpt.path}: no checkpoint to resume from; starting from the beginning", stacklevel=2)
    return ckpt, None


def run_em(
    particles: ParticleSource,
    initial_maps: torch.Tensor,
    settings: EMSettings,
    out_dir: str | Path,
    params: dict,
    seed: int = 0,
    resume: bool = False,
    ctx: DistContext | None = None,
    prior_rotations: torch.Tensor | None = None,
    prior_shifts_px: torch.Tensor | None = None,
    progress: bool = True,
    track: Callable[[EMResult], dict] | None = None,
    half: torch.Tensor | None = None,
) -> tuple[EMResult, list[dict]]:
    """EM with a checkpoint after every iteration in `out_dir`; `resume` continues from the last one.

    `params` (JSON-able) must equal the checkpointed run's: resuming with other settings is an error.
    `track` (e.g. `reference_record`) is called on the main process after every iteration but the last (whose record
    `write_em_outputs` takes from its final metrics); its records, numbered by iteration, are checkpointed with the
    state and returned with the result. `half` [n] (0/1) fixes the half-sets.
    """
    ckpt, saved = _checkpoint(out_dir, params, resume)
    state = None if saved is None else from_state_dict({k: v for k, v in saved.items() if k != "tracked"})
    tracked: list[dict] = [] if saved is None else list(saved.get("tracked", []))
    is_main = ctx is None or ctx.is_main
    bar = tqdm(total=settings.n_iter, initial=0 if state is None else state.iterations_done, desc="EM", unit="iter", disable=not (progress and is_main))

    def on_iteration(st: EMResult) -> None:
        if is_main:
            if track is not None and st.iterations_done < settings.n_iter:
                tracked.append({"iteration": st.iterations_done, **track(st)})
            ckpt.save(st.iterations_done, {**state_dict(st), "tracked": tracked})
        bar.update(1)
        bar.set_postfix(res=f"{max(st.resolution):.3f}", cutoff=f"{st.next_cutoff:.3f}")

    result = expectation_maximization(
        particles, initial_maps, settings, prior_rotations, prior_shifts_px, seed=seed, ctx=ctx, state=state, on_iteration=on_iteration,
        half=half,
    )
    bar.close()
    return result, tracked


def run_abinitio(
    particles: ParticleSource, out_dir: str | Path, params: dict, resume: bool = False, progress: bool = True, **options
) -> AbinitioResult:
    """`likelihood.abinitio.abinitio(particles, **options)` with a checkpoint after every iteration in `out_dir`;
    `resume` continues from the last one (same `params` required)."""
    ckpt, saved = _checkpoint(out_dir, params, resume)
    state = None if saved is None else AbinitioState(**{**saved, "history": [AbinitioIteration(**h) for h in saved["history"]]})
    n_iter = options.get("n_iter", 200)
    bar = tqdm(total=n_iter, initial=0 if state is None else state.iteration, desc="ab-initio", unit="iter", disable=not progress)

    def on_iteration(st: AbinitioState) -> None:
        ckpt.save(st.iteration, {**vars(st), "history": [vars(h) for h in st.history]})
        bar.update(1)
        bar.set_postfix(cutoff=f"{st.history[-1].cutoff:.3f}" if st.history else "")

    result = abinitio(particles, on_iteration=on_iteration, state=state, **options)
    bar.close()
    return result


def particle_table(
    meta: ParticleMetadata, rotations: torch.Tensor, shifts_px: torch.Tensor, class_posterior: torch.Tensor, pixel_size: float,
    extra: dict[str, np.ndarray] | None = None,
) -> tuple[ParticleMetadata, dict[str, np.ndarray]]:
    """Metadata with new poses [n, 3, 3], origins (pixels -> Å) and best classes, plus the extra STAR columns
    (maximum class posterior, and each class's posterior when there are several)."""
    rotations, shifts_px, class_posterior = rotations.cpu(), shifts_px.cpu(), class_posterior.cpu()  # written as numpy
    out = ParticleMetadata(**{**vars(meta), "rotations": rotations.double(), "euler": None,
                              "shifts_A": shifts_px.double() * pixel_size, "class_number": class_posterior.argmax(-1) + 1})
    cols = {**(extra or {}), "rlnMaxValueProbDistribution": class_posterior.max(-1).values.numpy()}
    if class_posterior.shape[1] > 1:
        for k in range(class_posterior.shape[1]):
            cols[f"cryoscopeClassPosterior{k + 1:03d}"] = class_posterior[:, k].numpy()
    return out, cols


def truth_metrics(
    maps: dict[str, torch.Tensor], references: torch.Tensor | None, rotations: torch.Tensor,
    true_rotations: torch.Tensor | None, pixel_size: float, symmetry: str = "C1", classes: torch.Tensor | None = None,
) -> tuple[dict, dict]:
    """FSC of each named map against its reference after rigid alignment (rotation, shift, hand; maps paired with
    references [K, N, N, N] by best mean FSC), unmasked and (`*_truth_masked_fsc_*`) inside a soft sphere of radius
    0.45 N, which compares maps made in any frame alike, and the pose error after gauge alignment (modulo symmetry).
    classes [n] (best class per particle, K > 1): every class map has its own frame, so each class's particles get
    their own gauge. Returns (metrics, FSC curves)."""
    metrics, curves = {}, {}
    if references is not None:
        names = list(maps)
        # classes come out in any order: pair each map with the reference it matches best (mean FSC, greedy)
        table = {(i, j): fsc_after_alignment(maps[a].cpu(), references[j].to(maps[a].dtype).cpu())
                 for i, a in enumerate(names) for j in range(references.shape[0])}
        free = set(range(references.shape[0]))
        for i, name in sorted(enumerate(names), key=lambda p: -max(float(table[p[0], j].fsc.mean()) for j in free)):
            j = max(free, key=lambda j: float(table[i, j].fsc.mean()))
            free.discard(j)
            curve = table[i, j].fsc
            curves[f"{name} vs truth {j + 1}"] = curve
            metrics[f"{name}_truth_index"] = j + 1
            n = maps[name].shape[-1]
            # a map made in another frame loses, when rotated onto the truth, any density outside the box's
            # inscribed sphere; the masked FSC compares only what every frame keeps
            aligned = table[i, j].aligned
            masked = fsc(aligned, references[j].to(aligned), soft_mask(n, 0.45 * n, 0.05 * n, 3, dtype=aligned.dtype))
            for thr in (0.5, 0.143):
                c, a = resolution_at(curve, thr, n, pixel_size)
                metrics[f"{name}_truth_fsc_{thr}_cycles_per_pixel"], metrics[f"{name}_truth_fsc_{thr}_A"] = c, a
                c, a = resolution_at(masked, thr, n, pixel_size)
                metrics[f"{name}_truth_masked_fsc_{thr}_cycles_per_pixel"], metrics[f"{name}_truth_masked_fsc_{thr}_A"] = c, a
    if true_rotations is not None:
        names = list(maps)
        rotations, true_rotations = rotations.cpu(), true_rotations.cpu()
        labels = torch.zeros(rotations.shape[0], dtype=torch.long) if classes is None or len(names) == 1 else classes.cpu()
        errors = []
        for k in labels.unique().tolist():
            sel = labels == k
            if int(sel.sum()) < 3:  # no gauge from fewer particles
                continue
            _, flip, err = align_poses(rotations[sel].double(), true_rotations[sel].double(), symmetry)
            errors.append(err)
            if len(names) > 1:
                metrics[f"{names[k]}_pose_error_median_deg"] = float(err.median())
        if errors:
            err = torch.cat(errors)
            metrics |= {"pose_error_median_deg": float(err.median()), "pose_error_mean_deg": float(err.mean())}
            if len(names) == 1:
                metrics["pose_gauge_flip"] = bool(flip)
    return metrics, curves


def _names(k: int) -> list[str]:
    return ["map"] if k == 1 else [f"class{i + 1:03d}" for i in range(k)]


def reference_record(
    result: EMResult, references: torch.Tensor | None, true_rotations: torch.Tensor | None, pixel_size: float, symmetry: str = "C1",
) -> dict:
    """`truth_metrics` of an EM state reduced to a per-iteration record: each map's FSC crossings against its
    reference (cycles/pixel, unmasked and masked) and the median pose errors (degrees)."""
    m, _ = truth_metrics(dict(zip(_names(result.maps.shape[0]), result.maps)), references, result.rotations, true_rotations,
                         pixel_size, symmetry, result.best_class)
    return _record(m)


def _record(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.endswith(("_cycles_per_pixel", "pose_error_median_deg"))}


def write_em_outputs(
    result: EMResult,
    meta: ParticleMetadata,
    out_dir: str | Path,
    pixel_size: float,
    protect: tuple = (),
    references: torch.Tensor | None = None,
    true_rotations: torch.Tensor | None = None,
    symmetry: str = "C1",
    tracked: list[dict] | None = None,
) -> dict:
    """Maps, half-maps, particles.star and fsc.png into `out_dir`; returns the metrics.

    references [K, N, N, N] (truth maps in any gauge) add the FSC against them after rigid alignment;
    true_rotations [n, 3, 3] add the pose error after gauge alignment; `tracked` (`run_em`'s per-iteration
    records), with the last iteration's record from these metrics, becomes `truth_history`.
    """
    from cryoscope.report.plots import plot_fsc

    out = Path(out_dir)
    K, box = result.maps.shape[0], result.maps.shape[-1]
    names = _names(K)
    metrics = {"n_particles": meta.n, "box": box, "pixel_size_A": pixel_size, "n_classes": K, "iterations": result.iterations_done}
    curves = {}
    for k, name in enumerate(names):
        write_map(out / f"{name}.mrc", result.maps[k], pixel_size, protect)
        for h in (0, 1):
            half_name = f"half_map{h + 1}" if K == 1 else f"{name}_half{h + 1}"
            write_map(out / f"{half_name}.mrc", result.half_maps[h, k], pixel_size, protect)
            if result.unfiltered_half_maps is not None:
                write_map(out / f"{half_name}_unfil.mrc", result.unfiltered_half_maps[h, k], pixel_size, protect)
        cyc = result.resolution[k]
        metrics[f"{name}_halfmap_fsc_0.143_cycles_per_pixel"] = cyc
        metrics[f"{name}_halfmap_fsc_0.143_A"] = pixel_size / cyc if cyc > 0 else math.inf
        metrics[f"{name}_fraction"] = float(result.class_fractions[k])
        curves[f"{name}: half-maps"] = result.fsc_half[k]
    m, c = truth_metrics(dict(zip(names, result.maps)), references, result.rotations, true_rotations, pixel_size, symmetry,
                         result.best_class)
    metrics |= m
    curves |= c
    metrics["empty_classes"] = result.history[-1].empty_classes if result.history else []
    metrics["history"] = [vars(h) for h in result.history]
    if references is not None or true_rotations is not None:
        metrics["truth_history"] = [*(tracked or []), {"iteration": result.iterations_done, **_record(m)}]
    extra = {"rlnRandomSubset": (result.half + 1).cpu().numpy(),
             "cryoscopeAngularSpreadDeg": result.angular_spread_deg.cpu().numpy(),
             "cryoscopeShiftSpreadPx": result.shift_spread_px.cpu().numpy()}
    table, cols = particle_table(meta, result.rotations, result.shifts_px, result.class_posterior, pixel_size, extra)
    write_star(out / "particles.star", table, protect=protect, extra=cols)
    plot_fsc(out / "fsc.png", curves, box, pixel_size)
    return metrics


def write_abinitio_outputs(
    result: AbinitioResult,
    meta: ParticleMetadata,
    out_dir: str | Path,
    pixel_size: float,
    protect: tuple = (),
    references: torch.Tensor | None = None,
    true_rotations: torch.Tensor | None = None,
) -> dict:
    """Class maps (`map.mrc` for one class), particles.star (best poses, classes) and, with references, fsc.png."""
    from cryoscope.report.plots import plot_fsc

    out = Path(out_dir)
    K, box = result.maps.shape[0], result.maps.shape[-1]
    names = _names(K)
    metrics = {"n_particles": meta.n, "box": box, "pixel_size_A": pixel_size, "n_classes": K, "iterations": len(result.history),
               "empty_classes": result.empty_classes, "history": [vars(h) for h in result.history]}
    for k, name in enumerate(names):
        write_map(out / f"{name}.mrc", result.maps[k], pixel_size, protect)
        metrics[f"{name}_fraction"] = float(result.class_fractions[k])
    m, curves = truth_metrics(dict(zip(names, result.maps)), references, result.rotations, true_rotations, pixel_size,
                              classes=result.best_class)
    metrics |= m
    table, cols = particle_table(meta, result.rotations, result.shifts_px, result.class_posterior, pixel_size)
    write_star(out / "particles.star", table, protect=protect, extra=cols)
    if curves:
        plot_fsc(out / "fsc.png", curves, box, pixel_size)
    return metrics


def finish_run(out_dir: str | Path, params: dict, metrics: dict, started: float) -> None:
    """params.json and metrics.json (with the wall time) beside the outputs."""
    out = Path(out_dir)
    write_params_json(out / "params.json", params)
    write_metrics_json(out / "metrics.json", {**metrics, "seconds": time.perf_counter() - started})


__all__ = [
    "finish_run", "match_map", "open_particles", "particle_table", "read_references", "reference_record", "run_abinitio", "run_em",
    "truth_metrics",
    "write_abinitio_outputs", "write_em_outputs",
]
