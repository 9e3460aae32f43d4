"""`cryoscope softmodes`: the softest modes of the Hessian of the log-likelihood of a map and its particles, and what
they say about which parts of the map and which alignments cannot be trusted (Rangan et al.).

Stages: the map goes to spherical harmonics on Fourier shells; particles (or images simulated from the map with a
chosen pose distribution and defocus) go to polar Fourier rings; poses are polished to the likelihood's optimum; the
effective Hessian (alignments implicit) is probed by Lanczos with the rigid rotations deflated; each mode is scaled to a
log-likelihood ratio of log 20. Outputs: |ΔF| and F ± ΔF maps, per-image |Δτ| (STAR column / CSV), plots, report.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cryoscope.distributed import DistContext, all_reduce_sum_, barrier, finalize_distributed, gather_rows, init_distributed, shard_indices
from cryoscope.errors import InvalidValueError
from cryoscope.io.atomic import atomic_path
from cryoscope.io.checkpoint import load_checkpoint, save_checkpoint
from cryoscope.io.mrc import read_map, write_map
from cryoscope.physics.ctf import CTFParams
from cryoscope.physics.poses import rotations_from_spec
from cryoscope.representations.shells import ShellBasis, from_real, from_voxels, k_max_from_two_pi_k, shell_basis, to_real, to_voxels
from cryoscope.uncertainty.alignments import polish_alignments
from cryoscope.uncertainty.hessian import EffectiveHessian
from cryoscope.uncertainty.data import ParticleRings
from cryoscope.uncertainty.likelihood import NoiseModel, RingLikelihood
from cryoscope.uncertainty.moments import VolumetricLikelihood, accumulate_moments
from cryoscope.uncertainty.prepare import (
    disc_dof, rings_from_images, simulate_rings, temperature_from_residuals, temperature_from_snr,
)
from cryoscope.uncertainty.slicing import default_n_psi
from cryoscope.uncertainty.softmodes import EffectiveOperator, SoftModes, log20_scaling, log_determinant, soft_modes


def basis_for(box: int, two_pi_k: float, shells: int, degree: int, radius: float, dtype, device) -> ShellBasis:
    """Shells up to 2πK (paper units, radians per half box); defaults: ceil(2.4 k_max) shells, degree ceil(2πK)."""
    k_max = k_max_from_two_pi_k(two_pi_k)
    n = shells or int(math.ceil(2.4 * k_max))
    return shell_basis(k_max, n, degree or int(math.ceil(two_pi_k)), box, radius, dtype, device)


@dataclass
class Shard:
    """This process's particles `index` [m] of `n` in a (possibly single-process) run."""

    ctx: DistContext
    index: torch.Tensor
    n: int

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Per-particle rows of this shard [m, ...] -> all particles [n, ...] on every process."""
        return gather_rows(values.cpu(), self.index, self.n, self.ctx) if self.ctx.distributed else values.cpu()


def simulated_particles(p: dict, basis: ShellBasis, x: torch.Tensor, pixel_size: float, index: torch.Tensor) -> ParticleRings:
    """Noiseless templates of the map at poses drawn from `p['simulate']` and defoci from `p['defocus']` (MIN:MAX Å),
    for the particles `index` of the whole draw."""
    gen = torch.Generator().manual_seed(p["seed"])
    R = rotations_from_spec(p["simulate"], p["n_images"], gen, torch.float64).to(basis.k.device)
    ctf = None
    if p["defocus"] != "none":
        try:
            lo, hi = (float(v) for v in str(p["defocus"]).split(":"))
        except ValueError:
            raise InvalidValueError(f"--defocus must be 'none' or MIN:MAX in Å, got {p['defocus']!r}") from None
        df = (lo + (hi - lo) * torch.rand(p["n_images"], generator=gen, dtype=torch.float64, device="cpu"))[index]
        ctf = CTFParams.create(defocus_u=df, defocus_v=df, defocus_angle=0.0, device=basis.k.device)
    n_psi = p["n_psi"] or default_n_psi(basis.L)
    return simulate_rings(basis, x, R[index.to(R.device)], n_psi, ctf, pixel_size, p["chunk"])


def open_aligned_particles(p: dict, box: int):
    """Metadata and images of `p['particles']`, checked: the map's box and poses present."""
    from cryoscope.workflows.likelihood import open_particles

    meta, source = open_particles(p["particles"], p["pixel_size"], p["ctf"])
    if meta.require_box() != box:
        raise InvalidValueError(f"particles are {meta.require_box()} px but the map is {box} px", p["particles"])
    if not meta.has_poses:
        raise InvalidValueError("particles have no poses (rlnAngleRot/Tilt/Psi): soft modes need aligned particles", p["particles"])
    return meta, source


