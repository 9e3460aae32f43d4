"""`cryoscope align MAP REF -o ALIGNED.mrc`: rigid map-to-map alignment (rotation, shift, hand) and FSC."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from cryoscope.cli.fsc import read_map_pair, read_mask, resolution_lines
from cryoscope.device import resolve_device
from cryoscope.errors import InvalidValueError, MissingDataError
from cryoscope.geometry.rotations import matrix_to_axis_angle, matrix_to_euler
from cryoscope.io.mrc import write_map
from cryoscope.validation.align import fsc_after_alignment


def register(app: typer.Typer) -> None:
    @app.command("align")
    def align_command(
        map_path: Path = typer.Argument(..., metavar="MAP", help="Map to move (MRC)"),
        ref_path: Path = typer.Argument(..., metavar="REF", help="Reference map (MRC) of the same box and voxel size"),
        out: Path = typer.Option(..., "-o", "--out", help="Aligned map (MRC)"),
        flip: bool = typer.Option(True, "--flip/--no-flip", help="Also try the mirrored map (opposite hand)"),
        mask: Path = typer.Option(None, "--mask", help="Soft mask (MRC, values in [0, 1]) for the FSC"),
        voxel_size: float = typer.Option(None, "--voxel-size", help="Voxel size (Å), overrides the headers"),
        n_rotations: int = typer.Option(3000, "--n-rotations", help="Random rotations in the global search"),
        seed: int = typer.Option(0, "--seed", help="Random seed of the global rotation search"),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
        json_out: Path = typer.Option(None, "--json", help="Write the transform, FSC and resolutions as JSON"),
        particles: Path = typer.Option(None, "--particles", help="Particle STAR file of MAP: its poses are moved with the map"),
        particles_out: Path = typer.Option(None, "--particles-out", help="STAR file for --particles' poses in REF's frame "
                                           "(every other column kept), e.g. to refine further in the reference's frame"),
    ) -> None:
        """Align MAP onto REF by rotation, shift and (optionally) hand flip; report the FSC after alignment.

        With --particles, the particles' poses (rotations and origins) are transformed so that they give the same
        images of the aligned map as they gave of MAP (cryoSPARC's "Align 3D maps" with particles)."""
        if out.exists() and any(p.exists() and out.resolve() == p.resolve() for p in (map_path, ref_path)):
            raise InvalidValueError("refusing to overwrite an input map", out)
        if (particles is None) != (particles_out is None):
            raise InvalidValueError("--particles and --particles-out go together")
        meta = None
        if particles is not None:
            from cryoscope.io.star import read_star

            meta = read_star(particles)
            if not meta.has_poses:
                raise MissingDataError("no poses (rlnAngleRot/Tilt/Psi) to transform", particles)
        m, ref = read_map_pair(map_path, ref_path, voxel_size)
        vs, box = m.voxel_size, m.data.shape[-1]
        dev = resolve_device(device)
        weights = None if mask is None else read_mask(mask, m.data.shape, vs).to(dev)
        result = fsc_after_alignment(
            m.data.to(dev), ref.data.to(dev), vs, weights, flip=flip, n_rotations=n_rotations, seed=seed,
        )
        al = result.alignment
        R = al.R.double().cpu()
        euler = matrix_to_euler(R).tolist()
        angle = math.degrees(float(matrix_to_axis_angle(R).norm()))
        shift_vox = al.shift.double().cpu()
        write_map(out, result.aligned.float(), vs, protect=(map_path, ref_path) + ((particles,) if particles else ()))
        if meta is not None:
            _write_moved_particles(meta, particles, particles_out, al, vs, (map_path, ref_path, out))
        typer.echo(f"rotation (rot, tilt, psi): {euler[0]:.2f}, {euler[1]:.2f}, {euler[2]:.2f} deg  (angle {angle:.2f} deg)")
        typer.echo("shift (x, y, z): " + ", ".join(f"{v * vs:.2f}" for v in shift_vox) + " Å  ("
                   + ", ".join(f"{v:.2f}" for v in shift_vox) + " voxels)")
        typer.echo(f"hand: {'flipped (mirrored along z)' if al.flipped else 'unchanged'}")
        typer.echo(f"correlation: {al.cc:.4f}")
        lines, metrics = resolution_lines(result.fsc, box, vs)
        for line in lines:
            typer.echo(line)
        typer.echo(f"wrote {out}")
        if json_out is not None:
            from cryoscope.io.runinfo import write_metrics_json

            write_metrics_json(
                json_out,
                {
                    "map": map_path, "reference": ref_path, "aligned": out, "voxel_size": vs, "box": box,
                    "rotation_matrix": R, "euler_rot_tilt_psi_deg": euler, "shift_voxels_xyz": shift_vox,
                    "shift_angstrom_xyz": shift_vox * vs, "flipped": al.flipped, "cc": al.cc, **metrics,
                    "frequency_cycles_per_pixel": result.frequencies, "fsc": result.fsc,
                },
            )
            typer.echo(f"wrote {json_out}")


def _write_moved_particles(meta, source: Path, path: Path, alignment, voxel_size: float, protect: tuple) -> None:
    """`source`'s particles with the poses that image the aligned map as they imaged the original (`path`)."""
    from cryoscope.geometry.alignment import poses_for_moved_map
    from cryoscope.io.metadata import ParticleMetadata
    from cryoscope.io.star import write_star_new_poses

    shifts = meta.shifts_A if meta.shifts_A is not None else meta.rotations.new_zeros(meta.n, 2)
    R, s = alignment.R.double().cpu(), alignment.shift.double().cpu() * voxel_size
    rotations, origins = poses_for_moved_map(meta.rotations, shifts, R, s, alignment.flipped)
    write_star_new_poses(source, path, ParticleMetadata(**{**vars(meta), "rotations": rotations, "euler": None, "shifts_A": origins}),
                         protect)
    typer.echo(f"wrote {path} ({meta.n} particles, poses in the reference's frame)")
