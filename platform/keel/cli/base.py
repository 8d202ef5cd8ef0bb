"""The `keel` command group and the pieces every command module shares.

User errors (KeelError, bad arguments) print one line on stderr and exit 2; a refused promotion
exits 3. Heavy libraries load inside the commands that need them, so `keel --help` is instant.
"""

from __future__ import annotations

import click

from keel import __version__
from keel.config import Settings, load_settings
from keel.output import FORMATS

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                      help="output format")


def settings_of(ctx: click.Context) -> Settings:
    if ctx.obj is None:
        ctx.obj = load_settings()
    return ctx.obj


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keel")
def cli() -> None:
    """keel: MLflow, Feast, KServe, Ray Serve, Airflow and Prometheus as one ML platform."""


