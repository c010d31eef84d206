"""A token revoked mid-run pauses the daemon without failing a job; and neither the API
token nor the admin token ever shows: not in a log line, an error, a metric, a readiness
body, a job's record, the database, or a repr.

The tokens are distinctive strings, and the scan also looks for a fragment of each, so
that a half-masked token (``hv-api-Q7x9…``) counts as a leak too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from harvester.admin import Admin
from harvester.errors import ConfigError
from harvester.metrics import Metrics
from harvester.settings import load_settings
from harvester.tools.simulator import Mix
from harvester.upstream import Upstream
from tests.acceptance.conftest import MakeFleet, StartSimulator
from tests.acceptance.harness import audit, new_ids, wait_landed
from tests.helpers import Daemon, enqueue, wait_for_states
from tests.integration.test_observability import ready_until

API_TOKEN = "hv-api-Q7x9K2mZ4pLsT6"
ADMIN_TOKEN = "hv-admin-W3n8R5tY1vBcJ0"
ROTATED = "hv-rotated-upstream-side-only"
SECRETS = (API_TOKEN, ADMIN_TOKEN, API_TOKEN[7:15], ADMIN_TOKEN[9:17])
JOBS = 600


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def admin_call(daemon: Daemon, method: str, path: str, token: str | None = ADMIN_TOKEN,
                     **kwargs: object) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(
            method, daemon.admin_url + path, headers=headers, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.text()


async def test_a_revoked_token_pauses_without_failing_and_no_token_ever_shows(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    sim = await simulators(Mix(pending_min=1, pending_max=5, retry_after=1.0, seed=51),
                           token=API_TOKEN)
    ids = new_ids(JOBS)
    await enqueue(pool, ids)
    fleet = fleets(db_url, sim.url, {"HARVESTER_LOG_LEVEL": "debug",
                                     "HARVESTER_ADMIN_TOKEN": ADMIN_TOKEN})
    daemon = fleet.spawn(token=API_TOKEN)
    captured: list[str] = []

    async def capture(method: str, path: str, token: str | None = ADMIN_TOKEN,
                      **kwargs: object) -> tuple[int, str]:
        status, text = await admin_call(daemon, method, path, token, **kwargs)
        captured.append(f"{method} {path} -> {status}: {text}")
        return status, text

    async def capture_all(job: uuid.UUID) -> None:
        for path in ("/metrics", "/readyz", "/healthz", f"/v1/jobs/{job}"):
            await capture("GET", path)

    await daemon.wait_ready()
    await wait_landed(db_url, 50, 60, fleet=fleet)
    landed = await pool.fetchval("SELECT job_id FROM harvester.jobs WHERE state = 'landed' "
                                 "LIMIT 1")
    await capture_all(landed)

    # Upstream stops accepting the daemon's token (revoked, rotated on the other side).
    sim.simulator.set_token(ROTATED)
    await daemon.wait_for_event("auth.circuit_open", 15)
    refused_when_opened = sim.state.statuses[401]
    not_ready = await ready_until(daemon, 503)
    assert not_ready["checks"]["auth_circuit_closed"] is False
    pending = await pool.fetchval("SELECT job_id FROM harvester.jobs WHERE state = 'pending' "
                                  "LIMIT 1")
    await capture_all(pending)
    # Feeding still works while paused; a wrong admin token is refused without an echo.
    fed = new_ids(20)
    status, _ = await capture("POST", "/v1/jobs", json={"jobIds": [str(j) for j in fed]})
    assert status == 200
    for wrong in (API_TOKEN, ADMIN_TOKEN + "x", "nope"):
        status, _ = await capture("POST", "/v1/jobs", token=wrong, json={"jobIds": []})
        assert status == 401
        status, _ = await capture("GET", f"/v1/jobs/{pending}", token=wrong)
        assert status == 401
    await asyncio.sleep(2.0)  # a few probes, all refused
    during = await audit(pool)
    unauthorized = sim.state.statuses[401]

    # The token is accepted again: the next probe closes the circuit, all land.
    sim.simulator.set_token(API_TOKEN)
    await daemon.wait_for_event("auth.circuit_closed", 15)
    await wait_for_states(pool, 90, landed=JOBS + len(fed))
    await ready_until(daemon, 200)
    await capture_all(pending)
    assert await fleet.stop(daemon) == 0

    assert during.states["failed"] == during.lost == 0  # paused, not failed
    # While open, one probe every 0.5 s: a handful of 401s in 2 s and more, not a storm.
    assert unauthorized - refused_when_opened < 20
    assert await pool.fetchval("SELECT count(*) FROM harvester.jobs WHERE state <> 'landed'") == 0
    assert await pool.fetchval("SELECT max(attempt) FROM harvester.jobs") == 0
    assert len(daemon.events("auth.circuit_open")) == len(daemon.events("auth.circuit_closed")) == 1
    fleet.assert_healthy_logs()

    # The scan: every byte the daemon wrote or served, and everything it stored.
    assert leaks(daemon.raw_log()) == []
    for text in captured:
        assert leaks(text) == [], text[:300]
    tables = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'harvester'")
    for table in tables:
        name = table["table_name"]
        dump = await pool.fetchval(
            f"SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM harvester.{name} t")
        assert leaks(dump) == [], name
    errors = await pool.fetchval(
        "SELECT count(*) FROM harvester.jobs WHERE last_error IS NOT NULL OR polls > 0")
    assert errors > 0  # the columns scanned were not empty


def test_no_token_shows_in_a_repr_or_a_configuration_error(tmp_path: Path) -> None:
    settings = load_settings({"api_token": API_TOKEN, "admin_token": ADMIN_TOKEN,
                              "api_base_url": "http://127.0.0.1:9"}, env_file=None)
    shown = [repr(settings), str(settings), settings.model_dump_json(),
             repr(settings.model_dump()), repr(Upstream(settings)),
             repr(Admin(settings, None, Metrics()))]
    for text in shown:
        assert leaks(text) == [], text

    for bad in ({"api_token": f"{API_TOKEN} with a space"},
                {"admin_token": f"{ADMIN_TOKEN}\x00"},
                {"api_token": API_TOKEN, "admin_token": ADMIN_TOKEN, "concurrency": -1}):
        with pytest.raises(ConfigError) as refused:
            load_settings(bad, env_file=None)
        assert leaks(str(refused.value)) == [], refused.value

    # The same refusals from the command line: one line on stderr, no token, no traceback.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "HARVESTER_API_BASE_URL": "http://127.0.0.1:9",
           "HARVESTER_DATABASE_URL": "postgresql://harvester:pw-Zq81@127.0.0.1:9/none",
           "HARVESTER_API_TOKEN": f"{API_TOKEN} spaced", "HARVESTER_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.run([sys.executable, "-m", "harvester", "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "HARVESTER_API_TOKEN" in proc.stderr
    assert leaks(proc.stderr + proc.stdout) == [] and "pw-Zq81" not in proc.stderr


async def test_a_daemon_listening_off_loopback_without_a_token_refuses_job_reads(
    db_url: str, pool: asyncpg.Pool, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    """The shipped ConfigMap binds the admin server to 0.0.0.0 and the Secret example has
    no admin token: GET /v1/jobs/{id} used to return the job and its mirror row to
    anyone who could reach the pod. The probes and /metrics stay open."""
    sim = await simulators(Mix())
    ids = new_ids(5)
    await enqueue(pool, ids)
    fleet = fleets(db_url, sim.url, {"HARVESTER_ADMIN_HOST": "0.0.0.0"})
    daemon = fleet.spawn()
    await daemon.wait_ready()
    await wait_for_states(pool, 30, landed=len(ids))
    listening = await daemon.wait_for_event("admin.listening")
    assert listening["job_reads"].startswith("refused (403)")
    status, text = await admin_call(daemon, "GET", f"/v1/jobs/{ids[0]}", token=None)
    assert status == 403
    assert "HARVESTER_ADMIN_TOKEN" in text
    assert str(ids[0]) not in text and "normalized" not in text
    status, _ = await admin_call(daemon, "GET", f"/v1/jobs/{ids[0]}", token="guess")
    assert status == 403
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _ = await admin_call(daemon, "GET", path, token=None)
        assert status == 200, path
    assert await fleet.stop(daemon) == 0