def particle_rings(p: dict, basis: ShellBasis, meta, source, index: torch.Tensor, progress: bool) -> tuple[ParticleRings, float]:
    """Rings of the particles `index` of `p['particles']` (poses, CTF and origins from the STAR file)."""
    from cryoscope.particles import ctf_params

    device = basis.k.device
    px = float(meta.require_pixel_size()[0])
    n_psi = p["n_psi"] or default_n_psi(basis.L)
    parts = []
    for lo in tqdm(range(0, len(index), 256), desc="polar transforms", disable=not progress, unit="batch"):
        idx = index[lo : lo + 256].numpy()
        sub = meta.subset(torch.as_tensor(idx, device="cpu"))
        images = source.stack[idx].to(device)
        origins = None if sub.shifts_A is None else (sub.shifts_A / sub.require_pixel_size()[:, None]).to(device)
        ctf = ctf_params(sub) if (p["ctf"] and meta.has_ctf) else None
        parts.append(rings_from_images(images, sub.rotations.to(device), basis, n_psi, ctf, origins, px))
    cat = (lambda name: None if getattr(parts[0], name) is None else torch.cat([getattr(q, name) for q in parts]))
    return ParticleRings(cat("rings"), cat("rotations"), cat("ctf"), cat("phases")), px


def noise_model(p: dict, lik: RingLikelihood, x: torch.Tensor, basis: ShellBasis, signal: torch.Tensor | None, shard: Shard) -> NoiseModel:
    """The noise model of the run, with the temperature estimated when not given (and an affine fit of log ℓ), from
    the per-image values of all processes."""
    dof = disc_dof(basis.k_max)
    if p["noise"] == "low-temperature":
        if p["temperature"]:
            t = p["temperature"]
        elif signal is not None:
            t = temperature_from_snr(shard.gather(signal), basis.k_max, p["snr"])
        else:
            t = temperature_from_residuals(shard.gather(lik.per_image(x)), basis.k_max)
        return NoiseModel("low-temperature", temperature=t, offset=p["offset"])
    if signal is not None:
        raise InvalidValueError(f"--noise {p['noise']} needs real (noisy) particles; simulated templates have no residual")
    ell = shard.gather(lik.per_image(x))
    if p["noise"] == "marginal":
        return NoiseModel("marginal", dof=dof, offset=p["offset"])
    A = torch.stack([ell, torch.ones_like(ell)], -1)
    a, b = torch.linalg.lstsq(A, torch.log(ell)[:, None]).solution[:, 0].tolist()
    return NoiseModel("affine", dof=dof, affine=(a, b), offset=p["offset"])


