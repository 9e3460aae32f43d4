"""`cryoscope pdb2map PDB -o OUT.mrc`: electron-scattering density map of an atomic model."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoscope.errors import InvalidValueError
from cryoscope.io.mrc import write_map
from cryoscope.io.pdb import pdb_to_map


def register(app: typer.Typer) -> None:
    @app.command("pdb2map")
    def pdb2map(
        pdb: Path = typer.Argument(..., help="PDB or mmCIF model"),
        out: Path = typer.Option(..., "-o", "--out", help="Output MRC map"),
        box: int = typer.Option(64, "--box", help="Box size (voxels)"),
        voxel_size: float = typer.Option(1.5, "--voxel-size", help="Voxel size (Å)"),
        resolution: float = typer.Option(None, "--resolution", help="Blur to this resolution (Å), molmap-style"),
        bfactor: float = typer.Option(None, "--bfactor", help="Set every atom's B-factor (Å²)"),
        keep_coordinates: bool = typer.Option(False, "--keep-coordinates", help="Keep file coordinates (no centring)"),
    ) -> None:
        """Simulate a density map from an atomic model, centred in the box by default."""
        if resolution is not None and bfactor is not None:
            raise InvalidValueError("give either --resolution or --bfactor, not both")
        m = pdb_to_map(pdb, box, voxel_size, resolution=resolution, bfactor=bfactor, center=not keep_coordinates)
        write_map(out, m.data, m.voxel_size, protect=(pdb,))
        typer.echo(f"wrote {out}: {box}^3 voxels of {voxel_size:g} Å")
