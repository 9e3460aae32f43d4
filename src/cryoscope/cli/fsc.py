"""`cryoscope fsc MAP1 MAP2`: Fourier shell correlation and resolution at FSC 0.143 and 0.5."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from cryoscope.errors import InvalidValueError
from cryoscope.io.mrc import Map, read_map
from cryoscope.validation.fsc import fsc, resolution_at, shell_frequencies


def read_map_pair(path1: Path, path2: Path, voxel_size: float | None) -> tuple[Map, Map]:
    """Two cubic maps of the same box and voxel size (Å; `voxel_size` overrides both headers)."""
    m1, m2 = read_map(path1, voxel_size), read_map(path2, voxel_size)
    for path, m in ((path1, m1), (path2, m2)):
        if len(set(m.data.shape)) != 1:
            raise InvalidValueError(f"map is not cubic: {tuple(m.data.shape)} voxels", path)
    if m1.data.shape != m2.data.shape:
        raise InvalidValueError(f"box {m2.data.shape[-1]} differs from {m1.data.shape[-1]} of {path1}", path2)
    if abs(m1.voxel_size - m2.voxel_size) > 1e-3 * m1.voxel_size:
        raise InvalidValueError(
            f"voxel size {m2.voxel_size:g} Å differs from {m1.voxel_size:g} Å of {path1} (resample, or force with --voxel-size)",
            path2,
        )
    return m1, m2


def read_mask(path: Path, shape: torch.Size, voxel_size: float) -> torch.Tensor:
    """A soft mask with values in [0, 1] of the given shape."""
    mask = read_map(path, voxel_size).data
    if mask.shape != shape:
        raise InvalidValueError(f"mask shape {tuple(mask.shape)} differs from the maps' {tuple(shape)}", path)
    if float(mask.min()) < -1e-3 or float(mask.max()) > 1 + 1e-3 or float(mask.max()) <= 0:
        raise InvalidValueError(f"mask values must lie in [0, 1] and not all be 0 (range {float(mask.min()):g}..{float(mask.max()):g})", path)
    return mask.clamp(0, 1)


def resolution_lines(curve: torch.Tensor, box: int, voxel_size: float) -> tuple[list[str], dict[str, float]]:
    """Printed lines and metrics for the FSC 0.143 and 0.5 crossings."""
    lines, metrics = [], {}
    for threshold in (0.143, 0.5):
        f, angstrom = resolution_at(curve, threshold, box, voxel_size)
        crossed = bool((curve[1:] < threshold).any())
        note = "" if crossed else "  (no crossing: Nyquist)"
        lines.append(f"FSC {threshold:g}: {angstrom:.3f} Å  ({f:.4f} cycles/pixel){note}")
        metrics[f"resolution_{threshold:g}_angstrom"] = angstrom
        metrics[f"resolution_{threshold:g}_cycles_per_pixel"] = f
    return lines, metrics


def register(app: typer.Typer) -> None:
    @app.command("fsc")
    def fsc_command(
        map1: Path = typer.Argument(..., help="First map (MRC), e.g. half map 1"),
        map2: Path = typer.Argument(..., help="Second map (MRC) of the same box and voxel size"),
        mask: Path = typer.Option(None, "--mask", help="Soft mask (MRC, values in [0, 1]) applied to both maps"),
        voxel_size: float = typer.Option(None, "--voxel-size", help="Voxel size (Å), overrides the headers"),
        out: Path = typer.Option(None, "-o", "--out", help="Plot of the FSC curve (PNG)"),
        json_out: Path = typer.Option(None, "--json", help="Write the curve and resolutions as JSON"),
    ) -> None:
        """Fourier shell correlation of two maps; prints the resolution at FSC 0.143 and 0.5."""
        m1, m2 = read_map_pair(map1, map2, voxel_size)
        vs, box = m1.voxel_size, m1.data.shape[-1]
        weights = None if mask is None else read_mask(mask, m1.data.shape, vs)
        curve = fsc(m1.data.double(), m2.data.double(), None if weights is None else weights.double())
        lines, metrics = resolution_lines(curve, box, vs)
        for line in lines:
            typer.echo(line)
        if out is not None:
            from cryoscope.report.plots import plot_fsc

            label = f"{map1.name} vs {map2.name}" + (" (masked)" if mask is not None else "")
            plot_fsc(out, {label: curve}, box, vs)
            typer.echo(f"wrote {out}")
        if json_out is not None:
            from cryoscope.io.runinfo import write_metrics_json

            write_metrics_json(
                json_out,
                {
                    "map1": map1, "map2": map2, "mask": mask, "voxel_size": vs, "box": box, **metrics,
                    "frequency_cycles_per_pixel": shell_frequencies(box), "fsc": curve,
                },
            )
            typer.echo(f"wrote {json_out}")