def stationary_point(lik: RingLikelihood, x: torch.Tensor, p: dict, progress: bool, ctx: DistContext) -> tuple[RingLikelihood, torch.Tensor, dict]:
    """Polish the poses (Newton); with --refine-map R, alternate R times with the least-squares map (low temperature)."""
    info: dict = {"polish_steps_rad": [], "refine_rounds": 0}
    tol = 1e-10 if x.dtype == torch.float64 else 1e-6  # relative; float32 stalls above 1e-10
    for r in tqdm(range(p["refine_map"] + 1), desc="stationary point", disable=not progress or p["refine_map"] == 0):
        lik, steps = polish_alignments(lik, x, p["polish"], tol)
        info["polish_steps_rad"].append(steps)
        if r == p["refine_map"]:
            break
        if lik.noise.kind != "low-temperature":
            raise InvalidValueError("--refine-map needs --noise low-temperature (the least-squares map is its optimum)")
        moments = accumulate_moments(lik.basis, lik.data, p["chunk"])
        all_reduce_sum_([moments.m20, moments.m11, moments.m02], ctx)
        x, cg = VolumetricLikelihood(lik.basis, moments).least_squares_map(tol, x0=x)
        info["refine_rounds"] = r + 1
        info["least_squares_residual"], info["least_squares_iterations"] = cg["relative_residual"], cg["iterations"]
    return lik, x, info


@dataclass
class Analysis:
    modes: SoftModes
    operator: EffectiveOperator
    seconds: float
    matvecs: int
    hvp_per_second: float


def analyse(lik: RingLikelihood, x: torch.Tensor, p: dict, progress: bool, ctx: DistContext) -> Analysis:
    """Effective Hessian and its k softest modes (Lanczos or eigsh), with timing of the Hessian-vector products."""
    op = EffectiveOperator(EffectiveHessian(lik, x, ctx), lik.basis)
    bar = tqdm(total=p["max_iter"], desc="Lanczos", disable=not progress, unit="it")
    t0 = time.perf_counter()
    modes = soft_modes(op, p["n_modes"], p["method"], p["max_iter"], p["tol"], seed=p["seed"],
                       callback=lambda m, ritz: bar.update(1) or bar.set_postfix(softest=f"{float(ritz[0]):.4g}"))
    seconds = time.perf_counter() - t0
    bar.close()
    gen = torch.Generator().manual_seed(p["seed"])
    y = torch.randn(op.dim, generator=gen, dtype=torch.float64, device="cpu").to(op.sqrt_m)
    t1 = time.perf_counter()
    for _ in range(3):
        op(y)
    rate = 3 / (time.perf_counter() - t1)
    return Analysis(modes, op, seconds, op.calls - 3, rate)


# |λ| below this fraction of the largest Ritz value is a null direction: about 1000x the Rayleigh quotients of the
# exact null directions (rigid rotations, before deflation: 1e-12 to 3e-11 of the largest in float32)
NULL_RELATIVE = {"float32": 1e-8, "float64": 1e-13}


