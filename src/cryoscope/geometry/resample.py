"""Real-space resampling of volumes: rigid rotation + shift (trilinear) and hand flip.

Coordinates are in voxels, vectors (x, y, z), arrays [z, y, x], centre at index N // 2 of each axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryoscope.errors import InvalidValueError


def _homogeneous_grid(shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """[D*H*W, 4] rows (u_x, u_y, u_z, 1) of normalised output coordinates (align_corners=True)."""
    z, y, x = (torch.linspace(-1, 1, n, device=device, dtype=dtype) if n > 1 else torch.zeros(1, device=device, dtype=dtype) for n in shape)
    gz, gy, gx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([gx, gy, gz, torch.ones_like(gx)], -1).reshape(-1, 4)


def rotate_volume(vol: torch.Tensor, R: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Resample V'(r) = V(R^T (r - s)): rotate about the box centre by R, then translate by s.

    vol: [D, H, W] or [B, D, H, W]; R: [3, 3] or [B, 3, 3]; shift s: [3] or [B, 3], voxels (x, y, z).
    Trilinear interpolation, zero outside the box; differentiable in vol, R and shift.
    Returns [D, H, W] for a single volume and rotation, else [B, D, H, W].
    """
    if vol.dim() not in (3, 4) or R.shape[-2:] != (3, 3) or (shift is not None and shift.shape[-1] != 3):
        raise InvalidValueError(
            f"rotate_volume: expected vol [B,]D,H,W, R [B,]3,3 and shift [B,]3, got {tuple(vol.shape)}, {tuple(R.shape)}"
        )
    single = vol.dim() == 3 and R.dim() == 2 and (shift is None or shift.dim() == 1)
    vols = vol if vol.dim() == 4 else vol[None]
    Rt = (R if R.dim() == 3 else R[None]).to(vol.dtype).transpose(-1, -2)
    s = torch.zeros(3, dtype=vol.dtype, device=vol.device) if shift is None else shift.to(vol.dtype)
    s = s if s.dim() == 2 else s[None]
    batch = max(vols.shape[0], Rt.shape[0], s.shape[0])
    shape = tuple(vols.shape[-3:])
    # align_corners=True: normalised u = idx / a - 1 with a = (n - 1) / 2 per axis (x, y, z); centre c = n // 2.
    # Source index = R^T (idx - c - s) + c, so u_in = A^-1 R^T A u_out + A^-1 (R^T (a - c - s) + c) - 1.
    n = torch.tensor(shape[::-1], dtype=vol.dtype, device=vol.device)
    a, c = (n - 1) / 2, torch.div(n, 2, rounding_mode="floor")
    lin = Rt * a[None, :] / a[:, None]
    trans = ((Rt @ (a - c - s)[..., None])[..., 0] + c) / a - 1
    theta = torch.cat([lin.expand(batch, 3, 3), trans.expand(batch, 3)[..., None]], -1)  # [B, 3, 4]
    grid = (_homogeneous_grid(shape, vol.device, vol.dtype) @ theta.transpose(-1, -2)).reshape(batch, *shape, 3)
    out = F.grid_sample(vols.expand(batch, *shape)[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]
    return out[0] if single else out


def flip_hand(vol: torch.Tensor) -> torch.Tensor:
    """Mirror z -> -z about the centre N // 2 (periodic in the box, so F(kx, ky, kz) -> F(kx, ky, -kz)).

    vol: [..., D, H, W]. Inverts the handedness of the map; flip_hand(flip_hand(v)) == v.
    """
    d = vol.shape[-3]
    out = vol.flip(-3)
    return out.roll(1, -3) if d % 2 == 0 else out
