"""Ab-initio reconstruction of K maps by stochastic gradient descent (cryoSPARC's ab-initio, Punjani et al. 2017).

Maps V_k [K, N, N, N] start as seeded random positive blobs inside the mask, scaled to the data. One
iteration draws a random minibatch of particles and

- E-step (no gradient): log-likelihoods [n, K, R, T] (`inplane.score_poses_inplane`) over a global HEALPix grid
  of `healpix_order`, turned by a random rotation each iteration (so the maps are not built from the
  same discrete slices), times a square shift grid, within the current cutoff, plus log class
  fractions. Per class the pose posterior p(r, t | k); the class posterior p(k) is mixed with the
  uniform one, q_k = (1 - s) p(k) + s / K, with the class similarity s annealed from `class_similarity`
  to 0 over the first half of the run, so every class first learns from every particle.
  Negligible poses of the weights w = q_k p(r, t | k) are pruned (`scoring.significant_poses`).
- Gradient: loss_k = sum over kept poses w |T_{+t} Y - C S_r(V_k)|^2 / (2 sigma2) over the pixels within
  the cutoff, w detached (Fisher's identity: its gradient is the gradient of minus the marginal
  log-likelihood), backpropagated through `slice_fourier_volume(fourier_volume(V_k))`.
- Step: the gradient is preconditioned by the inverse of the approximate Hessian, diagonal in Fourier
  space and constant per shell: lambda_k(shell) = N^3 rho(shell) sum_i q_ik <C_i^2>(shell) / sigma2(shell),
  rho = (2-D pixels / 3-D voxels of the shell), the density of central-slice samples per voxel of one
  image (plus one pseudo-particle, which damps classes with few particles), and zeroed beyond the
  cutoff. A step of 1 along it is the Newton step that fits the minibatch at fixed poses, so the step
  size is independent of the data scale. SGD with momentum on it, then positivity (V >= 0) and a
  soft spherical mask.
- Noise spectrum: exponential moving average (weight `noise_rate`) of the per-shell expected residual
  power of the minibatch, starting from `data.image_power_spectrum`. Class fractions: moving average of
  the minibatch class posteriors, floored at `min_class_fraction` / K.

The cutoff (cycles/pixel) rises linearly from `initial_cutoff` to `final_cutoff` over the first
`march_fraction` of the iterations. After the last iteration one E-step over all particles (the
unturned grid, final cutoff) gives per-particle best poses and class posteriors; a class that gets no
particle is listed in `AbinitioResult.empty_classes`. Maps come out in an arbitrary gauge and hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.sampling import random_rotations
from cryoscope.likelihood.data import ParticleSource, image_power_spectrum
from cryoscope.likelihood.inplane import (
    healpix_base_rotations,
    inplane_rotations,
    score_poses_inplane,
)
from cryoscope.likelihood.noise import (
    cutoff_mask,
    n_shells,
    noise_spectrum,
    shell_map,
    shell_power_sums,
)
from cryoscope.likelihood.scoring import best_poses, shift_grid, significant_poses
from cryoscope.physics.filters import soft_mask
from cryoscope.physics.fourier import fft3c, ifft3c, radial_index_3d
from cryoscope.physics.projection import fourier_volume, slice_fourier_volume
from cryoscope.physics.shift import phase_ramp

# Kept poses whose slices are computed (with their autograd graph) at once.
_POSE_CHUNK = 1024
_OVERSAMPLE = 2.0


@dataclass
class AbinitioIteration:
    """One iteration: cutoff (cycles/pixel), minibatch mean log marginal likelihood (uniform pose prior),
    class fractions after the update, class similarity used, mean kept poses per particle, and the
    relative size of the map update |V_new - V| / |V| per class."""

    iteration: int
    cutoff: float
    mean_log_likelihood: float
    class_fractions: list[float]
    class_similarity: float
    mean_poses_kept: float
    relative_update: list[float]


@dataclass
class AbinitioState:
    """Everything needed to resume: maps [K, N, N, N], momentum buffers [K, N, N, N], noise spectrum
    sigma2 [N // 2 + 1], class fractions [K], iterations done, the CPU generator's state (uint8 tensor)
    and the history so far."""

    maps: torch.Tensor
    velocity: torch.Tensor
    sigma2: torch.Tensor
    class_fractions: torch.Tensor
    iteration: int
    generator_state: torch.Tensor
    history: list[AbinitioIteration] = field(default_factory=list)


@dataclass
class AbinitioResult:
    """maps [K, N, N, N]; class_fractions [K]; per particle: best rotation [n, 3, 3], origin shifts_px [n, 2]
    (x, y, pixels; model image T_{-origin} C S_r), class posterior [n, K], best class [n];
    empty_classes: classes that got no particle; sigma2 [N // 2 + 1]; history; final state (to continue)."""

    maps: torch.Tensor
    class_fractions: torch.Tensor
    rotations: torch.Tensor
    shifts_px: torch.Tensor
    class_posterior: torch.Tensor
    best_class: torch.Tensor
    empty_classes: list[int]
    sigma2: torch.Tensor
    history: list[AbinitioIteration]
    state: AbinitioState


@dataclass(frozen=True)
class _Settings:
    n_classes: int
    n_iter: int
    batch_size: int
    healpix_order: int
    max_shift: float
    shift_step: float
    initial_cutoff: float
    final_cutoff: float
    march_fraction: float
    mask_radius: float
    learning_rate: float
    momentum: float
    class_similarity: float
    min_class_fraction: float
    noise_rate: float
    max_poses: int

    def cutoff(self, it: int) -> float:
        ramp = max(1.0, self.march_fraction * (self.n_iter - 1))
        return self.initial_cutoff + (self.final_cutoff - self.initial_cutoff) * min(1.0, it / ramp)

    def similarity(self, it: int) -> float:
        return self.class_similarity * max(0.0, 1.0 - it / max(1.0, 0.5 * self.n_iter))


def _validate(s: _Settings, box: int, n: int) -> None:
    checks = [
        (s.n_classes >= 1, f"need at least one class, got {s.n_classes}"),
        (s.n_iter >= 1 and s.batch_size >= 1, f"need n_iter >= 1 and batch_size >= 1, got {s.n_iter}, {s.batch_size}"),
        (s.healpix_order >= 0, f"healpix_order must be >= 0, got {s.healpix_order}"),
        (0 < s.initial_cutoff <= s.final_cutoff <= 0.5,
         f"need 0 < initial_cutoff <= final_cutoff <= 0.5 cycles/pixel, got {s.initial_cutoff}, {s.final_cutoff}"),
        (0 < s.march_fraction <= 1, f"march_fraction must be in (0, 1], got {s.march_fraction}"),
        (0 < s.mask_radius <= box / 2, f"mask radius must be in (0, {box / 2}] pixels, got {s.mask_radius}"),
        (s.learning_rate > 0 and 0 <= s.momentum < 1, f"need learning_rate > 0 and 0 <= momentum < 1, got {s.learning_rate}, {s.momentum}"),
        (0 <= s.class_similarity <= 1 and 0 <= s.min_class_fraction < 1,
         f"class_similarity must be in [0, 1] and min_class_fraction in [0, 1), got {s.class_similarity}, {s.min_class_fraction}"),
        (0 < s.noise_rate <= 1, f"noise_rate must be in (0, 1], got {s.noise_rate}"),
        (s.max_poses >= 1, f"max_poses must be >= 1, got {s.max_poses}"),
        (n >= 1, "no particles"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidValueError(f"ab-initio: {message}")


def _shell_ctf2(C: torch.Tensor | None, n: int, box: int, device) -> torch.Tensor:
    """[n, N // 2 + 1] mean CTF^2 per shell of each image (ones without CTF)."""
    if C is None:
        return torch.ones(n, n_shells(box), device=device)
    idx = shell_map(box, device).reshape(-1)
    sums = torch.zeros(n, n_shells(box), device=device).index_add_(1, idx, C.reshape(n, -1).float() ** 2)
    return sums / torch.bincount(idx, minlength=n_shells(box)).to(sums)


class _Geometry:
    """Fixed per-run tensors: masks, shell maps, sample density per shell, grids."""

    def __init__(self, box: int, s: _Settings, device: torch.device):
        self.box = box
        self.mask = soft_mask(box, s.mask_radius, max(2.0, box / 2 - s.mask_radius), ndim=3, device=device)
        self.shell3 = radial_index_3d(box, device).clamp(max=n_shells(box) - 1)
        k = torch.arange(box, device=device, dtype=torch.float64) - box // 2
        self.radius3 = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).sqrt()
        pix = torch.bincount(shell_map(box, device).reshape(-1), minlength=n_shells(box)).double()
        vox = torch.bincount(self.shell3.reshape(-1), minlength=n_shells(box)).double()
        self.density = (pix / vox).float()  # central-slice samples per voxel and image, per shell
        self.base, self.n_psi = healpix_base_rotations(s.healpix_order, torch.float32, device)
        self.grid = inplane_rotations(self.base, self.n_psi)  # = healpix_grid(order)
        self.shifts = shift_grid(s.max_shift, s.shift_step, torch.float32, device)


def _initial_state(particles: ParticleSource, box: int, s: _Settings, geo: _Geometry, seed: int) -> AbinitioState:
    """Seeded random positive blobs inside the mask (low-pass at the initial cutoff), scaled to the data by
    least squares at each image's best-correlating grid pose on a first minibatch."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    device = particles.device
    K = s.n_classes
    sigma2 = image_power_spectrum(particles, s.batch_size).float().cpu()
    blobs = torch.randn(K, box, box, box, generator=g, device=g.device).to(device)  # drawn on the generator's device
    width = s.initial_cutoff * box  # Gaussian low-pass of standard deviation `width` (cycles per box)
    lowpass = torch.exp(-(geo.radius3**2) / (2 * width**2)).to(blobs)
    blobs = ifft3c(fft3c(blobs) * lowpass).real
    inner = soft_mask(box, 0.6 * s.mask_radius, 0.2 * s.mask_radius, ndim=3, device=device)
    maps = (blobs / blobs.flatten(1).std(1)[:, None, None, None] + 0.5).clamp_min(0) * inner
    idx = torch.randperm(particles.n, generator=g, device=g.device)[: min(s.batch_size, particles.n)]
    Y, C = particles.load(idx)
    pix = cutoff_mask(box, s.initial_cutoff, device).reshape(-1).nonzero().squeeze(1)
    inv = 1 / sigma2.to(device)[shell_map(box, device)].reshape(-1)[pix]  # [P]
    Cp = torch.ones(1, pix.numel(), device=device) if C is None else C.reshape(C.shape[0], -1)[:, pix]
    Yp = Y.reshape(Y.shape[0], -1)[:, pix] * Cp * inv  # cross[i, r] = Re sum conj(Y) C S / sigma2
    for k in range(K):
        fvol = fourier_volume(maps[k], _OVERSAMPLE)
        S = slice_fourier_volume(fvol, geo.grid, box, s.initial_cutoff).reshape(geo.grid.shape[0], -1)[:, pix]
        cross = Yp.real @ S.real.T + Yp.imag @ S.imag.T  # [n, R]
        quad = (Cp**2 * inv) @ (S.abs() ** 2).T
        best = (cross / quad.clamp_min(1e-30).sqrt()).argmax(1)
        rows = torch.arange(Y.shape[0], device=device)
        scale = float(cross[rows, best].sum() / quad[rows, best].sum().clamp_min(1e-30))
        maps[k] = maps[k] * abs(scale)
    return AbinitioState(
        maps=maps, velocity=torch.zeros_like(maps), sigma2=sigma2,
        class_fractions=torch.full((K,), 1.0 / K, device="cpu"),
        iteration=0, generator_state=g.get_state(),
    )


def _e_step(fvols: list[torch.Tensor], Y, C, base, n_psi: int, shifts, sigma2, cutoff: float, fractions) -> torch.Tensor:
    """Log-likelihoods plus log class fractions [n, K, R, T] over the grid `inplane_rotations(base, n_psi)`
    (in-plane angles by polar FFT, `likelihood.inplane`)."""
    n = Y.shape[0]
    ll = torch.stack(
        [score_poses_inplane(f, Y, C, base, n_psi, shifts, sigma2, cutoff).reshape(n, -1, shifts.shape[-2]) for f in fvols], 1
    )
    return ll + fractions.clamp_min(1e-30).log().to(ll)[None, :, None, None]


def _gradient_and_noise(
    maps: torch.Tensor, Y, C, grid, shifts, sigma2, cutoff: float, keep, cls, rot
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients [K, N, N, N] of sum_kept w |T_{+t} Y - C S|^2 / (2 sigma2) (within the cutoff) and the
    per-shell expected residual power sums and counts of the minibatch."""
    K, box = maps.shape[0], maps.shape[-1]
    device = maps.device
    inside = cutoff_mask(box, cutoff, device)
    inv = inside / (2 * sigma2.to(device)[shell_map(box, device)])
    grads = torch.zeros_like(maps)
    sums = torch.zeros(n_shells(box), device=device)
    counts = torch.zeros_like(sums)
    for k in range(K):
        sel = (cls == k).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        vol = maps[k].detach().requires_grad_(True)
        fvol = fourier_volume(vol, _OVERSAMPLE)
        leaf = fvol.detach().requires_grad_(True)
        for part in sel.split(_POSE_CHUNK):
            i, w = keep.image[part], keep.weight[part].to(maps.dtype)
            S = slice_fourier_volume(leaf, grid[rot[part]], box, cutoff)
            Yt = Y[i] * phase_ramp(shifts[keep.shift_index[part]], box)
            model = S if C is None else C[i] * S
            resid = Yt - model
            loss = (w[:, None, None] * resid.abs() ** 2 * inv).sum()
            loss.backward()
            s_, c_ = shell_power_sums(resid.detach(), w)
            sums, counts = sums + s_, counts + c_
        fvol.backward(leaf.grad)
        grads[k] = vol.grad
    return grads, sums, counts


def _precondition(grads: torch.Tensor, hessian: torch.Tensor, geo: _Geometry, cutoff: float) -> torch.Tensor:
    """Newton directions [K, N, N, N]: grads divided per Fourier shell by the Hessian [K, N // 2 + 1], zero beyond the cutoff."""
    inside = (geo.radius3 <= cutoff * geo.box + 1e-9).to(grads.dtype)
    filt = inside / hessian[:, geo.shell3]  # [K, N, N, N]
    return ifft3c(fft3c(grads) * filt).real


def _iteration(particles: ParticleSource, st: AbinitioState, s: _Settings, geo: _Geometry) -> AbinitioState:
    """One minibatch step (module docstring)."""
    device, box, K = particles.device, geo.box, s.n_classes
    g = torch.Generator(device="cpu")
    g.set_state(st.generator_state)
    it, cutoff, sim = st.iteration, s.cutoff(st.iteration), s.similarity(st.iteration)
    idx = torch.randperm(particles.n, generator=g, device=g.device)[: min(s.batch_size, particles.n)]
    turn = random_rotations(1, g, torch.float32)[0].to(device)
    base = geo.base @ turn  # R_r Q: the grid turned by a random rotation (still psi x base rotations)
    grid = inplane_rotations(base, geo.n_psi)
    Y, C = particles.load(idx)
    n = Y.shape[0]
    sigma2 = st.sigma2.to(device)
    maps = st.maps.to(device)
    with torch.no_grad():
        fvols = [fourier_volume(maps[k], _OVERSAMPLE) for k in range(K)]
        ll = _e_step(fvols, Y, C, base, geo.n_psi, geo.shifts, sigma2, cutoff, st.class_fractions)
        del fvols
        R, T = ll.shape[2], ll.shape[3]
        per_class = torch.logsumexp(ll.flatten(2), -1)  # [n, K]
        class_post = torch.softmax(per_class, -1)
        q = (1 - sim) * class_post + sim / K
        weights = q[..., None, None] * torch.softmax(ll.flatten(2), -1).reshape(ll.shape)
        keep = significant_poses(weights.reshape(n, K * R, T), max_poses=s.max_poses)
        mean_ll = float((torch.logsumexp(per_class, -1) - math.log(R * T)).mean())
        del ll, weights
    cls, rot = keep.rotation_index // R, keep.rotation_index % R
    grads, sums, counts = _gradient_and_noise(maps, Y, C, grid, geo.shifts, sigma2, cutoff, keep, cls, rot)
    with torch.no_grad():
        ctf2 = _shell_ctf2(C, n, box, device)  # [n, S]
        hessian = box**3 * geo.density * (q.T @ ctf2 + ctf2.mean(0)) / sigma2  # [K, S]
        step = _precondition(grads, hessian, geo, cutoff)
        velocity = s.momentum * st.velocity.to(device) - s.learning_rate * step
        new_maps = (maps + velocity).clamp_min(0) * geo.mask
        change = ((new_maps - maps).flatten(1).norm(dim=1) / maps.flatten(1).norm(dim=1).clamp_min(1e-30)).tolist()
        sigma2_new = (1 - s.noise_rate) * sigma2 + s.noise_rate * noise_spectrum(sums, counts)
        fractions = (1 - s.noise_rate) * st.class_fractions + s.noise_rate * class_post.mean(0).cpu()
        fractions = fractions.clamp_min(s.min_class_fraction / K)
        fractions = fractions / fractions.sum()
    record = AbinitioIteration(
        it, cutoff, mean_ll, fractions.tolist(), sim, keep.image.numel() / n, change,
    )
    return AbinitioState(
        maps=new_maps, velocity=velocity, sigma2=sigma2_new.cpu(), class_fractions=fractions, iteration=it + 1,
        generator_state=g.get_state(), history=[*st.history, record],
    )


def _assign(particles: ParticleSource, st: AbinitioState, s: _Settings, geo: _Geometry):
    """E-step over all particles at the final cutoff on the unturned grid: best poses and class posteriors."""
    n, K = particles.n, s.n_classes
    out_R, out_t = torch.zeros(n, 3, 3, device="cpu"), torch.zeros(n, 2, device="cpu")  # held on the CPU
    out_cls = torch.zeros(n, K, device="cpu")
    sigma2 = st.sigma2.to(particles.device)
    with torch.no_grad():
        fvols = [fourier_volume(st.maps[k], _OVERSAMPLE) for k in range(K)]
        for b in torch.arange(n, device="cpu").split(s.batch_size):
            Y, C = particles.load(b)
            ll = _e_step(fvols, Y, C, geo.base, geo.n_psi, geo.shifts, sigma2, s.final_cutoff, st.class_fractions)
            m = ll.shape[0]
            cls_post = torch.softmax(torch.logsumexp(ll.flatten(2), -1), -1)
            best_k = cls_post.argmax(-1)
            est = best_poses(ll[torch.arange(m, device=ll.device), best_k], geo.grid, geo.shifts)
            out_R[b], out_t[b], out_cls[b] = est.rotations.cpu(), est.shifts.cpu(), cls_post.cpu().float()
    return out_R, out_t, out_cls


def abinitio(
    particles: ParticleSource,
    n_classes: int = 1,
    n_iter: int = 200,
    batch_size: int = 200,
    healpix_order: int = 1,
    max_shift: float = 3.0,
    shift_step: float = 1.0,
    initial_cutoff: float = 0.06,
    final_cutoff: float = 0.2,
    march_fraction: float = 0.7,
    mask_radius: float | None = None,
    learning_rate: float = 0.4,
    momentum: float = 0.5,
    class_similarity: float = 0.5,
    min_class_fraction: float = 0.1,
    noise_rate: float = 0.1,
    max_poses: int = 16,
    seed: int = 0,
    on_iteration: Callable[[AbinitioState], None] | None = None,
    state: AbinitioState | None = None,
) -> AbinitioResult:
    """Ab-initio reconstruction of `n_classes` maps from particles without poses (module docstring).

    n_iter minibatch steps of `batch_size` particles; healpix_order: global grid (step 60 / 2**order degrees);
    max_shift / shift_step: square origin grid (pixels); initial_cutoff -> final_cutoff: scoring cutoff
    (cycles/pixel) marched over the first `march_fraction` of the iterations; mask_radius: soft spherical
    mask (pixels, default 0.85 N / 2); learning_rate: fraction of the preconditioned (Newton) step;
    momentum: SGD momentum; class_similarity: initial mixing of class posteriors with uniform (annealed
    to 0 at half the run); min_class_fraction: floor of the class fractions (x 1 / K); noise_rate: moving-
    average weight of the noise spectrum and class-fraction updates; max_poses: kept poses per particle.
    `seed` fixes the initial maps and the minibatch draws. `on_iteration(state)` is called after every
    iteration; passing such a state back as `state` resumes the run, giving the same result as an
    uninterrupted one with the same arguments. Runs on `particles.device`.
    """
    if not isinstance(particles, ParticleSource):
        raise InvalidValueError(f"ab-initio needs a ParticleSource, got {type(particles).__name__}")
    Y0, _ = particles.load(torch.zeros(1, dtype=torch.long, device="cpu"))
    box = Y0.shape[-1]
    s = _Settings(
        n_classes, n_iter, batch_size, healpix_order, float(max_shift), float(shift_step), float(initial_cutoff),
        float(final_cutoff), float(march_fraction), float(mask_radius if mask_radius is not None else 0.85 * box / 2),
        float(learning_rate), float(momentum), float(class_similarity), float(min_class_fraction), float(noise_rate), max_poses,
    )
    _validate(s, box, particles.n)
    geo = _Geometry(box, s, particles.device)
    if state is None:
        st = _initial_state(particles, box, s, geo, seed)
    else:
        if state.maps.shape != (n_classes, box, box, box) or state.sigma2.shape != (n_shells(box),):
            raise InvalidValueError(
                f"ab-initio: the state to resume has maps {tuple(state.maps.shape)}, expected {(n_classes, box, box, box)}"
            )
        st = replace(state, maps=state.maps.to(particles.device), velocity=state.velocity.to(particles.device))
    while st.iteration < n_iter:
        st = _iteration(particles, st, s, geo)
        if on_iteration is not None:
            on_iteration(st)
    R, t, cls_post = _assign(particles, st, s, geo)
    best = cls_post.argmax(-1)
    counts = torch.bincount(best, minlength=n_classes)
    return AbinitioResult(
        maps=st.maps, class_fractions=st.class_fractions, rotations=R, shifts_px=t, class_posterior=cls_post,
        best_class=best, empty_classes=[k for k in range(n_classes) if int(counts[k]) == 0], sigma2=st.sigma2,
        history=st.history, state=st,
    )


__all__ = ["AbinitioIteration", "AbinitioResult", "AbinitioState", "abinitio"]