def write_mode_outputs(out: Path, analysis: Analysis, x: torch.Tensor, basis: ShellBasis, voxel_size: float, p: dict,
                       protect: tuple) -> tuple[dict, list[dict], list[dict], torch.Tensor]:
    """Maps |ΔF|, F ± ΔF for the softest `maps_for` modes; per-mode metrics of the scaled modes and of the null ones
    (|λ| at rounding level: the data do not determine them, e.g. Fourier directions no view samples); per-image |Δτ|
    [J, k'] (degrees) of the k' scaled modes."""
    f_map = to_voxels(from_real(x, basis), basis).float().cpu()
    write_map(out / "map_shells.mrc", f_map, voxel_size, protect)
    modes = analysis.modes
    null_tol = NULL_RELATIVE[p["dtype"]] * modes.largest_ritz
    maps, rows, nulls, degrees = {"f_map": f_map}, [], [], []
    for i in range(modes.eigenvalues.shape[0]):
        lam = float(modes.eigenvalues[i])
        if lam < -null_tol:
            warnings.warn(f"mode {i + 1} has eigenvalue {lam:.4g} < 0: the map and poses are not at a likelihood minimum "
                          "along it (try --refine-map); no log-20 scaling for it", stacklevel=2)
            break
        if lam <= null_tol:
            nulls.append({"mode": i + 1, "eigenvalue": lam, "residual": float(modes.residuals[i])})
            continue
        s = log20_scaling(modes, x, basis, i)
        degrees.append(s.alignment_degrees.cpu())
        rows.append({"mode": i + 1, "eigenvalue": s.eigenvalue, "norm_log20": s.norm, "relative_norm_log20": s.relative_norm,
                     "max_alignment_deg": float(s.alignment_degrees.max()), "median_alignment_deg": float(s.alignment_degrees.median()),
                     "residual": float(modes.residuals[i])})
        if len(rows) <= p["maps_for"]:
            dmap = to_voxels(from_real(s.delta_x, basis), basis).float().cpu()
            maps[f"abs_{i + 1}"] = dmap.abs()
            write_map(out / f"mode_{i + 1:02d}_abs.mrc", dmap.abs(), voxel_size, protect)
            write_map(out / f"mode_{i + 1:02d}_plus.mrc", f_map + dmap, voxel_size, protect)
            write_map(out / f"mode_{i + 1:02d}_minus.mrc", f_map - dmap, voxel_size, protect)
    if not degrees:
        if nulls:
            raise InvalidValueError(f"all {len(nulls)} softest modes are null directions (|λ| <= {NULL_RELATIVE[p['dtype']]:g} of "
                                    "the largest): the data do not determine the map along them (views missing?); "
                                    "ask for more with --n-modes to reach the first determined mode")
        raise InvalidValueError("the softest mode has a negative eigenvalue: the map is not at a likelihood minimum; use --refine-map")
    return maps, rows, nulls, torch.stack(degrees, -1)


def write_alignment_table(out: Path, rotations: torch.Tensor, degrees: torch.Tensor, mode_numbers: list[int]) -> None:
    """alignments.csv: particle index, viewing direction (rot, tilt) and |Δτ| per scaled mode (degrees, log-20 scaled)."""
    from cryoscope.geometry.rotations import matrix_to_euler

    e = matrix_to_euler(rotations.double().cpu()).numpy()
    with atomic_path(out / "alignments.csv") as tmp:
        with open(tmp, "w") as fh:
            fh.write("index,rot,tilt,psi," + ",".join(f"mode{m}_deg" for m in mode_numbers) + "\n")
            for j in range(degrees.shape[0]):
                fh.write(f"{j},{e[j, 0]:.4f},{e[j, 1]:.4f},{e[j, 2]:.4f}," + ",".join(f"{v:.6g}" for v in degrees[j].tolist()) + "\n")


