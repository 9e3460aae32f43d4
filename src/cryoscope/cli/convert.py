"""`cryoscope convert IN OUT`: particle metadata between RELION STAR, cryoSPARC .cs and cryoDRGN .pkl."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoscope.io.convert import attach_stack, read_metadata, write_metadata


def register(app: typer.Typer) -> None:
    @app.command("convert")
    def convert(
        inp: Path = typer.Argument(..., metavar="IN", help="Input .star, .cs or cryoDRGN pose/CTF .pkl"),
        out: Path = typer.Argument(..., metavar="OUT", help="Output; the extension (.star, .cs, .pkl) picks the format"),
        star_format: str = typer.Option("relion31", "--format", help="STAR output flavour: relion30 or relion31"),
        pixel_size: float = typer.Option(None, "--pixel-size", help="Pixel size (Å) if the input lacks or mislabels it"),
        box: int = typer.Option(None, "--box", help="Image box size (pixels) if the input lacks it"),
        ctf: Path = typer.Option(None, "--ctf", help="cryoDRGN CTF .pkl to read with a pose .pkl input"),
        ctf_out: Path = typer.Option(None, "--ctf-out", help="Second output for a cryoDRGN CTF .pkl"),
        images: Path = typer.Option(None, "--images", help="Particle stack (.mrcs) the cryoDRGN .pkl rows refer to, in order"),
    ) -> None:
        """Convert particle poses and CTF parameters between RELION, cryoSPARC and cryoDRGN."""
        meta = read_metadata(inp, pixel_size=pixel_size, box=box, ctf=ctf)
        if images is not None:
            meta = attach_stack(meta, images)
        inputs = tuple(p for p in (inp, ctf, images) if p is not None)
        written = write_metadata(out, meta, star_format=star_format, ctf_out=ctf_out, protect=inputs)
        typer.echo(f"wrote {meta.n} particles to {', '.join(map(str, written))}")
