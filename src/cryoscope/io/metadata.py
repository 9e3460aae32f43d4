"""`ParticleMetadata`: one per-particle table for RELION STAR, cryoSPARC .cs and cryoDRGN .pkl.

Conventions (docs/conventions.md, docs/io.md): rotations are RELION Euler matrices A(rot, tilt, psi),
shifts are RELION origins in Å (`rlnOriginXAngst`), CTF values in Å / degrees / kV / mm / Å².
Image names are (path, 0-based index); relative paths resolve against `root` (the metadata file's folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from cryoscope.errors import InvalidValueError, MissingDataError
from cryoscope.geometry.rotations import euler_to_matrix, matrix_to_euler

CTF_FIELDS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "voltage",
    "cs",
    "amplitude_contrast",
    "phase_shift",
    "bfactor",
    "scale",
)
CTF_REQUIRED = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast")
_PER_PARTICLE = ("rotations", "euler", "shifts_A", *CTF_FIELDS, "optics_group", "pixel_size", "class_number", "random_subset", "latent")


@dataclass
class ParticleMetadata:
    """Per-particle poses, CTF and image references; every tensor has the particle count as its first axis.

    rotations [n,3,3] float64 (RELION matrices), euler [n,3] (rot, tilt, psi) degrees, shifts_A [n,2]
    (RELION origin, Å), CTF: defocus_u/defocus_v Å, defocus_angle °, voltage kV, cs mm, amplitude_contrast,
    phase_shift °, bfactor Å², scale; optics_group [n] int64 (1-based), pixel_size [n] Å, box (pixels),
    class_number [n] int64 (1-based), random_subset [n] int64 (gold-standard half-set, 1 or 2), latent [n,d], image_names [(path, 0-based index)], root (folder that
    relative image paths are resolved against), source (file it was read from, for messages).
    """

    n: int
    rotations: torch.Tensor | None = None
    euler: torch.Tensor | None = None
    shifts_A: torch.Tensor | None = None
    defocus_u: torch.Tensor | None = None
    defocus_v: torch.Tensor | None = None
    defocus_angle: torch.Tensor | None = None
    voltage: torch.Tensor | None = None
    cs: torch.Tensor | None = None
    amplitude_contrast: torch.Tensor | None = None
    phase_shift: torch.Tensor | None = None
    bfactor: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    optics_group: torch.Tensor | None = None
    pixel_size: torch.Tensor | None = None
    box: int | None = None
    class_number: torch.Tensor | None = None
    random_subset: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    image_names: list[tuple[str, int]] | None = None
    root: Path = field(default_factory=Path.cwd)
    source: str | None = None

    def __post_init__(self) -> None:
        if self.euler is not None and self.rotations is None:
            self.euler = self.euler.to(torch.float64)
            self.rotations = euler_to_matrix(self.euler)
        elif self.rotations is not None:
            self.rotations = self.rotations.to(torch.float64)
            if self.euler is None:
                self.euler = matrix_to_euler(self.rotations)
        if self.optics_group is None:
            self.optics_group = torch.ones(self.n, dtype=torch.int64)
        for name in _PER_PARTICLE:
            value = getattr(self, name)
            if value is None:
                continue
            if value.shape[0] != self.n:
                raise InvalidValueError(f"{name} has {value.shape[0]} rows, expected {self.n} particles", self.source)
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value.reshape(self.n, -1))).any(-1).nonzero()[0, 0])
                raise InvalidValueError(f"{name} has a NaN/Inf value (particle {bad + 1})", self.source)
        if self.image_names is not None and len(self.image_names) != self.n:
            raise InvalidValueError(f"{len(self.image_names)} image names for {self.n} particles", self.source)
        if self.random_subset is not None and not bool(((self.random_subset == 1) | (self.random_subset == 2)).all()):
            bad = int(((self.random_subset != 1) & (self.random_subset != 2)).nonzero()[0, 0])
            raise InvalidValueError(f"half-set (rlnRandomSubset) must be 1 or 2, got {int(self.random_subset[bad])} (particle {bad + 1})", self.source)
        if self.pixel_size is not None and bool((self.pixel_size <= 0).any()):
            raise InvalidValueError("pixel size must be positive", self.source)

    @property
    def has_poses(self) -> bool:
        return self.rotations is not None

    @property
    def has_ctf(self) -> bool:
        return all(getattr(self, f) is not None for f in CTF_REQUIRED)

    def require_pixel_size(self) -> torch.Tensor:
        """Per-particle pixel size (Å); MissingDataError if unknown."""
        if self.pixel_size is None:
            raise MissingDataError("no pixel size in the file: give --pixel-size", self.source)
        return self.pixel_size

    def require_box(self) -> int:
        if self.box is None:
            raise MissingDataError("no image box size in the file: give --box", self.source)
        return self.box

    def with_overrides(self, pixel_size: float | None = None, box: int | None = None) -> ParticleMetadata:
        """Copy with a user-given pixel size (Å, all particles) and/or box size (pixels)."""
        out = replace(self)
        if pixel_size is not None:
            if pixel_size <= 0:
                raise InvalidValueError(f"pixel size must be positive, got {pixel_size}")
            out.pixel_size = torch.full((self.n,), float(pixel_size), dtype=torch.float64)
        if box is not None:
            if box <= 0:
                raise InvalidValueError(f"box must be positive, got {box}")
            out.box = int(box)
        return out

    def resolved_images(self) -> list[tuple[Path, int]]:
        """(absolute path, 0-based index) per particle; MissingDataError if the file names no images."""
        if self.image_names is None:
            raise MissingDataError("no image names (rlnImageName / blob/path) in the file", self.source)
        return [(Path(os.path.normpath(Path(self.root) / name)), i) for name, i in self.image_names]

    def image_names_relative_to(self, out_dir: Path) -> list[tuple[str, int]]:
        """Image names with relative paths re-expressed relative to `out_dir` (where a new file is written)."""
        return [
            (name if Path(name).is_absolute() else os.path.relpath(p, Path(out_dir).resolve()), i)
            for (name, i), (p, _) in zip(self.image_names, self.resolved_images())
        ]

    def images(self, check_pixel_size: bool = True):
        """The particle images as a lazy `ParticleStack` (pixel sizes checked against the stack headers)."""
        from cryoscope.io.mrc import ParticleStack

        px = None if self.pixel_size is None else float(self.pixel_size[0])
        stack = ParticleStack.from_pairs(self.resolved_images(), pixel_size=px, source=self.source)
        if check_pixel_size and px is not None:
            stack.check_header_pixel_size(px)
        return stack

    def subset(self, index: torch.Tensor | slice) -> ParticleMetadata:
        """Rows `index` (bool mask, integer indices or slice) as a new table."""
        idx = torch.arange(self.n, device="cpu")[index]
        kwargs = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _PER_PARTICLE and v is not None:
                kwargs[f.name] = v[idx]
            else:
                kwargs[f.name] = v
        kwargs["n"] = int(idx.numel())
        if self.image_names is not None:
            kwargs["image_names"] = [self.image_names[i] for i in idx.tolist()]
        return ParticleMetadata(**kwargs)