def write_report(out: Path, analysis: Analysis, rows: list[dict], rotations: torch.Tensor, maps: dict, metrics: dict) -> None:
    from cryoscope.report.html import ReportFigure, ReportSection, write_report as render
    from cryoscope.report.plots import plot_alignment_field, plot_central_slices, plot_projections, plot_ritz_history, plot_series

    modes = analysis.modes
    figs = [ReportFigure(plot_series(out / "eigenvalues.png", [r["mode"] for r in rows], {"softest modes": [r["eigenvalue"] for r in rows]},
                                     "mode", "eigenvalue (NLL per unit ‖ΔF‖²)", "Softest eigenvalues of the effective Hessian", log_y=True),
                         "Rayleigh quotients of the k softest modes (rigid rotations deflated)")]
    if modes.ritz_history:
        figs.append(ReportFigure(plot_ritz_history(out / "ritz.png", modes.ritz_history), "Lanczos Ritz values per iteration (Fig. 23)"))
    for r in rows[: metrics["maps_written"]]:
        m = r["mode"]
        s_dir = modes.alignments[m - 1] * r["norm_log20"]
        figs.append(ReportFigure(plot_alignment_field(out / f"mode_{m:02d}_alignments.png", rotations.cpu(), s_dir.cpu(),
                                                      f"mode {m}: implicit alignment changes"),
                                 f"Mode {m}: Δτ over viewing directions, log-20 scaled (Fig. 2/9)"))
        figs.append(ReportFigure(plot_projections(out / f"mode_{m:02d}_projections.png", maps[f"abs_{m}"],
                                                  f"mode {m}: |ΔF| projections"),
                                 f"Mode {m}: where the map is uncertain (|ΔF|, log-20 scaled)"))
    figs.append(ReportFigure(plot_central_slices(out / "map_slices.png", maps["f_map"], "map (band-limited to 2πK)"), "The analysed map"))
    table = {f"mode {r['mode']}": f"λ={r['eigenvalue']:.4g}  ‖ΔF‖/‖F‖={r['relative_norm_log20']:.3g}  max|Δτ|={r['max_alignment_deg']:.3g}°"
             for r in rows}
    table.update({f"mode {r['mode']}": f"λ={r['eigenvalue']:.3g}: null direction, not determined by the data"
                  for r in metrics["null_modes"]})
    sections = [ReportSection("Soft modes", "Each mode is scaled so that the perturbed map is 20 times less likely than the "
                              "original (log-likelihood ratio log 20); alignments follow implicitly.", table, figs)]
    render(out / "report.html", "Soft modes of the Hessian", sections, metrics)


def _setup(p: dict, ctx: DistContext, dtype, progress: bool):
    """Map, basis, this process's particle rings and the noise model, before polishing."""
    m = read_map(p["map"], p["pixel_size"])
    vol = m.data
    if vol.dim() != 3 or len(set(vol.shape)) != 1:
        raise InvalidValueError(f"the map must be cubic, got shape {tuple(vol.shape)}", p["map"])
    box = vol.shape[-1]
    basis = basis_for(box, p["two_pi_k"], p["shells"], p["degree"], p["radius"], dtype, ctx.device)
    x = to_real(from_voxels(vol.to(ctx.device), basis), basis)
    meta = None
    if p["particles"]:
        meta, source = open_aligned_particles(p, box)
        shard = Shard(ctx, shard_indices(torch.arange(meta.n, device="cpu"), ctx), meta.n)
        data, px = particle_rings(p, basis, meta, source, shard.index, progress)
        if m.voxel_size > 0 and abs(m.voxel_size - px) > 1e-3 * px:
            raise InvalidValueError(f"map voxel size {m.voxel_size:g} Å differs from the particles' pixel size {px:g} Å", p["map"])
        signal = None
    else:
        if not p["simulate"]:
            raise InvalidValueError("give --particles STAR (aligned particles) or --simulate POSES (synthetic images from the map)")
        px = p["pixel_size"] or m.voxel_size
        if not px > 0 and p["defocus"] != "none":
            raise InvalidValueError("the map header has no voxel size: give --pixel-size for the CTF", p["map"])
        shard = Shard(ctx, shard_indices(torch.arange(p["n_images"], device="cpu"), ctx), p["n_images"])
        data = simulated_particles(p, basis, x, px or 1.0, shard.index)
        signal = 0.5 * (data.rings.abs() ** 2 * (basis.radial_weights * basis.k)[:, None] * (2 * math.pi / data.n_psi)).sum((-2, -1))
    lik = RingLikelihood(basis, data, chunk=p["chunk"])
    lik = RingLikelihood(basis, data, noise_model(p, lik, x, basis, signal, shard), chunk=p["chunk"])
    return basis, x, lik, meta, px or m.voxel_size or 1.0, shard


def run_softmodes(params: dict, out: Path, resume: bool, progress: bool, device: str, started: float) -> dict:
    """`cryoscope softmodes` with the CLI's params; with torchrun, particles are sharded over the processes (the
    effective Hessian's per-image sums all-reduced) and rank 0 writes the outputs."""
    ctx = init_distributed(device)
    try:
        return _run_softmodes(params, Path(out), resume, progress and ctx.is_main, ctx, started)
    finally:
        finalize_distributed(ctx)


