"""The ``harvester`` command line: parse, build settings once, dispatch, report.

Each sub-command is a module (:mod:`harvester.commands`, and the tools' ``demo`` and
``bench``) that adds its parser and names its handler; this loops over them. Settings
are built here, at the edge, from the environment, ``.env`` and the flags, and passed
down. Every error a user can cause is printed as one line on stderr with a non-zero exit
status, a command line argparse refuses too (:class:`OneLineParser`); a traceback means a
bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Final, NoReturn

from harvester import __version__
from harvester.commands import (
    changes,
    enqueue,
    healthcheck,
    jobs,
    migrate,
    mirror,
    psql,
    requeue,
    run,
    simulate,
    status,
    stuck,
)
from harvester.commands.options import settings_from
from harvester.errors import (
    ConfigError,
    EmbeddedDatabaseError,
    MigrationError,
    StoreError,
    StoreUnavailable,
    UserError,
)
from harvester.logs import configure_logging, get_logger
from harvester.settings import Settings, unknown_variables
from harvester.tools import bench, demo

COMMANDS: Final[tuple[ModuleType, ...]] = (
    run, migrate, enqueue, status, stuck, jobs, requeue, simulate, healthcheck, psql, mirror,
    changes, demo, bench)
"""Every sub-command's module, in the order ``harvester --help`` lists them."""

Handler = Callable[[Settings, argparse.Namespace], int]
"""What a command's parser names with ``set_defaults(handler=...)``: it takes the
settings and the parsed arguments, and returns the exit status."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line and exit status 2, like every
    other mistake (README "Commands"): what is wrong and where ``--help`` says more, not
    the usage block. Sub-command parsers are made of the same class (argparse's
    ``add_subparsers`` takes the parent's)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("harvester").strip()
        self.exit(2, f"harvester: {where + ': ' if where else ''}{message} "
                     f"(`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="harvester",
        description="Mirror justcrawl extraction results into PostgreSQL. Configuration comes "
                    "from HARVESTER_* environment variables (and .env); flags override them.",
    )
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    unknown = unknown_variables()
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        # A misspelt name is often why a setting is missing or wrong: say so here too.
        raise ConfigError("\n".join([str(exc), *map(str, unknown)])) from None
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    for variable in unknown:
        if getattr(args, "speaks_in_logs", False):
            # The daemon's output is its log: the warning is one of its events.
            get_logger("harvester.settings").warning(
                "settings.unknown_variable", variable=variable.name,
                did_you_mean=variable.closest, note="not a harvester setting; ignored")
        else:
            sys.stderr.write(f"harvester: warning: {variable}\n")
    handler: Handler = args.handler
    return handler(settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as exc:
        return _fail(str(exc), exc.exit_status)
    except (EmbeddedDatabaseError, MigrationError) as exc:
        return _fail(str(exc), 1)
    except StoreUnavailable as exc:
        return _fail(f"cannot reach the database: {exc}", 1)
    except StoreError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _fail(message: str, status: int) -> int:
    """One line per problem (a configuration may hold several), each on its own."""
    for line in message.splitlines() or [message]:
        sys.stderr.write(f"harvester: {line}\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
