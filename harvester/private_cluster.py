"""The embedded PostgreSQL kept private: pgserver's server, started so that no other user
of the machine can reach it (README "Security").

pgserver, the wheel that ships PostgreSQL, runs it with trust authentication on a Unix
socket only. Left to itself it puts that socket in a shared runtime directory under
the system's temporary directory when the data path is too long for a socket path,
and, run as root, makes that directory world-writable and widens every parent of the
data directory to 755: any local user then connects as superuser (issue 26). This
subclass keeps pgserver's lifecycle (initdb, attaching to a running server, the
reference-counted stop when the last process lets go) and replaces the two steps that
decide who may enter where:

- the socket lives in the data directory (0700, the server's own) or, when that path is
  too long for a socket, in a new 0700 directory under the temporary directory owned
  by the user the server runs as;
- nothing outside the data directory is chmodded. Run as root, pgserver runs postgres as
  the user ``pgserver``: every parent of the data directory (and of pgserver's programs)
  must already let that user through, or the start stops with one line naming the
  directory that does not (:class:`~harvester.errors.EmbeddedDataDirError`).

Imported only when the embedded PostgreSQL is used (the ``embedded`` extra).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pgserver._commands import POSTGRES_BIN_PATH
from pgserver.postgres_server import PostgresServer
from pgserver.utils import PostmasterInfo, ensure_folder_permissions

from harvester.errors import EmbeddedDatabaseError, EmbeddedDataDirError

SOCKET_NAME: Final = ".s.PGSQL.5432"
SOCKET_PATH_MAX: Final = 107
"""Bytes of a Unix socket path (``sun_path`` is 108 with its NUL on Linux)."""
SOCKET_DIR_PREFIX: Final = "harvester-pg-"
READY_WITHIN: Final = 60.0


@dataclass(frozen=True)
class Closed:
    """A directory the server's user may not enter, and why."""

    directory: Path
    mode: int
    owner: str

    def __str__(self) -> str:
        return f"{self.directory} (mode {stat.S_IMODE(self.mode):04o}, owner {self.owner})"


def closed_to(path: Path, account: pwd.struct_passwd) -> Closed | None:
    """The first directory from ``/`` down to ``path`` that ``account`` may not enter,
    judged by mode bits as the kernel would (owner, then group, then others)."""
    if account.pw_uid == 0:
        return None
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return Closed(directory, info.st_mode, _user_name(info.st_uid))
    return None


def socket_fits(directory: Path) -> bool:
    return len(os.fsencode(directory / SOCKET_NAME)) <= SOCKET_PATH_MAX


def private_socket_dir(pgdata: Path, account: pwd.struct_passwd | None) -> Path:
    """Where the server's socket goes: ``pgdata`` when the path fits, else a new 0700
    directory of the server's user under the temporary directory (``/tmp`` when
    ``TMPDIR`` is itself too long)."""
    if socket_fits(pgdata):
        return pgdata
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):  # noqa: S108 - mkdtemp, 0700
        if socket_fits(base / f"{SOCKET_DIR_PREFIX}{'x' * 12}"):
            directory = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX, dir=base))
            if account is not None:
                os.chown(directory, account.pw_uid, account.pw_gid)
            return directory
    raise EmbeddedDatabaseError(
        f"no directory short enough for the embedded PostgreSQL's socket: {pgdata} and "
        "the temporary directory are too long; use a shorter HARVESTER_DATA_DIR")


def make_private(directory: Path, account: pwd.struct_passwd | None) -> None:
    """Close a socket directory a running server was started with to everyone but its
    user (a server started before harvester kept its sockets private)."""
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    directory.chmod(0o700)


class PrivateServer(PostgresServer):
    """pgserver's server with harvester's rules for sockets and permissions."""

    def _account(self) -> pwd.struct_passwd | None:
        return None if self.system_user is None else pwd.getpwnam(self.system_user)

    def ensure_pgdata_inited(self) -> None:
        account = self._account()
        if account is None:
            # As the user harvester runs as: pgserver changes no permission itself.
            super().ensure_pgdata_inited()
            return
        for where, what in ((self.pgdata.parent, "HARVESTER_DATA_DIR"),
                            (POSTGRES_BIN_PATH, "the embedded PostgreSQL's programs")):
            closed = closed_to(where, account)
            if closed is not None:
                raise EmbeddedDataDirError(
                    f"{what}: harvester runs as root, so the embedded PostgreSQL runs as the "
                    f"user {account.pw_name}, which may not enter {closed}; harvester "
                    f"changes no permission outside its data directory: choose a data "
                    "directory whose every parent others may enter (the default for root "
                    "is /var/lib/harvester), run harvester as another user, or set "
                    "HARVESTER_DATABASE_URL")
        # pgserver's own programs, inside its own install, readable by the server's user.
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
        os.chown(self.pgdata, account.pw_uid, account.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            _run("initdb", ["--auth=trust", "--auth-local=trust", "--encoding=utf8",
                            "-U", self.postgres_user], self.pgdata, self.system_user)

    def ensure_postgres_running(self) -> None:
        account = self._account()
        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        if running is not None and running.is_running():
            if running.socket_dir is not None and Path(running.socket_dir) != self.pgdata:
                make_private(Path(running.socket_dir), account)
            self._postmaster_info = running
            return
        socket_dir = private_socket_dir(self.pgdata, account)
        _run("pg_ctl", ["-w", "-o", '-h ""', "-o", f"-k {shlex.quote(str(socket_dir))}",
                        "-l", str(self.log), "start"], self.pgdata, self.system_user)
        deadline = time.monotonic() + READY_WITHIN
        while True:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                self._postmaster_info = info
                return
            if time.monotonic() > deadline:
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {self.pgdata} did not become ready within "
                    f"{READY_WITHIN:g} s; see {self.log}")
            time.sleep(0.2)


def get_private_server(pgdata: Path) -> Any:
    """pgserver's ``get_server`` for :class:`PrivateServer`: one handle per data
    directory in this process, shared by every caller."""
    pgdata = pgdata.expanduser().resolve()
    if not pgdata.exists():
        pgdata.mkdir(mode=0o700)
    existing = PostgresServer._instances.get(pgdata)
    if existing is not None:
        return existing
    try:
        return PrivateServer(pgdata, cleanup_mode="stop")
    except BaseException:
        # pgserver registers the handle before starting it: a failed start must not
        # be what the next caller in this process is handed.
        PostgresServer._instances.pop(pgdata, None)
        raise


def remove_socket_dir(directory: Path | None) -> None:
    """Remove a socket directory :func:`private_socket_dir` made, once the server that
    used it has stopped (empty by then); anything else is left alone."""
    if directory is None or not directory.name.startswith(SOCKET_DIR_PREFIX):
        return
    with contextlib.suppress(OSError):
        directory.rmdir()


def _run(program: str, args: list[str], pgdata: Path, user: str | None) -> None:
    """One of pgserver's programs, as pgserver runs it: output to a file, never a pipe
    (the server pg_ctl starts would inherit the pipe and hold it open)."""
    with tempfile.TemporaryFile("w+") as output:
        try:
            subprocess.run([str(POSTGRES_BIN_PATH / program), "-D", str(pgdata), *args],  # noqa: S603 - fixed programs, argument list
                           user=user, check=True, timeout=60, stdin=subprocess.DEVNULL,
                           stdout=output, stderr=subprocess.STDOUT, text=True)
        except subprocess.CalledProcessError:
            output.seek(0)
            said = output.read().strip().splitlines()
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL's {program} failed in {pgdata}"
                + (f": {said[-1][:200]}" if said else "")) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