def _run_softmodes(p: dict, out: Path, resume: bool, progress: bool, ctx: DistContext, started: float) -> dict:
    from cryoscope.workflows.likelihood import finish_run

    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float64 if p["dtype"] == "float64" else torch.float32
    torch.manual_seed(p["seed"])
    protect = tuple(q for q in (p["map"], p["particles"]) if q)
    basis, x, lik, meta, voxel_size, shard = _setup(p, ctx, dtype, progress)
    ckpt = out / "stationary.pt"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, p)
        rotations = state["rotations"][shard.index].to(ctx.device, dtype)
        x, lik, info = state["x"].to(ctx.device, dtype), lik.with_data(lik.data.with_rotations(rotations)), state["info"]
    else:
        lik, x, info = stationary_point(lik, x, p, progress, ctx)
        rotations = shard.gather(lik.data.rotations.reshape(-1, 9)).reshape(-1, 3, 3)
        if ctx.is_main:
            save_checkpoint(ckpt, {"x": x.cpu(), "rotations": rotations, "info": info}, p)
        barrier(ctx)
    analysis = analyse(lik, x, p, progress, ctx)
    modes = analysis.modes
    extra: dict = {}
    if p["check_eigsh"]:
        check = soft_modes(analysis.operator, p["n_modes"], "eigsh", tol=p["tol"], seed=p["seed"])
        extra["eigsh_eigenvalues"] = check.eigenvalues.tolist()
        extra["eigsh_max_relative_difference"] = float(((check.eigenvalues - modes.eigenvalues).abs() / modes.eigenvalues.abs()).max())
    if p["logdet"]:
        extra["logdet"], extra["logdet_standard_error"] = log_determinant(analysis.operator, seed=p["seed"])
    all_rotations = shard.gather(lik.data.rotations.reshape(-1, 9)).reshape(-1, 3, 3)
    alignments = shard.gather(modes.alignments.transpose(0, 1).reshape(len(lik), -1)).reshape(shard.n, -1, 3).transpose(0, 1)
    if not ctx.is_main:
        return {}
    modes.alignments = alignments
    p_maps = min(p["maps_for"], p["n_modes"])
    maps, rows, nulls, degrees = write_mode_outputs(out, analysis, x, basis, voxel_size, {**p, "maps_for": p_maps}, protect)
    numbers = [r["mode"] for r in rows]
    write_alignment_table(out, all_rotations, degrees, numbers)
    fragile = torch.argsort(degrees[:, 0], descending=True)[: p["fragile"]]
    metrics = {
        "n_images": shard.n, "processes": ctx.world_size, "box": basis.box, "two_pi_k": p["two_pi_k"],
        "k_max_cycles_per_box": basis.k_max, "n_shells": basis.n_shells, "degree": basis.L, "n_parameters": basis.n_params,
        "noise_model": lik.noise.kind, "temperature": lik.noise.temperature, "dof": disc_dof(basis.k_max),
        "eigenvalues": modes.eigenvalues.tolist(), "modes": rows, "null_modes": nulls,
        "rigid_rayleigh_over_largest": (modes.rigid_rayleigh.abs() / modes.largest_ritz).tolist()
        if math.isfinite(modes.largest_ritz) else modes.rigid_rayleigh.abs().tolist(),
        "lanczos_iterations": modes.iterations, "converged": modes.converged, "largest_ritz": modes.largest_ritz, "hessian_vector_products": analysis.matvecs,
        "hvp_per_second": analysis.hvp_per_second, "seconds_to_modes": analysis.seconds,
        "fragile_images": [{"index": int(j), "alignment_deg": float(degrees[j, 0])} for j in fragile],
        "stationary_point": info, "maps_written": min(p_maps, len(rows)), "device": str(ctx.device), "dtype": p["dtype"], **extra,
    }
    if meta is not None:  # the polished poses, with |Δτ| of each mode (degrees, log-20 scaled)
        from cryoscope.io.metadata import ParticleMetadata
        from cryoscope.io.star import write_star

        polished = ParticleMetadata(**{**vars(meta), "rotations": all_rotations.double(), "euler": None})
        cols = {f"cryoscopeSoftMode{m}AlignmentDeg": degrees[:, i].numpy() for i, m in enumerate(numbers)}
        write_star(out / "particles.star", polished, protect=protect, extra=cols)
    with atomic_path(out / "softmodes.pt", protect) as tmp:
        torch.save({"eigenvalues": modes.eigenvalues.cpu(), "modes": modes.modes.cpu(), "alignments": modes.alignments.cpu(),
                    "x": x.cpu(), "k": basis.k.cpu(), "degrees": basis.degrees.cpu()}, tmp)
    write_report(out, analysis, rows, all_rotations, maps, metrics)
    finish_run(out, p, metrics, started)
    return metrics


