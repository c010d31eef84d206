"""`harvester healthcheck` asks where the daemon beside it really listens (issue 16, item 4)."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from harvester import healthcheck
from harvester.cli import main
from harvester.healthcheck import cmd_healthcheck, find_daemon_argv, probe_url, run_arguments
from harvester.settings import load_settings


@pytest.mark.parametrize(("argv", "expected"), [
    (["/opt/venv/bin/python", "/opt/venv/bin/harvester", "run", "--admin-port", "9000"],
     ["run", "--admin-port", "9000"]),
    (["harvester", "run"], ["run"]),
    (["python3", "-m", "harvester", "run", "--no-migrate"], ["run", "--no-migrate"]),
    (["/opt/venv/bin/python", "/opt/venv/bin/harvester", "healthcheck"], None),
    (["/opt/venv/bin/python", "/opt/venv/bin/harvester", "simulate", "--port", "8900"], None),
    (["/opt/venv/bin/python", "/opt/venv/bin/harvester"], None),
    (["sh", "-c", "harvester run"], None),
    (["python3", "-m"], None),
    ([], None),
])
def test_run_arguments_recognise_the_daemon_and_nothing_else(
    argv: list[str], expected: list[str] | None,
) -> None:
    assert run_arguments(argv) == expected


def fake_proc(root: Path, processes: dict[int, list[str]]) -> Path:
    root.mkdir(exist_ok=True)
    for pid, argv in processes.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (root / "self").mkdir()  # not a PID: skipped
    (root / "1234567").mkdir()  # a process that exited meanwhile: no cmdline
    return root


def test_the_daemon_is_found_in_proc_even_behind_an_init(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", {
        1: ["/sbin/docker-init", "--", "/opt/venv/bin/harvester", "run", "--admin-port", "9000"],
        7: ["/opt/venv/bin/python", "/opt/venv/bin/harvester", "run", "--admin-port", "9000"],
        12: ["/opt/venv/bin/python", "/opt/venv/bin/harvester", "healthcheck"],
    })
    assert find_daemon_argv(proc) == ["run", "--admin-port", "9000"]
    assert find_daemon_argv(proc, uid=os.getuid() + 1) is None, "another user's process"
    alone = fake_proc(tmp_path / "alone", {3: ["sleep", "1"], 4: []})
    assert find_daemon_argv(alone) is None


@pytest.mark.parametrize(("host", "url"), [
    ("0.0.0.0", "http://127.0.0.1:8080/healthz"),
    ("", "http://127.0.0.1:8080/healthz"),
    ("::", "http://[::1]:8080/healthz"),
    ("127.0.0.1", "http://127.0.0.1:8080/healthz"),
    ("10.1.2.3", "http://10.1.2.3:8080/healthz"),
    ("fd00::7", "http://[fd00::7]:8080/healthz"),
    ("localhost", "http://localhost:8080/healthz"),
])
def test_the_probe_asks_the_bound_address_and_loopback_for_a_wildcard(host: str, url: str) -> None:
    assert probe_url(host, 8080, "/healthz") == url


async def admin_stub(ready: bool) -> TestServer:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_healthy_and_ready_are_two_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    server = await admin_stub(ready=False)
    port = server.port
    try:
        monkeypatch.setenv("HARVESTER_ADMIN_PORT", str(port))
        settings = load_settings(env_file=None)
        out = io.StringIO()
        assert await asyncio.to_thread(cmd_healthcheck, settings, False, 2.0, out) == 0
        assert await asyncio.to_thread(cmd_healthcheck, settings, True, 2.0, out) == 1
        assert out.getvalue().splitlines() == [
            f"healthy: http://127.0.0.1:{port}/healthz answered 200",
            f"unhealthy: http://127.0.0.1:{port}/readyz answered 503",
        ]
    finally:
        await server.close()
    out = io.StringIO()
    assert cmd_healthcheck(settings, False, 2.0, out) == 1, "nobody listens any more"
    assert out.getvalue().startswith(f"unhealthy: http://127.0.0.1:{port}/healthz: ")


def test_port_zero_cannot_be_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVESTER_ADMIN_PORT", "0")
    out = io.StringIO()
    assert cmd_healthcheck(load_settings(env_file=None), False, 1.0, out) == 1
    assert "HARVESTER_ADMIN_PORT" in out.getvalue()


async def test_the_daemons_own_flag_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """The defect: the port given to `run --admin-port` was invisible to the check."""
    monkeypatch.chdir(tmp_path)  # no developer's .env
    server = await admin_stub(ready=True)
    try:
        monkeypatch.setenv("HARVESTER_ADMIN_PORT", "1")  # what the environment says
        monkeypatch.setattr(healthcheck, "find_daemon_argv",
                            lambda: ["run", "--admin-port", str(server.port)])
        assert await asyncio.to_thread(main, ["healthcheck", "--ready"]) == 0
        assert f"127.0.0.1:{server.port}/readyz answered 200" in capsys.readouterr().out
        # ...and a flag given to the check itself beats both.
        assert await asyncio.to_thread(main, ["healthcheck", "--admin-port", "1"]) == 1
    finally:
        await server.close()


def test_without_a_daemon_the_environment_decides(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARVESTER_ADMIN_HOST", "0.0.0.0")
    monkeypatch.setenv("HARVESTER_ADMIN_PORT", "1")
    monkeypatch.setattr(healthcheck, "find_daemon_argv", lambda: None)
    assert main(["healthcheck", "--timeout", "1"]) == 1
    assert "http://127.0.0.1:1/healthz" in capsys.readouterr().out
