"""What several commands share on the command line: which database, logging, the
settings built from flags, and the wording of a job query's mistakes.

Settings are built once, at the edge, from the environment, ``.env`` and these flags
(:func:`settings_from`), and passed down; each command module adds its own options
next to these.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any, Final

from harvester.errors import UserError
from harvester.jobquery import LISTABLE_STATES, MAX_PAGE, BadJobQuery, parse_reasons
from harvester.metrics import FAILED_REASONS
from harvester.settings import Settings, load_settings

SETTING_FLAGS: Final = ("api_base_url", "insecure", "concurrency", "max_rps", "admin_host",
                        "admin_port", "data_dir", "log_level", "log_format")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None
    }
    return load_settings(overrides)


def seconds(text: str) -> float:
    return float(text)


def add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="data_dir", metavar="PATH",
                        help="embedded PostgreSQL location when HARVESTER_DATABASE_URL is unset "
                             "(HARVESTER_DATA_DIR)")


def add_database_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="NAME",
                        help="another database on the same server, as psql's -d (the demo's is "
                             "harvester_demo); default: the one HARVESTER_DATABASE_URL names, or "
                             "'harvester' on the embedded PostgreSQL")


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", dest="log_level",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", dest="log_format", choices=["auto", "json", "console"])


def add_reading(parser: argparse.ArgumentParser) -> None:
    """The options of every command that touches the database: where it is, which
    database on it, how to log."""
    add_database(parser)
    add_database_name(parser)
    add_logging(parser)


def job_query_mistake(exc: BadJobQuery) -> UserError:
    """A job query's broken rule as the command line says it (README "Commands")."""
    return UserError({
        "reason": f"--reason: {exc.value[:40]!r} is not a failure reason (one of "
                  f"{', '.join(FAILED_REASONS)}, or http_<status> such as http_410)",
        "state": f"--state: one of {', '.join(LISTABLE_STATES)}",
        "reason_state": "--reason applies to failed jobs only",
        "limit": f"--limit: 1 to {MAX_PAGE} jobs per page (got {exc.value})",
        "after": "--after: not a cursor from a previous page",
    }[exc.rule])


def check_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    try:
        return parse_reasons(reasons)
    except BadJobQuery as exc:
        raise job_query_mistake(exc) from None
