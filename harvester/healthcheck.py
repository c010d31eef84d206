"""`harvester healthcheck`: ask the admin server of the daemon running beside it.

It is the image's HEALTHCHECK (and compose's), so it must ask where the daemon really
listens. The daemon's admin address can come from HARVESTER_ADMIN_HOST/PORT in the
environment, from a ``.env`` in the working directory, or from ``--admin-host`` /
``--admin-port`` on its command line. The check builds the same settings from the first
two, and takes the flags from the running ``harvester run`` itself: its command line is
in ``/proc`` (in a container, PID 1 or the child of an init; only processes of the same
user are considered). A wildcard address (``0.0.0.0``, ``::``) is asked on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from harvester.settings import Settings

PROC = Path("/proc")
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - compared, not bound


def run_arguments(argv: Sequence[str]) -> list[str] | None:
    """The ``run ...`` part of a ``harvester run`` command line, else None.

    The console script runs as ``python /opt/venv/bin/harvester run ...``; ``python -m
    harvester run ...`` is recognised too.
    """
    for index, word in enumerate(argv):
        if Path(word).name == "harvester":
            rest = list(argv[index + 1:])
        elif word == "-m" and argv[index + 1:index + 2] == ["harvester"]:
            rest = list(argv[index + 2:])
        else:
            continue
        return rest if rest[:1] == ["run"] else None
    return None


def find_daemon_argv(proc: Path = PROC, uid: int | None = None) -> list[str] | None:
    """The arguments of the lowest-numbered ``harvester run`` owned by ``uid``
    (default: this process's user), or None when there is none."""
    uid = os.getuid() if uid is None else uid
    own = os.getpid()
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids:
        if pid == own:
            continue
        try:
            if (proc / str(pid)).stat().st_uid != uid:
                continue
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found = run_arguments(raw.decode(errors="replace").split("\0")[:-1] if raw else [])
        if found is not None:
            return found
    return None


def probe_url(host: str, port: int, path: str) -> str:
    """The URL that reaches an admin server bound to ``host``:``port``."""
    host = WILDCARDS.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}{path}"


def cmd_healthcheck(settings: Settings, ready: bool, timeout: float, out: TextIO) -> int:
    """Exit status 0 when the admin server answers 2xx, 1 otherwise; one line of output
    either way (Docker keeps it in the container's health log)."""
    if settings.admin_port == 0:
        out.write("unhealthy: the admin port is 0 (chosen at random); set HARVESTER_ADMIN_PORT\n")
        return 1
    url = probe_url(settings.admin_host, settings.admin_port, "/readyz" if ready else "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        out.write(f"unhealthy: {url}: {exc}\n")
        return 1
    healthy = 200 <= status < 300
    out.write(f"{'healthy' if healthy else 'unhealthy'}: {url} answered {status}\n")
    return 0 if healthy else 1
