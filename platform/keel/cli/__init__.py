"""The `keel` command. Thin: parses arguments, calls the SDK, renders results.

User errors (KeelError, bad arguments) print one line on stderr and exit 2; a refused promotion
exits 3. Heavy libraries load inside the commands that need them, so `keel --help` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from keel.cli import batch, features, monitoring, registry, retraining, serving, stack, stream  # noqa: F401 - register commands
from keel.cli.base import cli
from keel.errors import KeelError

__all__ = ["cli", "entry", "main"]


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    # the CLI says what it did in its own words: MLflow's run URLs and INFO lines are noise here
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        cli.main(args=argv, prog_name="keel", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("keel: aborted", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"keel: error: {exc.format_message()}{hint}", err=True)
        return 2
    except KeelError as exc:
        click.echo(f"keel: error: {exc}", err=True)
        return exc.exit_code
    except Exception as exc:
        if type(exc).__name__ == "MlflowException" and "401" in str(exc):
            click.echo("keel: error: MLflow refused the request (401 not authenticated): set "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD", err=True)
            return 2
        raise
    return 0


def entry() -> None:
    """Console-script entry. Exits without interpreter finalisation (after flushing output): DuckDB's
    bindings print a page of reference-leak noise at finalisation, and a CLI run has nothing left to
    clean up by then."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
