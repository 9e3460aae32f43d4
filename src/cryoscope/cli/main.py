"""`cryoscope` command line: each module in this package with a `register(app)` adds one command."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from cryoscope.errors import CryoscopeError

app = typer.Typer(
    name="cryoscope",
    help="Single-particle cryo-EM: simulate, reconstruct, validate and analyse heterogeneity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Single-particle cryo-EM: simulate, reconstruct, validate and analyse heterogeneity."""


def _register_commands() -> None:
    import cryoscope.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "main":
            continue
        module = importlib.import_module(f"cryoscope.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command; user errors print one line and exit 2."""
    try:
        app(args=argv)
    except CryoscopeError as err:
        print(f"cryoscope: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as ex:  # typer exits after every command, --help and usage errors
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
