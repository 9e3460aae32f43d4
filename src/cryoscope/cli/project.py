"""`cryoscope project`: projections of a map at the poses of a STAR file, like `relion_project`."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoscope.errors import InvalidValueError, MissingDataError


def register(app: typer.Typer) -> None:
    @app.command("project")
    def project_cmd(
        map_path: Path = typer.Argument(..., metavar="MAP", help="MRC map to project."),
        star: Path = typer.Option(..., help="STAR file with angles, origins (and CTF) per particle."),
        out: Path = typer.Option(..., "-o", "--out", help="Output .mrcs stack (a .star file is written beside it)."),
        ctf: bool = typer.Option(False, "--ctf", help="Multiply by each particle's CTF."),
        pixel_size: float = typer.Option(None, "--pixel-size", "--angpix", help="Pixel size, Å (default: from the STAR file)."),
        batch_size: int = typer.Option(256, help="Images per batch."),
        seed: int = typer.Option(0, help="Random seed (projection is deterministic; kept for uniformity)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
    ) -> None:
        """Project MAP at each particle's (rot, tilt, psi) and origin, optionally with its CTF."""
        import torch

        from cryoscope.device import resolve_device
        from cryoscope.io.mrc import read_map
        from cryoscope.io.star import read_star
        from cryoscope.simulation.project import project_particles

        torch.manual_seed(seed)
        meta = read_star(star, pixel_size=pixel_size)
        if pixel_size is not None:
            meta = meta.with_overrides(pixel_size=pixel_size)
        px = float(meta.require_pixel_size()[0])
        try:
            volume = read_map(map_path)
        except MissingDataError:  # no voxel size in the map header: the STAR pixel size applies
            volume = read_map(map_path, voxel_size=px)
        if pixel_size is None and abs(volume.voxel_size - px) > 0.01 * px:
            raise InvalidValueError(
                f"map voxel size {volume.voxel_size:g} Å differs from the STAR pixel size {px:g} Å (give --pixel-size to override)",
                map_path,
            )
        if out.suffix not in (".mrcs", ".mrc"):
            raise InvalidValueError("output must be an .mrcs stack", out)
        result = project_particles(volume, meta, out, use_ctf=ctf, batch_size=batch_size, device=resolve_device(device), protect=(map_path, star))
        typer.echo(f"wrote {meta.n} projections to {out} and {result}")
