"""Runs of the heterogeneity engine on files: `cryoscope hetero run | simulate | analyze`.

`run` folder OUT: `hetero_model.pt` (basis spec, means [K, N_c], variances [K, N_c], λ², class weights, pixel size,
box; load with torch.load(weights_only=True)), `checkpoint.pt` (`--resume`), `mean_class{k}.mrc`, `sd_class{k}.mrc`,
`particles.star` (most probable orientation and class, with the class posterior), `history.csv`,
`radial_sd.csv`, plots, `report.html`, `params.json`, `metrics.json`.
`analyze` folder OUT: `fsc.csv` (with `--other`), `radial_sd.csv`, `sd_bfactor.pdb` (with `--pdb`), `moments.npz`
(with `--export-moments`: ĉ and V̂ in a basis of the mechanical model, for `cryoscope mechanics fit`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import random_rotations
from cryoscope.hetero.analysis import capsid_region, flip_hand, fractional_difference, gain, radial_sd, sd_at_points, shell_correlation, to_rectangular
from cryoscope.hetero.gem import HeteroData, HeteroEstimator, HeteroModel, known_pose_model
from cryoscope.hetero.mechanics_io import write_moments
from cryoscope.hetero.moments_basis import BoxBasis, SineBasis
from cryoscope.hetero.operator import ProjectionOperator
from cryoscope.hetero.orientations import local_candidates, orientation_quadrature
from cryoscope.hetero.simulate import measurements_to_images, simulate_measurements
from cryoscope.io.atomic import atomic_path
from cryoscope.io.checkpoint import load_checkpoint, save_checkpoint
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import read_map, write_map
from cryoscope.io.pdb import read_structure
from cryoscope.io.runinfo import write_log_csv
from cryoscope.io.stack_writer import StackWriter
from cryoscope.io.star import write_star
from cryoscope.particles import ctf_params
from cryoscope.physics.ctf import CTFParams, ctf_at
from cryoscope.report.html import ReportFigure, ReportSection, write_report
from cryoscope.report.plots import plot_series
from cryoscope.representations.spherical_basis import SphericalBasis
from cryoscope.simulation.config import SimulationConfig
from cryoscope.simulation.draws import draw_ctf
from cryoscope.workflows.likelihood import finish_run, open_particles

MODEL_FILE = "hetero_model.pt"


def basis_from_params(p: dict, pixel_size: float, box: int) -> SphericalBasis:
    """The basis of a run: radius (Å, default 0.45 box) and resolution (Å, the band limit) in pixels."""
    radius_px = (p["radius"] / pixel_size) if p.get("radius") else 0.45 * box
    if radius_px > box / 2:
        raise InvalidValueError(f"particle radius {radius_px * pixel_size:g} Å exceeds half the box ({box / 2 * pixel_size:g} Å)")
    k_max = pixel_size / p["resolution"] if p.get("resolution") else None
    if k_max is not None and k_max > 0.5:
        raise InvalidValueError(f"resolution {p['resolution']:g} Å is finer than Nyquist ({2 * pixel_size:g} Å)")
    return SphericalBasis(radius_px, p["l_max"], p["p_max"], p["symmetry"], k_max)


def measurement_band(basis: SphericalBasis) -> float:
    """Band of the measurements (cycles/pixel): 1.25 × the basis' highest radial peak, at most Nyquist."""
    return min(0.5, 1.25 * basis.band_limit())


