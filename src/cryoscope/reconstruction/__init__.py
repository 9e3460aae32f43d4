"""Known-pose reconstruction: direct Fourier inversion, least squares by CG, half-maps."""

from cryoscope.reconstruction.direct import (
    DirectReconstructor,
    reconstruct_direct,
    reg_from_fsc,
)
from cryoscope.reconstruction.halfmaps import fsc_weighted_average, masked_half_maps, random_half_sets, shell_filter
from cryoscope.reconstruction.iterative import reconstruct_cg

__all__ = [
    "DirectReconstructor",
    "fsc_weighted_average",
    "masked_half_maps",
    "random_half_sets",
    "reconstruct_cg",
    "reconstruct_direct",
    "reg_from_fsc",
    "shell_filter",
]