def run_path(params: dict, out: Path, progress: bool, device: str, started: float) -> dict:
    """`cryoscope softmodes-path`: stiffness R(s) along the maps given in order (uniform s in [0, 1])."""
    from cryoscope.report.html import ReportFigure, ReportSection, write_report as render
    from cryoscope.report.plots import plot_series
    from cryoscope.uncertainty.path import path_stiffness
    from cryoscope.workflows.likelihood import finish_run

    p, out = params, Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from cryoscope.device import resolve_device

    dev = resolve_device(device)
    dtype = torch.float64 if p["dtype"] == "float64" else torch.float32
    maps = [read_map(path, p["pixel_size"]) for path in p["maps"]]
    box = maps[0].data.shape[-1]
    if any(m.data.shape != maps[0].data.shape for m in maps):
        raise InvalidValueError("all maps along the path must have the same box", p["maps"][0])
    basis = basis_for(box, p["two_pi_k"], p["shells"], p["degree"], p["radius"], dtype, dev)
    frames = torch.stack([to_real(from_voxels(m.data.to(dev), basis), basis) for m in tqdm(maps, desc="maps to shells", disable=not progress)])
    gen = torch.Generator().manual_seed(p["seed"])
    R = rotations_from_spec(p["simulate"], p["n_images"], gen, torch.float64).to(dev)
    n_psi = p["n_psi"] or default_n_psi(basis.L)
    stiffness = path_stiffness(frames, basis, R, n_psi, temperature=p["temperature"], chunk=p["chunk"]).cpu()
    s = torch.linspace(0, 1, len(maps), device="cpu")
    with atomic_path(out / "path_stiffness.csv") as tmp:
        with open(tmp, "w") as fh:
            fh.write("s,map,stiffness\n")
            for si, path, r in zip(s.tolist(), p["maps"], stiffness.tolist()):
                fh.write(f"{si:.6g},{path},{r:.8g}\n")
    metrics = {"stiffness": stiffness.tolist(), "s": s.tolist(), "argmin_s": float(s[stiffness.argmin()]),
               "argmax_s": float(s[stiffness.argmax()]), "n_parameters": basis.n_params, "n_images": p["n_images"]}
    fig = plot_series(out / "path_stiffness.png", s.numpy(), {"R(s)": stiffness.numpy()}, "path coordinate s",
                      "R(s) = ∂F† H ∂F, ‖∂F‖ = 1", "Stiffness along the path", log_y=True)
    render(out / "report.html", "Stiffness along a path", [ReportSection(
        "R(s)", "Low R(s): neighbouring maps on the path give nearly the same projections (alignments re-optimised).",
        None, [ReportFigure(fig, "Rayleigh quotient of the effective Hessian along the path tangent (Fig. 22)")])], metrics)
    finish_run(out, p, metrics, started)
    return metrics
