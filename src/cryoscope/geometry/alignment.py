"""Gauge alignment of estimated poses to reference poses: global rotation, hand, symmetry.

Conventions (RELION poses, image = projection along z of V(A^T r); see docs/geometry.md):
  * Rotating a map by G, V'(r) = V(G^T r), is compensated exactly by the poses A' = A G^T.
  * Symmetry S of the map, V(S r) = V(r), makes A and A S equivalent (symmetry acts on the right).
  * The mirrored map V'(r) = V(F r), F = diag(1, 1, -1), with poses A' = F A F gives identical images.
`align_poses` finds G (and the hand) such that  R_true_i S_i ~= E_i G,  with E_i = R_est_i, or F R_est_i F
when `flip` is True, and S_i the best symmetry element per particle. The estimated map is then brought
onto the reference frame by V_aligned(r) = V_est(M r), M = `map_transform(G, flip)` = F^flip G.
"""

from __future__ import annotations

import torch

from cryoscope.errors import InvalidValueError
from cryoscope.geometry.rotations import geodesic_distance
from cryoscope.geometry.symmetry import symmetry_group

_FLIP = (1.0, 1.0, -1.0)


def hand_flip_poses(R: torch.Tensor) -> torch.Tensor:
    """Poses [..., 3, 3] of the z-mirrored map V(x, y, -z) that reproduce the same images: F R F, F = diag(1, 1, -1).

    In Euler angles (rot, tilt, psi) -> (rot, -tilt, psi), i.e. (rot + 180, tilt, psi + 180).
    """
    f = torch.tensor(_FLIP, dtype=R.dtype, device=R.device)
    return R * f[:, None] * f[None, :]


