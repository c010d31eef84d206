"""The command line's own promises (README "Commands"): every mistake is one line and
exit status 2, the usage lines say what is required, every command that touches the
database takes ``--database NAME``, tables fit a sane width when piped."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harvester.cli import build_parser, main
from harvester.commands.render import PIPED_WIDTH, console, output_width


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (``stuck ack`` included)."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{parser.prog.removeprefix('harvester').strip()} {name}".strip()
                found[full] = sub
                found.update(subcommands(sub))
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@pytest.mark.parametrize("argv", [
    [], ["nonsense"], ["jobs", "--limit", "x"], ["jobs", "--state", "bogus"],
    ["status", "--bogus"], ["stuck", "ack", "--by", "me"], ["requeue", "--older-than"],
    ["run", "--concurrency", "many"],
])
def test_a_refused_command_line_is_one_line_and_exit_2(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("harvester: "), captured.err
    assert "usage:" not in captured.err
    assert re.search(r"\(`harvester[a-z ]*--help` lists the options\)\n$", captured.err)


def test_the_refusal_names_the_command_and_the_problem(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["stuck", "ack", "--by", "me"])
    assert capsys.readouterr().err == (
        "harvester: stuck ack: the following arguments are required: --note "
        "(`harvester stuck ack --help` lists the options)\n")


def test_help_and_version_still_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["jobs", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    assert "usage: harvester jobs (--state STATE | --reason REASON" in capsys.readouterr().out


DATABASE_COMMANDS = ("run", "migrate", "enqueue", "status", "stuck", "stuck ack", "jobs",
                     "requeue", "psql", "bench")


def test_every_command_that_touches_the_database_takes_database() -> None:
    commands = subcommands(build_parser())
    assert set(DATABASE_COMMANDS) <= set(commands)
    for name in DATABASE_COMMANDS:
        assert "--database" in option_strings(commands[name]), name


def test_the_jobs_usage_shows_state_as_required_and_every_option() -> None:
    jobs = subcommands(build_parser())["jobs"]
    usage = jobs.format_usage()
    assert usage.startswith("usage: harvester jobs (--state STATE | --reason REASON")
    # Not optional: no "[--state" anywhere.
    assert "[--state" not in usage
    for option in option_strings(jobs) - {"-h", "--help"}:
        assert option in usage, option


def test_every_usage_line_lists_every_option() -> None:
    """A written-out usage (jobs) cannot fall behind the options."""
    for name, parser in subcommands(build_parser()).items():
        usage = parser.format_usage()
        for option in option_strings(parser) - {"-h", "--help"}:
            assert option in usage, (name, option)


@pytest.mark.parametrize("name", ["harvester", "postgres", ""])
def test_bench_refuses_to_drop_a_database_that_is_not_its_scratch(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--database", name]) == 2
    err = capsys.readouterr().err
    assert err == (f"harvester: --database: bench drops and recreates its database; {name!r} "
                   "is not a scratch database (default harvester_bench)\n")


def test_the_misspelt_variable_warning_is_a_plain_line_for_a_command(tmp_path: Path) -> None:
    """Not a JSON log event on a pipe: `run`, whose output is its log, keeps the event
    (tests/unit/test_settings.py)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HARVESTER_CONCURENCY": "5", "HARVESTER_DATA_DIR": str(tmp_path / "none")}
    proc = subprocess.run([sys.executable, "-m", "harvester", "status"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "harvester: warning: HARVESTER_CONCURENCY is not a harvester setting (did you mean "
        "HARVESTER_CONCURRENCY?); it is ignored",
        f"harvester: there is no embedded PostgreSQL in {tmp_path}/none/pgdata yet: run "
        f"`harvester migrate --data-dir {tmp_path}/none` (or `harvester demo`), or set "
        "HARVESTER_DATABASE_URL"]


# ---------------------------------------------------------------- width


def test_tables_fit_columns_or_120_when_piped() -> None:
    piped = io.StringIO()
    assert output_width(piped, {}) == PIPED_WIDTH == 120
    assert output_width(piped, {"COLUMNS": "90"}) == 90
    for bad in ("", "wide", "0", "-5", "¹", "٩٠"):
        assert output_width(piped, {"COLUMNS": bad}) == 120


def test_a_wide_table_is_wrapped_to_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.table import Table  # noqa: PLC0415

    table = Table()
    for n in range(8):
        table.add_column(f"column {n}")
    table.add_row(*["word " * 12] * 8)
    for columns, width in ((None, 120), ("80", 80)):
        if columns is None:
            monkeypatch.delenv("COLUMNS", raising=False)
        else:
            monkeypatch.setenv("COLUMNS", columns)
        out = io.StringIO()
        console(out).print(table)
        assert max(len(line) for line in out.getvalue().splitlines()) == width


def test_at_the_piped_width_a_table_folds_its_cells_and_loses_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The widest table, `status`'s daemons (12 columns), at 120 columns: every cell's
    text is still there, folded onto more lines, none cut to "…"."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from harvester.commands.status import render_status  # noqa: PLC0415
    from tests.unit.test_render import status_value  # noqa: PLC0415

    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    render_status(status_value(), False, out, now=now)
    text = out.getvalue()
    # Tables fit; lines of text stay whole (a command printed to copy is one line).
    assert max(len(line) for line in text.splitlines() if line[:1] in "┏┃┡│└") <= 120
    assert "…" not in text
    # The daemons' row, its lines put back together column by column.
    body = [line.split("│")[1:-1] for line in text.splitlines()[-3:-1]]
    assert len(body) == 2, text  # one daemon, folded onto two lines
    cells = [" ".join(part.strip() for part in column if part.strip())
             for column in zip(*body, strict=True)]
    assert cells[5] == "no limit found"
    assert cells[9].replace(" ", "") == "base_url_suspect"


# ---------------------------------------------------------------- README "Commands"


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_commands_table_lists_every_command() -> None:
    """healthcheck was missing (issue 23)."""
    table = readme_section("Commands")
    for name in subcommands(build_parser()):
        assert f"| `harvester {name}" in table, name
    assert "| `harvester jobs (--state STATE \\| --reason R …)" in table


def test_try_it_shows_the_commands_the_demo_suggests() -> None:
    from harvester.settings import default_data_dir  # noqa: PLC0415
    from harvester.tools.demo import next_commands  # noqa: PLC0415

    shown = [line.split("#")[0].split(maxsplit=2)[2].strip()
             for line in readme_section("Try it").splitlines()
             if line.startswith("uv run harvester ") and line != "uv run harvester demo"]
    assert shown == [
        command for command, _ in next_commands(default_data_dir())]
