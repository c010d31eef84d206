from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from harvester.admin import Admin
from harvester.cli import main
from tests.helpers import SimulatedUpstream


@dataclass
class CliResult:
    status: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures logging onto the captured stderr; put things back after."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli(db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        restore_logging: None) -> Cli:
    """``harvester ...`` in-process against this test's database."""
    monkeypatch.setenv("HARVESTER_DATABASE_URL", db_url)
    # Tables as wide as their rows, so that tests read each row on one line (the width
    # of a pipe without $COLUMNS is tests/unit/test_cli.py's).
    monkeypatch.setenv("COLUMNS", "250")

    async def run(*args: str, stdin: bytes | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        try:
            status = await asyncio.to_thread(main, list(args))
        except SystemExit as exc:  # argparse refusing the command line
            status = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(status, captured.out, _without_slow_callback_notes(captured.err))

    return run


def _without_slow_callback_notes(err: str) -> str:
    """stderr without asyncio's debug-mode notes of a step slower than 100 ms ("Executing
    <Task …> took 0.1 seconds"): CI runs the suite with PYTHONASYNCIODEBUG=1 on a loaded
    machine, and those lines are the test run's, not the command's output."""
    return "".join(line for line in err.splitlines(keepends=True)
                   if not ('"logger": "asyncio"' in line and '"event": "Executing <' in line))


@pytest.fixture
async def upstream() -> AsyncIterator[SimulatedUpstream]:
    sim = await SimulatedUpstream().start()
    try:
        yield sim
    finally:
        await sim.stop()


ServeAdmin = Callable[[Admin], Awaitable[Admin]]


@pytest.fixture
async def serve_admin() -> AsyncIterator[ServeAdmin]:
    """Start admin servers the way ``harvester run`` does (``Admin.start``: a real
    listening socket, a free port when the settings say 0); each is stopped after."""
    started: list[Admin] = []

    async def serve(admin: Admin) -> Admin:
        await admin.start()
        started.append(admin)
        return admin

    try:
        yield serve
    finally:
        for admin in started:
            await admin.stop()
