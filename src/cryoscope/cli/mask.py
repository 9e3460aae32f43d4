"""`cryoscope mask MAP -o MASK.mrc`: a soft solvent mask from a map (RELION's relion_mask_create)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("mask")
    def mask_command(
        map_path: Path = typer.Argument(..., metavar="MAP", help="Map (MRC) to make the mask from"),
        out: Path = typer.Option(..., "-o", "--out", help="Mask (MRC, values in [0, 1])"),
        lowpass: float = typer.Option(15.0, "--lowpass", help="Blur the map to this resolution first (Å; 0: no blur)"),
        threshold: float = typer.Option(None, "--threshold", help="Density threshold of the blurred map (default: 0.1 of its maximum)"),
        extend: float = typer.Option(3.0, "--extend", help="Grow the thresholded region by this many pixels"),
        soft_edge: float = typer.Option(6.0, "--soft-edge", help="Width of the cosine edge, pixels"),
        voxel_size: float = typer.Option(None, "--voxel-size", help="Voxel size (Å), overrides the header"),
    ) -> None:
        """Threshold the (blurred) map, extend the region, add a cosine edge: the mask for `postprocess`."""
        from cryoscope.errors import InvalidValueError
        from cryoscope.io.mrc import read_map, write_map
        from cryoscope.physics.filters import gaussian_lowpass, threshold_mask

        m = read_map(map_path, voxel_size)
        if m.data.dim() != 3:
            raise InvalidValueError(f"expected a 3-D map, got shape {tuple(m.data.shape)}", map_path)
        vol = m.data.double()
        if lowpass > 0:
            vol = gaussian_lowpass(vol, lowpass, m.voxel_size)
        level = 0.1 * float(vol.max()) if threshold is None else threshold
        try:
            mask = threshold_mask(vol, level, extend, soft_edge)
        except InvalidValueError as err:  # e.g. nothing reaches the threshold: name the map
            raise InvalidValueError(str(err), map_path) from None
        write_map(out, mask.float(), m.voxel_size, protect=(map_path,))
        typer.echo(f"threshold {level:.4g}: {float((mask > 0.5).double().mean()):.1%} of the box inside the mask")
        typer.echo(f"wrote {out}")
