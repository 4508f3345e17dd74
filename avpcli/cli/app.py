"""The `avp` Typer app: every command registered in the order `avp --help` lists them, --version, and main."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperCommand

from avpcli import __version__
from avpcli.cli.basics import demo, keygen, targets
from avpcli.cli.crypt import decrypt, encrypt
from avpcli.cli.evaluate import evaluate_app
from avpcli.cli.options import with_ray_value

app = typer.Typer(
    name="avp",
    help="Hide what images show from people while a chosen model still recognizes them; the key gives them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avp {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """avp: adversarial visual privacy (AVP / AVIH, ICCV 2023)."""


class _RayCommand(TyperCommand):
    """A command with --ray, whose address may be left out (options.with_ray_value)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, with_ray_value(args))


for command in (keygen, targets, encrypt, decrypt, demo):
    app.command(cls=_RayCommand if command in (encrypt, decrypt) else None)(command)
app.add_typer(evaluate_app, name="evaluate")


def main() -> None:
    """Console-script entry point."""
    app()
