"""Shared fixtures: a real PostgreSQL, one fresh database per test, a clean environment.

The server is ``HARVESTER_TEST_DATABASE_URL`` when set (CI points it at the machine's
PostgreSQL), else an embedded one started for the session. The schema is migrated once
into a template database; each test gets ``CREATE DATABASE ... TEMPLATE`` of it, which is
fast and fully isolated.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import structlog

from harvester.embedded import EmbeddedPostgres
from harvester.migrations import migrate
from harvester.store import create_pool
from tests.stores import Store

# Read once, before any test scrubs HARVESTER_* from the environment.
TEST_DATABASE_URL = os.environ.get("HARVESTER_TEST_DATABASE_URL") or None


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{name}").geturl()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-minutes", type=float, default=10.0,
                     help="how long the soak test runs (pytest -m soak)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("-m") and "soak" in str(config.getoption("-m")):
        return
    skip = pytest.mark.skip(reason="soak runs only with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's HARVESTER_* settings, nor the width of their terminal
    (tables written to a pipe fit $COLUMNS)."""
    for key in list(os.environ):
        if key.startswith("HARVESTER_") or key == "COLUMNS":
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults (every level kept): a command run
    in-process by an earlier test configures logging at ``info``, which would hide the
    debug lines a later test captures, depending on the order tests ran in."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Admin URL of the PostgreSQL server the tests use.

    The embedded cluster lives in its own mkdtemp directory, not under pytest's
    basetemp: run as root, pgserver runs postgres as the user 'pgserver', and every
    pytest session start chmods /tmp/pytest-of-root to 0700, which would lock a
    concurrent session's server out of its own data directory."""
    if TEST_DATABASE_URL:
        yield TEST_DATABASE_URL
        return
    root = Path(tempfile.mkdtemp(prefix="harvester-test-pg-"))
    root.chmod(0o755)
    embedded = EmbeddedPostgres(root)
    embedded.start()
    try:
        yield embedded.uri("postgres")
    finally:
        embedded.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


@pytest.fixture(scope="session")
def template_database(pg_server_url: str) -> Iterator[str]:
    name = f"harvester_tmpl_{os.getpid()}"

    async def create() -> None:
        conn = await _admin(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        target = await asyncpg.connect(with_database(pg_server_url, name))
        try:
            await migrate(target)
        finally:
            await target.close()

    asyncio.run(create())
    yield name
    _drop_database(pg_server_url, name)


def _fresh_database(pg_server_url: str, template: str | None) -> str:
    name = f"harvester_test_{uuid.uuid4().hex[:16]}"

    async def create() -> None:
        conn = await _admin(pg_server_url)
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await conn.close()

    asyncio.run(create())
    return name


def _drop_database(pg_server_url: str, name: str) -> None:
    async def drop() -> None:
        conn = await _admin(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture
def db_url(pg_server_url: str, template_database: str) -> Iterator[str]:
    """A migrated database of its own for this test."""
    name = _fresh_database(pg_server_url, template_database)
    try:
        yield with_database(pg_server_url, name)
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A database with no schema at all (for migration tests)."""
    name = _fresh_database(pg_server_url, None)
    try:
        yield with_database(pg_server_url, name)
    finally:
        _drop_database(pg_server_url, name)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(db_url, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> Store:
    return Store(pool)


@pytest.fixture
def open_tmp_path() -> Iterator[Path]:
    """A temporary directory every user may enter, for an embedded PostgreSQL's data
    directory: run as root, the server runs as the user 'pgserver', which must be able
    to enter every parent, and harvester opens none (README "Security"); pytest's
    tmp_path lies under a 0700 directory."""
    root = Path(tempfile.mkdtemp(prefix="harvester-test-data-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
