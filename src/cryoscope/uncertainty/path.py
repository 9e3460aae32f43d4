"""Stiffness along a path in map space (Rangan et al. §3.5): R(s) = [∂_s F̂]† H(s) [∂_s F̂] with ‖∂_s F̂‖ = 1.

H(s) is the effective Hessian (alignments implicit) of the likelihood of images of F(s) itself; where R(s) is small,
neighbouring maps along the path give nearly the same projections, so a free-energy estimate G(s) is poorly
conditioned there.
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.physics.ctf import CTFParams
from cryoscope.representations.shells import ShellBasis
from cryoscope.uncertainty.hessian import EffectiveHessian
from cryoscope.uncertainty.likelihood import NoiseModel, RingLikelihood
from cryoscope.uncertainty.prepare import simulate_rings
from cryoscope.uncertainty.softmodes import metric_weights


def path_tangents(frames: torch.Tensor) -> torch.Tensor:
    """Central-difference tangents of frames [S, P] (one-sided at the ends), s uniform on [0, 1] -> [S, P]."""
    if frames.shape[0] < 2:
        raise InvalidValueError(f"a path needs at least 2 frames, got {frames.shape[0]}")
    ds = 1.0 / (frames.shape[0] - 1)
    t = torch.empty_like(frames)
    t[1:-1] = (frames[2:] - frames[:-2]) / (2 * ds)
    t[0], t[-1] = (frames[1] - frames[0]) / ds, (frames[-1] - frames[-2]) / ds
    return t


def path_stiffness(
    frames: torch.Tensor, basis: ShellBasis, rotations: torch.Tensor, n_psi: int, ctf: CTFParams | None = None,
    pixel_size: float = 1.0, temperature: float = 1.0, chunk: int = 32,
) -> torch.Tensor:
    """R(s) [S] for frames [S, P] (real shell parameters): the effective Hessian of noiseless images of each frame
    (poses `rotations`, optional CTF) applied to the unit tangent, in NLL per unit squared norm."""
    m = metric_weights(basis)
    out = []
    for x, t in zip(frames, path_tangents(frames)):
        t = t / torch.sqrt((m * t * t).sum())
        data = simulate_rings(basis, x, rotations, n_psi, ctf, pixel_size, chunk)
        lik = RingLikelihood(basis, data, NoiseModel(temperature=temperature), chunk=chunk)
        out.append((t * EffectiveHessian(lik, x).matvec(t)).sum())
    return torch.stack(out)