def rotate_poses(R: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Poses [..., 3, 3] of the map rotated by G, V'(r) = V(G^T r), that reproduce the same images: R G^T."""
    R, G = torch.broadcast_tensors(R, G.to(R.dtype))  # batched matmul: a 2-D operand would fall back to a slow mm
    return R @ G.transpose(-1, -2)


def map_transform(G: torch.Tensor, flip: bool) -> torch.Tensor:
    """Matrix M (det +-1) with V_aligned(r) = V_est(M r) superposing the estimated map on the reference frame."""
    if not flip:
        return G
    f = torch.tensor(_FLIP, dtype=G.dtype, device=G.device)
    return f[:, None] * G


def apply_alignment(R_est: torch.Tensor, G: torch.Tensor, flip: bool) -> torch.Tensor:
    """Estimated poses expressed in the reference frame: E G with E = R_est or F R_est F (flip)."""
    E = hand_flip_poses(R_est) if flip else R_est
    return E @ G.to(E.dtype).expand_as(E)


def poses_for_moved_map(
    rotations: torch.Tensor, origins_px: torch.Tensor, R: torch.Tensor, shift: torch.Tensor, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poses of a map moved as `validation.align.apply_map_alignment` moves it (hand flip first, then
    V'(r) = V_src(R^T (r - s))) that reproduce the same images: rotations [n, 3, 3] -> A' = A_src R^T with A_src = A,
    or F A F (flip); origins [n, 2] (x, y, RELION sign) -> o' = o + (A' s)_xy, with the shift s [3] (x, y, z) in the
    origins' unit (pixels of the same size, or Å). Returns (rotations, origins) in the input dtypes."""
    if rotations.shape[-2:] != (3, 3) or origins_px.shape != (*rotations.shape[:-2], 2) or R.shape != (3, 3) or shift.shape != (3,):
        raise InvalidValueError(f"poses_for_moved_map: expected rotations [n, 3, 3], origins [n, 2], R [3, 3] and shift [3], "
                                f"got {tuple(rotations.shape)}, {tuple(origins_px.shape)}, {tuple(R.shape)}, {tuple(shift.shape)}")
    A = rotate_poses(hand_flip_poses(rotations) if flip else rotations, R)
    d = (A @ shift.to(A)[:, None])[..., 0]
    return A, origins_px + d[..., :2].to(origins_px.dtype)


def _check_pairs(R_est: torch.Tensor, R_true: torch.Tensor) -> None:
    if R_est.ndim != 3 or R_est.shape[-2:] != (3, 3) or R_est.shape != R_true.shape:
        raise InvalidValueError(f"pose sets must both have shape [n, 3, 3], got {tuple(R_est.shape)} and {tuple(R_true.shape)}")
    if R_est.shape[0] == 0:
        raise InvalidValueError("pose sets are empty")
    if not (torch.isfinite(R_est).all() and torch.isfinite(R_true).all()):
        raise InvalidValueError("pose matrices contain NaN or Inf")


def _best_symmetry(P: torch.Tensor, T: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Index [n] of the S maximising trace(P^T T S), i.e. minimising the angle between P and T S."""
    M = P.transpose(-1, -2) @ T  # trace(M S) = <M, S^T>
    return (M.reshape(-1, 9) @ S.transpose(-1, -2).reshape(-1, 9).T).argmax(-1)


def _errors(E: torch.Tensor, T: torch.Tensor, S: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-particle angle (degrees) between E G and the nearest T S, and the chosen S index."""
    P = E @ G.expand_as(E)
    idx = _best_symmetry(P, T, S)
    return geodesic_distance(P, T @ S.index_select(0, idx)), idx


def _procrustes(M: torch.Tensor) -> torch.Tensor:
    """Rotation G maximising trace(G^T M)."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.ones(3, dtype=M.dtype, device=M.device)
    d[2] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ torch.diag(d) @ Vh


def _align_one_hand(E: torch.Tensor, T: torch.Tensor, S: torch.Tensor, n_seeds: int, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust G for R_true S_i ~= E_i G: best of single-particle seeds, then Cauchy-reweighted Procrustes."""
    n = E.shape[0]
    seeds = torch.linspace(0, n - 1, min(n, n_seeds), device=E.device).round().long()
    score_idx = torch.linspace(0, n - 1, min(n, 2000), device=E.device).round().long()
    candidates = E.index_select(0, seeds).transpose(-1, -2) @ T.index_select(0, seeds)  # G_j exact for particle j
    E_score, T_score = E.index_select(0, score_idx), T.index_select(0, score_idx)
    medians = torch.stack([_errors(E_score, T_score, S, Gc)[0].median() for Gc in candidates])
    G = candidates[medians.argmin()]
    for _ in range(n_iter):
        err, idx = _errors(E, T, S, G)
        scale = 2 * err.median().clamp_min(1e-9)
        w = 1 / (1 + (err / scale) ** 2)
        M = (w[:, None, None] * (E.transpose(-1, -2) @ T @ S.index_select(0, idx))).sum(0)
        G_new = _procrustes(M)
        change = geodesic_distance(G, G_new)
        G = G_new
        if change < 1e-10:
            break
    return G, _errors(E, T, S, G)[0]


def align_poses(
    R_est: torch.Tensor,
    R_true: torch.Tensor,
    symmetry: str = "C1",
    allow_flip: bool = True,
    n_seeds: int = 32,
    n_iter: int = 30,
) -> tuple[torch.Tensor, bool, torch.Tensor]:
    """Global gauge between two pose sets [n, 3, 3]: returns (G [3, 3], flip, errors_deg [n]).

    G and flip minimise the robust (Cauchy-reweighted) chordal cost sum_i w_i |E_i G - R_true_i S_i|^2 with
    E_i = R_est_i (or F R_est_i F if flip), S_i the per-particle best element of the symmetry group.
    Each round is a closed-form SVD (Procrustes) solution; it starts from the best single-particle
    estimate among `n_seeds` particles, so outliers and symmetry mix-ups do not bias the start.
    The hand is chosen by the smaller median error. errors_deg are the geodesic angles after alignment,
    modulo symmetry. G is unique up to G -> G S (S in the group). Computed in float64.
    """
    _check_pairs(R_est, R_true)
    E0, T = R_est.to(torch.float64), R_true.to(torch.float64)
    S = symmetry_group(symmetry, dtype=torch.float64, device=E0.device)
    best = None
    for flip in (False, True) if allow_flip else (False,):
        E = hand_flip_poses(E0) if flip else E0
        G, err = _align_one_hand(E, T, S, n_seeds, n_iter)
        if best is None or err.median() < best[2].median():
            best = (G, flip, err)
    G, flip, err = best
    return G.to(R_est.dtype), flip, err.to(R_est.dtype)


def pose_error(
    R_est: torch.Tensor,
    R_true: torch.Tensor,
    symmetry: str = "C1",
    align: bool = True,
    allow_flip: bool = True,
) -> torch.Tensor:
    """Angular pose error in degrees [n], modulo symmetry: min over S of angle(E_i G, R_true_i S).

    With align=False, G = I and no hand flip (the poses are assumed to share the reference frame).
    """
    if align:
        return align_poses(R_est, R_true, symmetry=symmetry, allow_flip=allow_flip)[2]
    _check_pairs(R_est, R_true)
    E, T = R_est.to(torch.float64), R_true.to(torch.float64)
    S = symmetry_group(symmetry, dtype=torch.float64, device=E.device)
    return _errors(E, T, S, torch.eye(3, dtype=torch.float64, device=E.device))[0].to(R_est.dtype)