def ctf_groups(params: CTFParams, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group per particle [n] by mean-defocus quantiles and each group's representative particle [G] (median defocus)."""
    defocus = (params.defocus_u + params.defocus_v).double() / 2
    n_groups = max(1, min(n_groups, defocus.numel()))
    order = torch.argsort(defocus)
    group = torch.empty_like(order)
    rank = torch.arange(order.numel(), device=order.device)
    group[order] = torch.div(rank * n_groups, order.numel(), rounding_mode="floor")
    reps = torch.stack([order[(group[order] == g).nonzero().squeeze(1)[int((group == g).sum()) // 2]] for g in range(n_groups)])
    return group, reps


def _load_data(p: dict, op: ProjectionOperator, meta: ParticleMetadata, source, progress: bool) -> tuple[HeteroData, torch.Tensor]:
    """Measurements of every particle (origins undone), CTF groups and their CTFs, prior poses [n, 3, 3]."""
    px = float(meta.require_pixel_size()[0])
    parts: list[list[torch.Tensor]] = [[] for _ in op.channels]
    for lo in tqdm(range(0, meta.n, 256), desc="Fourier transforms", disable=not progress, unit="batch"):
        idx = np.arange(lo, min(meta.n, lo + 256))
        images = source.stack[idx]
        origins = None if meta.shifts_A is None else meta.shifts_A[idx] / meta.require_pixel_size()[idx, None]
        for c, y in enumerate(op.measurements(images, origins)):
            parts[c].append(y)
    ctf = None
    group = torch.zeros(meta.n, dtype=torch.long, device=op.device)
    if p["ctf"] and meta.has_ctf:
        params = ctf_params(meta)
        group, reps = ctf_groups(params, p["ctf_groups"])
        kx, ky = op.frequencies_angstrom(px)
        ctf = ctf_at(params[reps].to(op.device, op.dtype), kx, ky)
        group = group.to(op.device)
    return HeteroData(tuple(torch.cat(q) for q in parts), group, ctf), meta.rotations.to(op.dtype)


def _checkpoint_state(model: HeteroModel, history: list[dict]) -> dict:
    return {**{k: v.cpu() for k, v in model.state().items()}, "history": history}


def save_model(path: Path, basis: SphericalBasis, model: HeteroModel, pixel_size: float, box: int, protect=()) -> None:
    """The estimate with what rebuilds its basis, loadable with torch.load(weights_only=True)."""
    with atomic_path(path, protect) as tmp:
        torch.save({"basis": basis.spec(), "pixel_size": pixel_size, "box": box, **{k: v.cpu() for k, v in model.state().items()}}, tmp)


def load_model(path: str | Path) -> tuple[SphericalBasis, HeteroModel, float, int]:
    """(basis, model, pixel size Å, box) from a `hetero_model.pt`."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        basis = SphericalBasis(**d["basis"])
        model = HeteroModel(d["mean"], d["variance"], d["noise"], d["weights"])
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise InvalidValueError(f"not a cryoscope hetero model ({err})", path) from None
    if model.mean.shape[-1] != basis.size:
        raise InvalidValueError(f"model has {model.mean.shape[-1]} coefficients, its basis {basis.size}", path)
    return basis, model, float(d["pixel_size"]), int(d["box"])


def run_hetero(p: dict, out: Path, resume: bool, progress: bool, device: torch.device, started: float) -> dict:
    """`cryoscope hetero run`: GEM from the particles' poses (V = 0) to the ML means, variances, noise and classes."""
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float64 if p["dtype"] == "float64" else torch.float32
    torch.manual_seed(p["seed"])
    protect = (p["particles"],)
    meta, source = open_particles(p["particles"], p["pixel_size"], p["ctf"])
    if not meta.has_poses:
        raise InvalidValueError("particles have no poses (rlnAngleRot/Tilt/Psi): the GEM starts from a homogeneous reconstruction's poses", p["particles"])
    px, box = float(meta.require_pixel_size()[0]), meta.require_box()
    basis = basis_from_params(p, px, box)
    op = ProjectionOperator(basis, box, measurement_band(basis), dtype, device, joint=p["full_covariance"])
    data, prior = _load_data(p, op, meta, source, progress)
    grid = orientation_quadrature(basis.symmetry, p["grid_order"], dtype)
    if p["local_deg"] > 0:
        data.candidates = local_candidates(prior.cpu(), grid.cpu(), basis.symmetry, p["local_deg"]).to(device)
    bar = tqdm(disable=not progress, unit="chunk")

    def tick(label: str, i: int, n: int) -> None:
        if i == 0:
            bar.reset(total=n)
            bar.set_description(label)
        bar.update(1)

    est = HeteroEstimator(op, data, grid, chunk=p["chunk"], prune=p["prune"], progress=tick)
    ckpt = out / "checkpoint.pt"
    history: list[dict] = []
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, p)
        model = HeteroModel(*(state[k].to(device, dtype) for k in ("mean", "variance", "noise", "weights")))
        history = list(state["history"])
    else:
        model = known_pose_model(op, data, prior.to(device), p["classes"], generator=torch.Generator().manual_seed(p["seed"]),
                                 full_covariance=p["full_covariance"])

    def checkpoint(record: dict) -> None:
        history.append(record)
        save_checkpoint(ckpt, _checkpoint_state(model, history), p)

    model, steps = est.run(model, not p["no_variance"], p["tol"], p["max_mean_iterations"], p["max_rounds"], p["variance_iterations"], checkpoint)
    history.append(steps[-1])
    bar.close()
    final = est.e_step(model)
    save_model(out / MODEL_FILE, basis, model, px, box, protect)
    maps = write_maps(out, basis, model, px, box, protect)
    write_particles(out, meta, final.weights, grid, protect)
    keys = list(dict.fromkeys(k for h in history for k, v in h.items() if not isinstance(v, list)))
    write_log_csv(out / "history.csv", [{k: h.get(k, "") for k in keys} for h in history], protect)
    r = torch.linspace(0, basis.radius, 200, dtype=torch.float64, device="cpu")
    sds = [radial_sd(basis, model.variance[k].double().cpu(), r) for k in range(model.n_classes)]
    write_radial_csv(out / "radial_sd.csv", r * px, {f"sd_class{k + 1}": s for k, s in enumerate(sds)}, protect)
    metrics = {
        "n_particles": meta.n, "box": box, "pixel_size": px, "n_coefficients": basis.size, "basis": basis.spec(),
        "band_limit_angstrom": px / basis.band_limit(), "n_measurements": op.n_measurements, "n_orientations": int(grid.shape[0]),
        "mean_candidates_per_image": float(data.candidates.sum(1).float().mean()) if data.candidates is not None else int(grid.shape[0]),
        "noise_variance": float(model.noise), "class_weights": model.weights.tolist(), "log_likelihood": final.log_likelihood,
        "gem_steps": len(history), "maps": maps, "device": str(device), "dtype": p["dtype"],
    }
    write_run_report(out, history, r * px, sds, maps, metrics)
    finish_run(out, p, metrics, started)
    return metrics


def write_maps(out: Path, basis: SphericalBasis, model: HeteroModel, px: float, box: int, protect=()) -> list[str]:
    """Mean and standard-deviation maps of every class (Eq. 2.3, 2.5), in the images' units."""
    names = []
    for k in range(model.n_classes):
        mean = basis.to_voxels(model.mean[k].double().cpu(), box)
        sd = basis.variance_to_voxels(model.variance[k].double().cpu(), box).clamp_min(0).sqrt()
        for name, vol in ((f"mean_class{k + 1}.mrc", mean), (f"sd_class{k + 1}.mrc", sd)):
            write_map(out / name, vol.float(), px, protect)
            names.append(name)
    return names


def write_particles(out: Path, meta: ParticleMetadata, weights: torch.Tensor, grid: torch.Tensor, protect=()) -> None:
    """particles.star with each image's most probable orientation and class and the class posterior."""
    K = weights.shape[0]
    flat = weights.permute(1, 0, 2).reshape(meta.n, -1).cpu()
    best = flat.argmax(1)
    cls, t = best // grid.shape[0], best % grid.shape[0]
    post = weights.sum(2).T.cpu()  # [n, K]
    new = ParticleMetadata(**{**vars(meta), "rotations": grid.cpu().double()[t], "euler": None, "class_number": cls + 1})
    extra = {"cryoscopeClassPosterior": post[torch.arange(meta.n, device=post.device), cls].double().numpy()}
    if K > 1:
        extra.update({f"cryoscopeClass{k + 1}Posterior": post[:, k].double().numpy() for k in range(K)})
    write_star(out / "particles.star", new, protect=protect, extra=extra)


def write_radial_csv(path: Path, x: torch.Tensor, columns: dict[str, torch.Tensor], protect=(), x_name: str = "radius_angstrom") -> None:
    """A CSV of curves sampled at x (radii in Å, or frequencies in 1/Å with x_name)."""
    rows = [{x_name: float(x[i]), **{name: float(v[i]) for name, v in columns.items()}} for i in range(x.numel())]
    write_log_csv(path, rows, protect)


def write_run_report(out: Path, history: list[dict], r: torch.Tensor, sds: list[torch.Tensor], maps: list[str], metrics: dict) -> None:
    ll = [h["log_likelihood"] for h in history if "log_likelihood" in h]
    figs = [
        ReportFigure(plot_series(out / "log_likelihood.png", list(range(len(ll))), {"log-likelihood": ll}, "GEM step", "Σ log p(y)", "Marginal log-likelihood"),
                     "After each GEM step (non-decreasing, up to pruning)."),
        ReportFigure(plot_series(out / "radial_sd.png", r.tolist(), {f"class {k + 1}": s.tolist() for k, s in enumerate(sds)}, "radius (Å)", "s̄(r)", "Radial standard deviation"),
                     "Square root of the spherically averaged variance (Eq. 2.19)."),
    ]
    summary = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    write_report(out / "report.html", "cryoscope hetero", [ReportSection("Heterogeneity", "Maps: " + ", ".join(maps), summary, figs)])


def run_simulate(p: dict, out: Path, device: torch.device, started: float) -> dict:
    """`cryoscope hetero simulate`: particles drawn from the model (c_i ~ N(c̄_k, V_k), uniform poses, white noise)."""
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(p["seed"])
    px, box = p["pixel_size"], p["box"]
    basis = basis_from_params(p, px, box)
    op = ProjectionOperator(basis, box, measurement_band(basis), torch.float64, "cpu")
    K = len(p["class_weights"])
    if p["map"]:
        m = read_map(p["map"], px)
        if m.data.shape[-1] != box:
            raise InvalidValueError(f"map is {m.data.shape[-1]} px, --box is {box}", p["map"])
        base = basis.from_voxels(m.data.double())
    else:
        base = torch.randn(basis.size, generator=g, dtype=torch.float64) / (1 + basis.zeros / 5)
    means = torch.stack([base] + [base + p["class_separation"] * base.norm() * (lambda d: d / d.norm())(torch.randn(basis.size, generator=g, dtype=torch.float64)) for _ in range(K - 1)])
    variance = p["variance"] * base.pow(2).mean() * torch.ones(K, basis.size, dtype=torch.float64)
    classes = torch.multinomial(torch.tensor(p["class_weights"], dtype=torch.float64), p["n"], replacement=True, generator=g)
    clean, _, _ = simulate_measurements(op, means, torch.zeros_like(variance), 0.0, classes[:256], torch.Generator().manual_seed(p["seed"]))
    noise = sum(float(y.pow(2).sum()) for y in clean) / (256 * op.n_measurements) / p["snr"]
    rotations = random_rotations(p["n"], generator=g, dtype=torch.float64)
    ctf_cols: dict = {}
    ctf = None
    if p["defocus"]:
        lo, hi = p["defocus"]
        ctf_cols = draw_ctf(SimulationConfig(n_particles=p["n"], defocus_min=lo, defocus_max=hi), g)  # 300 kV, Cs 2.7 mm, 10 %
        kx, ky = op.frequencies_angstrom(px)
        ctf = ctf_at(CTFParams.create(**ctf_cols, dtype=torch.float64), kx, ky)  # exact per particle
    y, rotations, _ = simulate_measurements(op, means, variance, noise, classes, g, rotations, ctf)
    with StackWriter(out / "particles.mrcs", p["n"], box, px) as writer:
        for s in range(0, p["n"], 256):
            writer.write(s, measurements_to_images(op, tuple(q[s : s + 256] for q in y)).float())
    meta = ParticleMetadata(n=p["n"], rotations=rotations, pixel_size=torch.full((p["n"],), px), box=box, **ctf_cols,
                            class_number=classes + 1, image_names=[("particles.mrcs", i) for i in range(p["n"])], root=out)
    write_star(out / "particles.star", meta)
    truth = HeteroModel(means, variance, torch.tensor(noise, dtype=torch.float64), torch.tensor(p["class_weights"], dtype=torch.float64))
    save_model(out / "truth.pt", basis, truth, px, box)
    metrics = {"n_particles": p["n"], "n_coefficients": basis.size, "noise_variance": noise, "class_counts": torch.bincount(classes, minlength=K).tolist()}
    finish_run(out, p, metrics, started)
    return metrics


def rectangular_basis(spec: str, half_width: float):
    """'sine:K' (K³ sine products) or 'box:M' (Fourier series, |n_i| <= M, half space) on the cube of half-width Å."""
    kind, _, size = spec.partition(":")
    if kind not in ("sine", "box") or not size.isdigit() or int(size) < 1:
        raise InvalidValueError(f"moments basis must be sine:K or box:M with a positive integer, got {spec!r}")
    return SineBasis(half_width, int(size)) if kind == "sine" else BoxBasis.half_space(half_width, int(size))


def run_analyze(p: dict, out: Path, started: float) -> dict:
    """`cryoscope hetero analyze`: FSC and energy between two estimates, gain-matched SD, radial profiles, B-factors."""
    out.mkdir(parents=True, exist_ok=True)
    basis, model, px, box = load_model(p["model"])
    cls = p["class_index"] - 1
    if not 0 <= cls < model.n_classes:
        raise InvalidValueError(f"class {p['class_index']} does not exist (the model has {model.n_classes})", p["model"])
    mean, var = model.mean[cls].double(), model.variance[cls].double()
    if p["flip_hand"]:
        mean, var = flip_hand(basis, mean, var)
    metrics: dict = {"model": str(p["model"]), "class": p["class_index"], "hand_flipped": p["flip_hand"]}
    r = torch.linspace(0, basis.radius, 200, dtype=torch.float64, device="cpu")
    columns = {"sd": radial_sd(basis, var, r)}
    if p["other"]:
        basis2, model2, px2, box2 = load_model(p["other"])
        if basis2.spec() != basis.spec() or abs(px2 - px) > 1e-6 * px:
            raise InvalidValueError("the two models use different bases or pixel sizes", p["other"])
        mean2, var2 = model2.mean[cls].double(), model2.variance[cls].double()
        k = torch.linspace(0, basis.band_limit(), 100, dtype=torch.float64, device="cpu")[1:]
        fsc, e1, e2 = shell_correlation(basis, mean, mean2, k)
        write_radial_csv(out / "fsc.csv", k / px, {"fsc": fsc, "energy_1": e1, "energy_2": e2}, x_name="frequency_inverse_angstrom")
        maps = [basis.to_voxels(c, box) for c in (mean, mean2)]
        r1, r2 = (x / px for x in p["region"]) if p["region"] else (0.5 * basis.radius, basis.radius)
        g = gain(maps[0], maps[1], capsid_region(maps, r1, r2))
        columns["sd_other_gain_matched"] = abs(g) * radial_sd(basis, var2, r)
        columns["fractional_difference"] = fractional_difference(columns["sd_other_gain_matched"], columns["sd"], r, r1, r2)
        metrics.update({"gain": g, "fsc_min_in_band": float(fsc.min()), "fsc": fsc.tolist(), "k_inverse_angstrom": (k / px).tolist()})
    write_radial_csv(out / "radial_sd.csv", r * px, columns)
    if p["export_moments"]:
        rect = rectangular_basis(p["export_moments"], p["half_width"] or basis.radius * px)
        B = to_rectangular(basis, rect, px)
        cov = B @ (torch.diag(var) if var.dim() == 1 else var) @ B.T
        write_moments(out / "moments.npz", B @ mean, cov, rect)
        metrics["moments_basis"] = p["export_moments"]
    if p["pdb"]:
        st = read_structure(p["pdb"])
        atoms = [a for mdl in st for ch in mdl for res in ch for a in res]
        xyz = torch.tensor([[a.pos.x, a.pos.y, a.pos.z] for a in atoms], dtype=torch.float64, device="cpu")
        xyz = xyz / px - box // 2  # MRC origin 0
        sd = sd_at_points(basis, var, xyz)
        for a, s in zip(atoms, sd.tolist()):
            a.b_iso = s
        with atomic_path(out / "sd_bfactor.pdb", (p["pdb"],)) as tmp:
            st.write_pdb(str(tmp))
        metrics["atoms"] = len(atoms)
    finish_run(out, p, metrics, started)
    return metrics


__all__ = ["MODEL_FILE", "basis_from_params", "ctf_groups", "load_model", "run_analyze", "run_hetero", "run_simulate", "save_model"]
