"""The ``harvester`` command line: parse, build settings once, dispatch, report.

Settings are built here, at the edge, from the environment, ``.env`` and the flags,
and passed down. Every error a user can cause is printed as one line on stderr with a
non-zero exit status; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from harvester import __version__
from harvester.errors import (
    ConfigError,
    EmbeddedDatabaseError,
    MigrationError,
    StoreError,
    StoreUnavailable,
    UserError,
)
from harvester.logs import configure_logging, get_logger
from harvester.settings import Settings, load_settings, unknown_variables


def _seconds(text: str) -> float:
    return float(text)


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="data_dir", metavar="PATH",
                        help="embedded PostgreSQL location when HARVESTER_DATABASE_URL is unset "
                             "(HARVESTER_DATA_DIR)")


def _add_database_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", metavar="NAME",
                        help="another database on the same server, as psql's -d (the demo's is "
                             "harvester_demo); default: the one HARVESTER_DATABASE_URL names, or "
                             "'harvester' on the embedded PostgreSQL")


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", dest="log_level",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", dest="log_format", choices=["auto", "json", "console"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harvester",
        description="Mirror justcrawl extraction results into PostgreSQL. Configuration comes "
                    "from HARVESTER_* environment variables (and .env); flags override them.",
    )
    parser.add_argument("--version", action="version", version=f"harvester {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="the daemon: poll due jobs and mirror landed rows",
                         description="Run the daemon. Applies pending migrations first (under an "
                                     "advisory lock) unless --no-migrate. Stops cleanly on "
                                     "SIGTERM/SIGINT.")
    run.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    run.add_argument("--api-base-url", dest="api_base_url", metavar="URL")
    run.add_argument("--insecure", action="store_const", const=True, default=None,
                     help="allow plain http:// to a non-loopback upstream")
    run.add_argument("--concurrency", type=int, metavar="N")
    run.add_argument("--max-rps", dest="max_rps", type=float, metavar="N")
    run.add_argument("--admin-host", dest="admin_host", metavar="HOST")
    run.add_argument("--admin-port", dest="admin_port", type=int, metavar="PORT")
    _add_database(run)
    _add_logging(run)
    run.set_defaults(handler=_run)

    mig = sub.add_parser("migrate", help="apply the SQL migrations (idempotent)",
                         description="Apply the migrations in sql/ in order under an advisory "
                                     "lock; prints what it applied. The only command that creates "
                                     "the embedded PostgreSQL or a database on it.")
    _add_database(mig)
    _add_database_name(mig)
    _add_logging(mig)
    mig.set_defaults(handler=_migrate)

    enq = sub.add_parser(
        "enqueue", help="feed job IDs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Feed job IDs: as arguments, or one per line from --file PATH or stdin\n"
                    "(`harvester enqueue - < ids.txt`, or a pipe). Whitespace is trimmed, blank\n"
                    "lines and # comments are skipped, CRLF and a UTF-8 BOM are fine, UUIDs in\n"
                    "any case are normalised. Streams any size in one transaction.\n\n"
                    "All or nothing: if any line is bad, nothing is enqueued, each bad line is\n"
                    "listed on stderr as 'line N: why' (the first 20, then a count) and the\n"
                    "exit status is 2. With --skip-invalid the valid IDs are enqueued, the bad\n"
                    "ones still listed, and the exit status is 0 (2 if no line was valid).\n"
                    "Ctrl-C enqueues nothing (it says so; exit status 130).\n"
                    "Prints new / already known / invalid counts (--json for scripts).\n"
                    "Needs only USAGE on schema harvester and INSERT on harvester.jobs.")
    enq.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                     help="job IDs; a single '-' reads stdin")
    enq.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    enq.add_argument("--skip-invalid", action="store_true",
                     help="enqueue the valid IDs even if some lines are bad")
    enq.add_argument("--json", action="store_true",
                     help="print {new, known, invalid, valid, committed, errors, "
                          "errors_not_shown} as JSON")
    _add_database(enq)
    _add_database_name(enq)
    _add_logging(enq)
    enq.set_defaults(handler=_enqueue)

    st = sub.add_parser("status", help="queue counts, backlog, stuck, circuits, live daemons",
                        description="Queue counts by state, due-now count, oldest due age, jobs "
                                    "leased by a daemon, open jobs by upstream status, open "
                                    "stuck count, landed in the last minute/hour, failures by "
                                    "reason, the auth and permission circuits, and each live "
                                    "daemon's requests in flight and send rate.")
    st.add_argument("--json", action="store_true", help="print the numbers as JSON")
    _add_database(st)
    _add_database_name(st)
    _add_logging(st)
    st.set_defaults(handler=_status)

    stuck = sub.add_parser("stuck", help="stuck records (open ones, oldest first); stuck ack",
                           description="The open stuck records (upstream says completed but "
                                       "no result row landed), oldest first. A record closes "
                                       "when its job ends (landed, failed, expired) or when an "
                                       "operator acknowledges it: `harvester stuck ack`.")
    stuck.add_argument("--json", action="store_true",
                       help="print a JSON array of records (at most --limit; stderr says when "
                            "there are more)")
    stuck.add_argument("--limit", type=int, default=100, metavar="N",
                       help="show at most N records (default 100; 0 = all)")
    which = stuck.add_mutually_exclusive_group()
    which.add_argument("--resolved", dest="which", action="store_const", const="resolved",
                       default="open", help="closed records instead, most recently closed first")
    which.add_argument("--all", dest="which", action="store_const", const="all",
                       help="open and closed records, oldest first")
    _add_database(stuck)
    _add_database_name(stuck)
    _add_logging(stuck)
    stuck.set_defaults(handler=_stuck)
    stuck_actions = stuck.add_subparsers(dest="stuck_action", metavar="[ack]")
    ack = stuck_actions.add_parser(
        "ack", help="close open stuck records by hand, saying who and why",
        description="Acknowledge stuck records: each open record of the given jobs closes "
                    "with resolution 'acknowledged', who (--by) and why (--note), and stops "
                    "counting in harvester_stuck_open and the HarvesterStuckJobs alert. The "
                    "jobs keep their state and their recheck: a row that lands later is still "
                    "mirrored. All or nothing on bad input, like enqueue.")
    ack.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                     help="job IDs; a single '-' reads stdin")
    ack.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    ack.add_argument("--by", metavar="NAME",
                     help="who acknowledges (default: the login name)")
    ack.add_argument("--note", required=True, metavar="TEXT",
                     help="why, e.g. a ticket: 'reported to justcrawl, ticket 4711'")
    ack.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="print {acknowledged, acknowledged_ids, closed_already, "
                          "never_stuck, unknown (the first 20 of each, with *_count), "
                          "resolved_by, note} as JSON")
    # The same options as `stuck`, before or after `ack`: SUPPRESS keeps a value given
    # before `ack` from being reset by this parser's defaults.
    for option in (_add_database, _add_database_name, _add_logging):
        option(ack)
    for action in ack._actions:
        if action.dest in ("data_dir", "database", "log_level", "log_format"):
            action.default = argparse.SUPPRESS
    ack.set_defaults(handler=_stuck_ack)

    jobs = sub.add_parser(
        "jobs", help="list jobs by state (and failure reason), a page at a time",
        description="One page of jobs in a state, in the order of that state's index: "
                    "pending and stuck by next poll time (most overdue first), landed by "
                    "landing time and failed by failure time (most recent first). The last "
                    "line gives the command for the next page (--after CURSOR).")
    jobs.add_argument("--state", choices=["pending", "stuck", "landed", "failed"],
                      help="which jobs (--reason implies failed)")
    jobs.add_argument("--reason", action="append", default=[], metavar="REASON",
                      help="failed jobs with this reason: forbidden, upstream_failed, "
                           "not_found, expired or http_<status>; repeatable")
    jobs.add_argument("--limit", type=int, default=100, metavar="N",
                      help="jobs per page, 1 to 1000 (default 100)")
    jobs.add_argument("--after", metavar="CURSOR", help="the cursor a previous page printed")
    jobs.add_argument("--json", action="store_true",
                      help='print {"jobs": [...], "next": CURSOR or null} as JSON')
    _add_database(jobs)
    _add_database_name(jobs)
    _add_logging(jobs)
    jobs.set_defaults(handler=_jobs)

    rq = sub.add_parser(
        "requeue", help="put jobs back to pending, due now",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Put jobs back to pending, due now, with their age limits counted from\n"
                    "now; they start over as freshly fed jobs (followed through batch-status).\n"
                    "Aim with job IDs (arguments, --file PATH, or - for stdin; all or nothing\n"
                    "on bad lines, like enqueue), or with a selection:\n"
                    "  --state failed|stuck      every job in that state\n"
                    "  --reason REASON           failed jobs with that reason (repeatable)\n"
                    "  --older-than/--newer-than how long the job has been failed or stuck\n"
                    "                            (90s, 15m, 6h, 7d)\n"
                    "A landed job named by ID is polled again on purpose (also one whose queue\n"
                    "row retention deleted: the mirror still has it); landing it again is an\n"
                    "idempotent upsert. Open stuck records stay open: they close when the job\n"
                    "ends or with `harvester stuck ack`. --dry-run counts, changes nothing.")
    rq.add_argument("job_ids", nargs="*", metavar="JOB_ID",
                    help="job IDs; a single '-' reads stdin")
    rq.add_argument("--file", "-f", metavar="PATH", help="read IDs from PATH ('-' for stdin)")
    rq.add_argument("--state", choices=["failed", "stuck"],
                    help="requeue the jobs in this state")
    rq.add_argument("--reason", action="append", default=[], metavar="REASON",
                    help="only failed jobs with this reason: forbidden, upstream_failed, "
                         "not_found, expired or http_<status>; repeatable; implies "
                         "--state failed")
    rq.add_argument("--older-than", dest="older_than", metavar="DURATION",
                    help="only jobs failed (or stuck) at least this long ago")
    rq.add_argument("--newer-than", dest="newer_than", metavar="DURATION",
                    help="only jobs failed (or stuck) less than this long ago")
    rq.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="say how many jobs would be requeued; change nothing")
    rq.add_argument("--json", action="store_true",
                    help="print {requeued, dry_run, landed_polled_again, "
                         "landed_polled_again_count, unknown, unknown_count} as JSON (the ID "
                         "lists hold the first 20)")
    _add_database(rq)
    _add_database_name(rq)
    _add_logging(rq)
    rq.set_defaults(handler=_requeue)

    sim = sub.add_parser("simulate", help="serve a simulated upstream on loopback",
                         description="Serve a simulated justcrawl API (same paths, statuses, "
                                     "headers and bodies) with a configurable mix of behaviours. "
                                     "Point the daemon at it with HARVESTER_API_BASE_URL.")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    sim.add_argument("--mix", default="demo",
                     help="preset: first-poll, pending, demo, chaos (default demo)")
    sim.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a mix field, e.g. --set stuck=0.1 --set retry_after=2, "
                          "--set clock_skew=-20 (its clock 20 s behind the machine's)")
    sim.add_argument("--token", default="sim-token",
                     help="the bearer token it accepts ('' accepts any)")
    sim.add_argument("--no-record", action="store_true",
                     help="keep counters only, not a log of every request")
    _add_logging(sim)
    sim.set_defaults(handler=_simulate)

    hc = sub.add_parser("healthcheck", help="ask the running daemon's admin server (HEALTHCHECK)",
                        description="Exit 0 if the admin server of the `harvester run` beside "
                                    "it answers /healthz (or /readyz with --ready) with 2xx, "
                                    "else 1. It asks where that daemon listens: "
                                    "HARVESTER_ADMIN_HOST/PORT (environment, .env), then the "
                                    "daemon's own --admin-host/--admin-port (read from /proc), "
                                    "then the flags given here; 0.0.0.0 and :: are asked on "
                                    "loopback.")
    hc.add_argument("--admin-host", dest="admin_host", metavar="HOST")
    hc.add_argument("--admin-port", dest="admin_port", type=int, metavar="PORT")
    hc.add_argument("--ready", action="store_true",
                    help="ask /readyz (database reachable, auth circuit closed)")
    hc.add_argument("--timeout", type=_seconds, default=4.0, metavar="SECONDS")
    hc.set_defaults(handler=_healthcheck)

    from harvester import commands  # noqa: PLC0415 - keeps `harvester --help` light
    from harvester.tools import bench, demo  # noqa: PLC0415

    commands.add_psql_parser(sub)
    demo.add_parser(sub)
    bench.add_parser(sub)
    return parser


SETTING_FLAGS = ("api_base_url", "insecure", "concurrency", "max_rps", "admin_host",
                 "admin_port", "data_dir", "log_level", "log_format")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None
    }
    return load_settings(overrides)


# ---------------------------------------------------------------- handlers
#
# Every sub-command's parser names its handler with ``set_defaults(handler=...)``; a
# handler takes the settings (built once, here at the edge) and the parsed arguments,
# and returns the exit status. Asynchronous commands are wrapped by ``_blocking``.

Handler = Callable[[Settings, argparse.Namespace], int]


def _blocking(command: Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
              ) -> Handler:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        return asyncio.run(command(settings, args))

    return run


@_blocking
async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from harvester.daemon import run_daemon  # noqa: PLC0415

    settings.require_api_token()
    await run_daemon(settings, apply_migrations=not args.no_migrate)
    return 0


@_blocking
async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_migrate(settings, sys.stdout, database=args.database)


@_blocking
async def _enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_enqueue(settings, args.job_ids, args.file, args.skip_invalid,
                                      args.json, sys.stdout, sys.stderr, commands.stdin_binary(),
                                      database=args.database)


@_blocking
async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_status(settings, args.json, sys.stdout, database=args.database)


@_blocking
async def _stuck(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_stuck(settings, args.json, sys.stdout, database=args.database,
                                    which=args.which, limit=args.limit, err=sys.stderr)


@_blocking
async def _stuck_ack(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_stuck_ack(settings, args.job_ids, args.file, args.by, args.note,
                                        args.json, sys.stdout, sys.stderr,
                                        commands.stdin_binary(), database=args.database)


@_blocking
async def _jobs(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    return await commands.cmd_jobs(settings, args.state, args.reason, args.limit, args.after,
                                   args.json, sys.stdout, database=args.database)


@_blocking
async def _requeue(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import commands  # noqa: PLC0415

    aim = commands.RequeueAim(ids=args.job_ids, file=args.file, state=args.state,
                              reasons=args.reason, older_than=args.older_than,
                              newer_than=args.newer_than)
    return await commands.cmd_requeue(settings, args.job_ids, args.state, args.json, sys.stdout,
                                      aim=aim, dry_run=args.dry_run, err=sys.stderr,
                                      stdin=commands.stdin_binary(), database=args.database)


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from harvester.tools.simulator import cmd_simulate  # noqa: PLC0415

    return cmd_simulate(args)


def _healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    from harvester import healthcheck  # noqa: PLC0415

    daemon = healthcheck.find_daemon_argv()
    if daemon is not None:
        # The daemon's settings: the same environment and .env, its flags, then ours.
        merged = vars(build_parser().parse_args(daemon))
        merged.update({name: getattr(args, name) for name in ("admin_host", "admin_port")
                       if getattr(args, name) is not None})
        settings = settings_from(argparse.Namespace(**merged))
    return healthcheck.cmd_healthcheck(settings, args.ready, args.timeout, sys.stdout)


def _dispatch(args: argparse.Namespace) -> int:
    unknown = unknown_variables()
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        # A misspelt name is often why a setting is missing or wrong: say so here too.
        raise ConfigError("\n".join([str(exc), *map(str, unknown)])) from None
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    for variable in unknown:
        get_logger("harvester.settings").warning(
            "settings.unknown_variable", variable=variable.name, did_you_mean=variable.closest,
            note="not a harvester setting; ignored")
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
