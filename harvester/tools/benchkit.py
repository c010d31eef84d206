"""The parts ``harvester bench`` and the scripts beside it are built of: the simulator
and the daemon as subprocesses, and the meters read around a phase (CPU per process,
how busy the machine was, how many requests the daemon kept in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harvester.tools.processes import free_port, wait_ready

BENCH_TOKEN = "bench-token"  # noqa: S105 - the simulator's fake token

@dataclass
class Phase:
    name: str
    jobs: int
    seconds: float
    rate: float
    peak_rss_mib: float | None = None
    lag_p50: float | None = None
    lag_p99: float | None = None
    note: str = ""
    cpu_us_per_job: dict[str, float] = field(default_factory=dict)
    """CPU time per job by process (Linux): where the time goes."""
    figures: dict[str, float | str] = field(default_factory=dict)
    """Phase-specific figures (requests per job, shares of a limit, …)."""


@dataclass
class Report:
    machine: dict[str, Any]
    concurrency: int
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        raw, daemon, backlog = self.phase("a"), self.phase("b"), self.phase("c")
        if raw and daemon and raw.rate:
            out["b/a"] = daemon.rate / raw.rate
        if daemon and backlog and daemon.rate:
            out["c/b"] = backlog.rate / daemon.rate
        if raw and daemon and raw.cpu_us_per_job.get("client") \
                and daemon.cpu_us_per_job.get("daemon"):
            # The daemon's CPU per job over the bare client's per request (README
            # "Performance": what harvester adds to each request).
            out["daemon/client CPU"] = (daemon.cpu_us_per_job["daemon"]
                                        / raw.cpu_us_per_job["client"])
        if daemon and daemon.cpu_us_per_job.get("simulator") \
                and daemon.cpu_us_per_job.get("daemon"):
            # The simulator does the same work per job in every run: over it, the daemon's
            # CPU is steady where the machine's speed is not (README "Performance").
            out["daemon/simulator CPU in b"] = (daemon.cpu_us_per_job["daemon"]
                                                / daemon.cpu_us_per_job["simulator"])
        return out


# ---------------------------------------------------------------- processes


@asynccontextmanager
async def simulator_process(mix: str, *sets: str, own_session: bool = False
                            ) -> AsyncIterator[tuple[str, int]]:
    """The simulator in a subprocess; yields its base URL and pid. ``own_session``: see
    :func:`daemon_process`."""
    args = [sys.executable, "-m", "harvester", "simulate", "--port", "0", "--mix", mix,
            "--token", BENCH_TOKEN, "--log-level", "warning",
            *[a for s in sets for a in ("--set", s)]]
    if mix != "demo":
        args.append("--no-record")
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE,
                                                start_new_session=own_session)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        if not line.startswith("HARVESTER_API_BASE_URL="):
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.split("=", 1)[1], proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await proc.wait()


class CpuMeter:
    """CPU seconds used by the processes of a phase, read from /proc (Linux only).

    ``postmaster``: the PostgreSQL server's, when it runs on this machine: its CPU is
    the postmaster's, its live children's and the children it reaped. Without it every
    process named ``postgres`` counts (any other server on the machine too)."""

    def __init__(self, roles: dict[str, int], postmaster: int | None = None) -> None:
        self.roles = roles
        self.postmaster = postmaster
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._read()

    @staticmethod
    def _stat(pid: int) -> list[str] | None:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    def _cpu(self, pid: int, *, reaped: bool = False) -> float:
        fields = self._stat(pid)
        if fields is None:
            return 0.0
        used = int(fields[11]) + int(fields[12])
        if reaped:
            used += int(fields[13]) + int(fields[14])
        return used / self._tick

    def _postgres(self) -> float:
        if self.postmaster is not None:
            total = self._cpu(self.postmaster, reaped=True)
            parent = str(self.postmaster)
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and (fields := self._stat(int(entry.name))) is not None \
                        and fields[1] == parent:
                    total += (int(fields[11]) + int(fields[12])) / self._tick
            return total
        total = 0.0
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if entry.name.isdigit():
                try:
                    if (entry / "comm").read_text().strip() == "postgres":
                        total += self._cpu(int(entry.name))
                except OSError:
                    continue
        return total

    def _read(self) -> dict[str, float]:
        readings = {role: self._cpu(pid) for role, pid in self.roles.items()}
        readings["postgres"] = self._postgres()
        return readings

    def per_job(self, jobs: int) -> dict[str, float]:
        if not Path("/proc/self/stat").exists() or jobs <= 0:
            return {}
        end = self._read()
        return {role: (end[role] - self._start.get(role, 0.0)) / jobs * 1e6 for role in end}


def postmaster_of(backend: int) -> int | None:
    """The pid of a backend's postmaster when that server runs on this machine (else None)."""
    fields = CpuMeter._stat(backend)
    if fields is None:
        return None
    parent = int(fields[1])
    try:
        comm = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return None
    return parent if comm in ("postgres", "postmaster") else None


@dataclass(frozen=True)
class Running:
    pid: int
    admin_url: str

    async def counter(self, session: aiohttp.ClientSession, *names: str) -> float:
        """The sum of every sample of these counters in the daemon's /metrics."""
        async with session.get(self.admin_url + "/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                total += float(line.rsplit(" ", 1)[1])
        return total


@asynccontextmanager
async def daemon_process(dsn: str, api_url: str, concurrency: int, *, own_session: bool = False
                         ) -> AsyncIterator[Running]:
    """``harvester run`` in a subprocess, ready to work.

    ``own_session`` starts it in a session of its own, as PostgreSQL starts each backend:
    where the kernel groups processes by session for scheduling (autogroup), a machine
    busy with other work then shares the cores between it and the backends as between
    equals, instead of between all of this process tree and each backend."""
    admin_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(Path.home())),
        "HARVESTER_DATABASE_URL": dsn, "HARVESTER_API_BASE_URL": api_url,
        "HARVESTER_API_TOKEN": BENCH_TOKEN, "HARVESTER_CONCURRENCY": str(concurrency),
        "HARVESTER_ADMIN_PORT": str(admin_port), "HARVESTER_LOG_LEVEL": "warning",
        "HARVESTER_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "run", "--no-migrate", env=env,
        stdout=subprocess.DEVNULL, start_new_session=own_session)
    try:
        await wait_ready(f"http://127.0.0.1:{admin_port}/readyz", proc)
        yield Running(proc.pid, f"http://127.0.0.1:{admin_port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        await proc.wait()




def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class BusyMeter:
    """How many of the machine's CPUs were busy over a phase, from /proc/stat (Linux;
    everything on the machine counts, the other sessions' work included)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def busy_cpus(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        share = (end[0] - self._start[0]) / (end[1] - self._start[1])
        return share * (os.cpu_count() or 1)


class InFlightSampler:
    """The daemon's ``harvester_in_flight_requests`` read from its /metrics every
    ``every`` s while a phase runs: the mean is how full it kept its concurrency. (Each
    read renders the whole page, ~1 ms of the daemon's CPU: at 0.1 s that was 2 % of
    what phase b measures.)"""

    def __init__(self, admin_url: str, every: float = 0.25) -> None:
        self.url = admin_url + "/metrics"
        self.every = every
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> InFlightSampler:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                with contextlib.suppress(aiohttp.ClientError, ValueError, IndexError):
                    async with session.get(self.url) as resp:
                        text = await resp.text()
                    for line in text.splitlines():
                        if line.startswith("harvester_in_flight_requests "):
                            self.samples.append(float(line.rsplit(" ", 1)[1]))
                await asyncio.sleep(max(0.0, self.every - (time.monotonic() - started)))

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None
