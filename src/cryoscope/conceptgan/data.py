"""Image stacks labelled with two binary concepts: reading (.mrc/.mrcs or RELION STAR), resizing, normalisation.

The training images of each observed sub-domain are held in memory as float32 (5,000 images of 64² take 80 MB).
One normalisation (offset and scale over the pixels of all observed sub-domains together) is shared by every
sub-domain, so that differences of mean or contrast between them (e.g. thicker ice) remain part of the concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cryoscope.errors import InputFormatError, InvalidValueError
from cryoscope.io.files import existing_file
from cryoscope.physics.filters import fourier_resize

STACK_SUFFIXES = (".mrcs", ".mrc", ".st")


def read_images(path: str | Path, pixel_size: float | None = None) -> tuple[torch.Tensor, float]:
    """(images [n, N, N] float32, pixel size Å) of every particle of a STAR file or every image of an MRC stack.
    `pixel_size` overrides the file's."""
    from cryoscope.io.mrc import ParticleStack
    from cryoscope.io.star import read_star

    path = existing_file(path)
    if path.suffix == ".star":
        meta = read_star(path, pixel_size=pixel_size)
        if pixel_size is not None:
            meta = meta.with_overrides(pixel_size=pixel_size)
        stack = meta.images()
    elif path.suffix in STACK_SUFFIXES:
        stack = ParticleStack.open(path, pixel_size)
    else:
        raise InputFormatError(f"expected an image stack ({', '.join(STACK_SUFFIXES)}) or a STAR file", path)
    if len(stack) == 0:
        raise InputFormatError("no images", path)
    return stack[:], stack.pixel_size


def resize(images: torch.Tensor, pixel_size: float, box: int) -> tuple[torch.Tensor, float]:
    """Images Fourier-cropped or padded to `box` px (`physics.filters.fourier_resize`) and their new pixel size (Å)."""
    n = images.shape[-1]
    return (images, pixel_size) if n == box else (fourier_resize(images, box).float(), pixel_size * n / box)


def read_domains(paths: dict[str, str | Path], box: int,
                 pixel_size: float | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """The images of each sub-domain {domain: path}, all resized to `box` px, and their common pixel size (Å);
    InvalidValueError when the inputs' pixel sizes differ."""
    images, sizes = {}, {}
    for d, p in paths.items():
        raw, px = read_images(p, pixel_size)
        if raw.shape[-1] < box:
            raise InvalidValueError(f"--box {box} is larger than the images' {raw.shape[-1]} px", p)
        images[d], sizes[d] = resize(raw, px, box)
    first = next(iter(sizes.values()))
    for d, px in sizes.items():
        if abs(px - first) > 1e-3 * first:
            raise InvalidValueError(f"pixel size {px:g} Å after resizing differs from another sub-domain's {first:g} Å", paths[d])
    return images, first


@dataclass
class Normalisation:
    """x -> (x - offset) / scale, in the input images' units."""

    offset: float
    scale: float

    @classmethod
    def fit(cls, images: list[torch.Tensor]) -> Normalisation:
        """Mean and standard deviation over all pixels of all `images` (each [n, N, N]), in float64."""
        flat = torch.cat([x.flatten().double() for x in images])
        scale = float(flat.std())
        if not scale > 0:
            raise InvalidValueError("the images are constant: nothing to learn")
        return cls(float(flat.mean()), scale)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.offset) / self.scale

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale + self.offset
