"""`cryoscope version`: print the package version."""

from __future__ import annotations

import typer

import cryoscope


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version() -> None:
        """Print the cryoscope version."""
        typer.echo(cryoscope.__version__)
