"""`cryoscope gmm initial-model`: a pseudo-atomic initial model from class averages with unknown rotations, by the
Poisson/Gibbs pipeline (thesis §3.4) or the Gaussian/HMC pipeline (chapter 5); restarts and refinement are
checkpointed, so a killed run resumes and ends as an uninterrupted one."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cryoscope.bayes import gaussian_pipeline, pipeline
from cryoscope.bayes.fit_map import posterior_maps
from cryoscope.bayes.gaussian_model import GaussianState, ImageSet
from cryoscope.bayes.gaussian_sampler import Tuning
from cryoscope.bayes.hmc import StepSize
from cryoscope.bayes.mixture import MixtureState
from cryoscope.bayes.pipeline import StageResult
from cryoscope.bayes.projected import BinnedImages, Poses, symmetric_copies
from cryoscope.errors import InvalidValueError
from cryoscope.geometry.alignment import rotate_poses
from cryoscope.geometry.matrix_fisher import chordal_mean
from cryoscope.geometry.resample import flip_hand
from cryoscope.geometry.symmetry import symmetry_group
from cryoscope.io.checkpoint import CheckpointDir, generator_state, restore_generator
from cryoscope.io.metadata import ParticleMetadata
from cryoscope.io.mrc import write_map
from cryoscope.io.pdb import write_pseudoatoms
from cryoscope.io.runinfo import write_metrics_json, write_params_json
from cryoscope.io.star import write_star
from cryoscope.physics.filters import fourier_resize

MODELS = ("poisson", "gaussian")


@dataclass
class InitialModelSettings:
    """Options of `gmm initial-model` (see the command's help); None means the model's default."""

    model: str = "poisson"
    restarts: int = 4
    initial_components: int = 100
    components: int | None = None
    initial_box: int | None = None
    box: int | None = None
    initial_counts: int = 1000
    counts: int = 10_000
    rounds: int = 10
    n_rotations: int = 2000
    steps: int = 300
    burn_in: int | None = None
    thin: int = 10
    seed: int = 0
    checkpoint_every: int = 25
    symmetry: str = "C1"

    def resolved(self, input_box: int) -> InitialModelSettings:
        """Defaults filled in (initial box 32; K = 1000 and box 64 for Poisson, 500 and 50 for Gaussian, as in the
        thesis; boxes never larger than the input's) and checked."""
        if self.model not in MODELS:
            raise InvalidValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        poisson = self.model == "poisson"
        s = replace(self, components=self.components or (1000 if poisson else 500), initial_box=self.initial_box or min(32, input_box),
                    box=min(self.box or (64 if poisson else 50), input_box), burn_in=self.steps // 2 if self.burn_in is None else self.burn_in)
        if not (s.restarts >= 1 and s.rounds >= 1 and s.steps >= 1 and s.thin >= 1 and s.checkpoint_every >= 1):
            raise InvalidValueError("restarts, rounds, steps, thin and checkpoint-every must be >= 1")
        if not 0 <= s.burn_in < s.steps:
            raise InvalidValueError(f"burn-in must be in [0, steps), got {s.burn_in} for {s.steps} steps")
        if s.initial_box > input_box or s.initial_box < 8:
            raise InvalidValueError(f"initial box must be in [8, {input_box}] px, got {s.initial_box}")
        symmetry_group(s.symmetry)  # a clear error for an unknown or improper group
        return s

    @property
    def group(self) -> torch.Tensor | None:
        """The point group's rotations [G, 3, 3], or None for C1."""
        return None if self.symmetry.upper() == "C1" else symmetry_group(self.symmetry)


def _seed(settings: InitialModelSettings, stream: int, device: torch.device | str) -> torch.Generator:
    """An independent generator on `device` per restart (stream r) and for the refinement (stream -1)."""
    state = np.random.SeedSequence([settings.seed, stream + 1]).generate_state(2, np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def prepare(images: torch.Tensor, pixel_size: float, settings: InitialModelSettings):
    """(initial-stage data, refinement data): images Fourier-cropped to the two boxes; the Poisson model bins their
    positive part into counts, the Gaussian model takes them as they are."""
    out = []
    for box, counts in ((settings.initial_box, settings.initial_counts), (settings.box, settings.counts)):
        small = fourier_resize(images.double(), box)
        px = pixel_size * images.shape[-1] / box
        out.append(BinnedImages.from_images(small.clamp_min(0), px, counts) if settings.model == "poisson" else ImageSet(small, px))
    return out


def _to_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _state_cls(model: str):
    return MixtureState if model == "poisson" else GaussianState


def _result_to_dict(res: StageResult) -> dict:
    return {"state": _to_dict(res.state), "poses": _to_dict(res.poses), "log_posterior": list(res.log_posterior),
            "samples": [[_to_dict(s), _to_dict(p)] for s, p in res.samples]}


def _on(d: dict, device: torch.device | str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def _result_from_dict(d: dict, model: str, device: torch.device | str) -> StageResult:
    cls = _state_cls(model)
    return StageResult(cls(**_on(d["state"], device)), Poses(**_on(d["poses"], device)), list(d["log_posterior"]),
                       [(cls(**_on(s, device)), Poses(**_on(p, device))) for s, p in d["samples"]])


def _tuning_to_dict(t: Tuning) -> dict:
    return {name: [getattr(t, name).value, getattr(t, name).adapt] for name in ("means", "rotations", "log_precision", "shifts")}


def _tuning_from_dict(d: dict, device: torch.device | str) -> Tuning:
    return Tuning(**{name: StepSize(value.to(device), adapt) for name, (value, adapt) in d.items()})


def run_initial_model(images: torch.Tensor, pixel_size: float, settings: InitialModelSettings, out: Path,
                      params: dict, resume: bool = False, progress: bool = True,
                      device: torch.device | str = "cpu") -> tuple[StageResult, dict]:
    """Restarts of the initial stage (ranked by final log-posterior), then the refinement of the best one, on
    `device` (the result comes back on the CPU). Checkpoints `out/checkpoint.pt` after every restart and every
    `checkpoint_every` refinement sweeps."""
    data_i, data_r = prepare(images.to(device), pixel_size, settings)
    group = None if settings.group is None else settings.group.to(device)
    engine = pipeline if settings.model == "poisson" else gaussian_pipeline
    ckpt = CheckpointDir(out, params)
    if resume and not ckpt.exists():
        warnings.warn(f"{ckpt.path}: no checkpoint to resume from; starting from the beginning", stacklevel=2)
    saved = ckpt.load()[1] if resume and ckpt.exists() else {"restarts": [], "refine": None}
    total = settings.restarts * settings.rounds + settings.steps
    bar = tqdm(total=total, desc=f"gmm initial-model ({settings.model})", unit="round/sweep", disable=not progress)
    bar.update(len(saved["restarts"]) * settings.rounds)
    for r in range(len(saved["restarts"]), settings.restarts):
        t0 = time.perf_counter()
        sym = {} if group is None else {"group": group}
        res = engine.initial_stage(data_i, settings.initial_components, rounds=settings.rounds, n_rotations=settings.n_rotations,
                                   generator=_seed(settings, r, device), callback=lambda _: bar.update(1), **sym)
        saved["restarts"].append({"result": _result_to_dict(res), "seconds": time.perf_counter() - t0})
        ckpt.save(r, saved)
    ranked = [float(x["result"]["log_posterior"][-1]) for x in saved["restarts"]]
    best = int(np.argmax(ranked))
    start = _result_from_dict(saved["restarts"][best]["result"], settings.model, device)
    g = _seed(settings, -1, device)
    resume_ref = None
    if saved["refine"] is not None:
        restore_generator(g, saved["refine"]["generator"])
        partial = _result_from_dict(saved["refine"]["result"], settings.model, device)
        resume_ref = partial if settings.model == "poisson" else (partial, _tuning_from_dict(saved["refine"]["tuning"], device))
        bar.update(len(partial.log_posterior))
    t_ref = time.perf_counter()

    def checkpoint(step: int, res: StageResult, tuning: Tuning | None = None) -> None:
        bar.update(1)
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            saved["refine"] = {"result": _result_to_dict(res), "generator": generator_state(g),
                               "tuning": None if tuning is None else _tuning_to_dict(tuning)}
            ckpt.save(settings.restarts + step + 1, saved)

    common = dict(steps=settings.steps, burn_in=settings.burn_in, thin=settings.thin, generator=g, callback=checkpoint, resume=resume_ref)
    if settings.model == "poisson":
        ref = pipeline.refinement_stage(data_r, settings.components, start.poses, group=group, **common)
    else:
        ref = gaussian_pipeline.refinement_stage(data_r, settings.components, start, **common)
    bar.close()
    metrics = {
        "restarts": [{"restart": i, "log_posterior": lp, "seconds": x["seconds"],
                      "sigma_A": float(x["result"]["state"]["precision"].rsqrt())} for i, (lp, x) in enumerate(zip(ranked, saved["restarts"]))],
        "best_restart": best,
        "refine_seconds_this_run": time.perf_counter() - t_ref,
        "sigma_A": ref.state.sigma,
        "n_samples": len(ref.samples),
        "refine_box": data_r.box,
        "refine_pixel_size_A": data_r.pixel_size,
        "gauge": ("map and rotations are given in the frame where the first image has rot = tilt = psi = 0"
                  if settings.group is None else f"symmetry axes of {settings.symmetry} in RELION's convention"),
        "symmetry": settings.symmetry,
        "hand": "projections do not fix the hand: map.mrc and map_other_hand.mrc fit the images equally",
        "log_posterior_trace": ref.log_posterior,
    }
    return _result_from_dict(_result_to_dict(ref), settings.model, "cpu"), metrics


def fix_gauge(state, poses: Poses):
    """The same solution rotated so that the first image's rotation is the identity: μ' = R_1 μ, R_i' = R_i R_1ᵀ."""
    r1 = poses.rotations[0]
    state = state.clone()
    state.means = state.means @ r1.T
    return state, Poses(rotate_poses(poses.rotations, r1), poses.shifts.clone())


def _mixture(state, group: torch.Tensor | None) -> MixtureState:
    """The whole mixture (all symmetry copies) as a MixtureState with weights summing to 1."""
    return state.as_mixture(normalised=True) if isinstance(state, GaussianState) else symmetric_copies(state, group)


def write_initial_model(out: Path, ref: StageResult, images_path: Path, images: torch.Tensor, pixel_size: float,
                        metrics: dict, params: dict, group: torch.Tensor | None = None) -> dict[str, Path]:
    """Posterior-mean map (scaled so its projections hold the images' mean positive mass), its per-voxel SD map and
    the other hand; pseudo-atoms of the last sample; the input images' rotations (chordal posterior mean) and shifts
    (posterior mean) as a STAR file; params and metrics. Without symmetry (`group` None) the gauge is fixed so that
    the first image has rot = tilt = psi = 0; with it, the symmetry axes fix the frame."""
    n_images = images.shape[0]
    image_mass = float(images.double().clamp_min(0).sum((-1, -2)).mean())
    samples = [fix_gauge(s, p) if group is None else (s, p) for s, p in ref.samples]
    box, px = metrics["refine_box"], metrics["refine_pixel_size_A"]
    mean, sd = posterior_maps([_mixture(s, group) for s, _ in samples], box, px, image_mass)
    paths = {name: out / f"{name}.mrc" for name in ("map", "map_sd", "map_other_hand")}
    write_map(paths["map"], mean.float(), px, protect=(images_path,))
    write_map(paths["map_sd"], sd.float(), px, protect=(images_path,))
    write_map(paths["map_other_hand"], flip_hand(mean).float(), px, protect=(images_path,))
    last = _mixture(samples[-1][0], group)
    paths["pdb"] = out / "pseudoatoms.pdb"
    write_pseudoatoms(paths["pdb"], last.means + (box // 2) * px, last.weights, last.sigma, protect=(images_path,))
    rotations = chordal_mean(torch.stack([p.rotations for _, p in samples]))
    shifts = torch.stack([p.shifts for _, p in samples]).mean(0)
    meta = ParticleMetadata(n=n_images, rotations=rotations, shifts_A=-shifts, box=images.shape[-1],
                            pixel_size=torch.full((n_images,), float(pixel_size), dtype=torch.float64),
                            image_names=[(str(images_path.resolve()), i) for i in range(n_images)])
    paths["star"] = out / "poses.star"
    write_star(paths["star"], meta, protect=(images_path,))
    paths["params"] = write_params_json(out / "params.json", params)
    paths["metrics"] = write_metrics_json(out / "metrics.json", metrics)
    return paths

