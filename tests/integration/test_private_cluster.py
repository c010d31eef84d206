"""The embedded PostgreSQL stays private to the user it runs as (README "Security").

Its socket is in a directory only the server's user may enter, whatever the length of
the data path; no permission outside the data directory changes; another local user
(``nobody``) cannot connect, where the trust authentication of the embedded server
would otherwise make it superuser. Run as root, the server's user is ``pgserver`` and a
data directory it cannot reach is refused in one line rather than opened.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from harvester.embedded import EmbeddedPostgres
from harvester.errors import EmbeddedDataDirError
from harvester.private_cluster import SOCKET_DIR_PREFIX, SOCKET_PATH_MAX, closed_to

AS_ROOT = os.geteuid() == 0
LONG_PATH = 114  # the data path of issue 26: its socket path would not fit


def server_user() -> pwd.struct_passwd:
    return pwd.getpwnam("pgserver") if AS_ROOT else pwd.getpwuid(os.geteuid())


def long_data_dir(parent: Path) -> Path:
    return parent / ("d" * (LONG_PATH - len(str(parent)) - 1))


def modes(paths: list[Path]) -> dict[Path, int]:
    return {path: stat.S_IMODE(path.stat().st_mode) for path in paths}


def socket_dir(embedded: EmbeddedPostgres) -> Path:
    return Path((embedded.pgdata / "postmaster.pid").read_text().splitlines()[4].strip())


def can_connect_as(user: str, path: Path) -> bool:
    """Whether ``user`` may connect to the Unix socket at ``path``: a forked child drops
    to that user and asks the kernel."""
    account = pwd.getpwnam(user)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 2
        try:
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"the check itself failed ({code})"
    return code == 0


@pytest.fixture
def started() -> Iterator[list[EmbeddedPostgres]]:
    servers: list[EmbeddedPostgres] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def answers(embedded: EmbeddedPostgres) -> str:
    conn = await asyncpg.connect(embedded.uri("postgres"))
    try:
        return str(await conn.fetchval("SELECT current_user"))
    finally:
        await conn.close()


@pytest.mark.parametrize("length", ["long", "short"])
async def test_the_socket_is_in_a_directory_only_the_servers_user_may_enter(
        open_tmp_path: Path, started: list[EmbeddedPostgres], length: str) -> None:
    # A parent others may enter but not list: pgserver used to widen it (and every
    # other parent) to 0755.
    parent = open_tmp_path / "enter-only"
    parent.mkdir(mode=0o711)
    parent.chmod(0o711)
    data_dir = long_data_dir(parent) if length == "long" else parent / "data"
    ancestors = [parent, open_tmp_path, *open_tmp_path.parents]
    before = modes(ancestors)
    embedded = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(embedded.start)
    started.append(embedded)

    sockets = socket_dir(embedded)
    info = sockets.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == server_user().pw_uid
    if length == "long":
        assert len(str(data_dir)) == LONG_PATH
        assert len(os.fsencode(embedded.pgdata / ".s.PGSQL.5432")) > SOCKET_PATH_MAX
        assert sockets.name.startswith(SOCKET_DIR_PREFIX)
    else:
        assert sockets == embedded.pgdata.resolve()
    assert modes(ancestors) == before
    assert await answers(embedded) == "postgres"  # harvester itself gets in
    if AS_ROOT:
        assert not can_connect_as("nobody", sockets / ".s.PGSQL.5432")

    embedded.stop()
    started.remove(embedded)
    if length == "long":
        assert not sockets.exists()  # the directory made for the socket goes with it


@pytest.mark.skipif(not AS_ROOT, reason="only root runs the server as another user")
def test_as_root_a_data_directory_the_server_cannot_reach_is_refused_not_opened(
        open_tmp_path: Path) -> None:
    private = open_tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "harvester"
    with pytest.raises(EmbeddedDataDirError) as refused:
        EmbeddedPostgres(data_dir).start()
    assert str(refused.value).startswith(
        f"HARVESTER_DATA_DIR: harvester runs as root, so the embedded PostgreSQL runs as the "
        f"user pgserver, which may not enter {private} (mode 0700, owner root)")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700

    cli = subprocess.run(
        [sys.executable, "-m", "harvester", "migrate"], capture_output=True, text=True,
        timeout=60, check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(open_tmp_path),
             "HARVESTER_DATA_DIR": str(data_dir)})
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1
    assert cli.stderr.startswith("harvester: HARVESTER_DATA_DIR: harvester runs as root")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


@pytest.mark.parametrize(("mode", "group_of_user", "enters"), [
    (0o755, False, True), (0o711, False, True), (0o701, False, True), (0o750, False, False),
    (0o700, False, False), (0o710, True, True), (0o701, True, False)])
def test_a_directory_is_closed_to_a_user_by_its_mode_bits_as_the_kernel_reads_them(
        open_tmp_path: Path, mode: int, group_of_user: bool, enters: bool) -> None:
    user = pwd.getpwnam("nobody")
    target = open_tmp_path / "target"
    target.mkdir()
    if group_of_user:
        if not AS_ROOT:
            pytest.skip("giving a directory to another group needs root")
        os.chown(target, -1, user.pw_gid)
    target.chmod(mode)
    found = closed_to(target, user)
    assert (found is None) == enters
    if found is not None:
        assert found.directory == target
        owner = pwd.getpwuid(os.geteuid()).pw_name
        assert str(found) == f"{target} (mode {mode:04o}, owner {owner})"
    assert closed_to(target, pwd.getpwuid(0)) is None  # root enters anything
