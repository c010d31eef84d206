"""Hostile neighbours on the admin port: 1,100 clients that connect and send a byte now
and then, against a daemon allowed 1,024 file descriptors (README "Security").

The daemon closes a connection that has not sent a whole request within seconds, caps
its open admin connections, and keeps answering ``/healthz``; whatever it sheds is
logged as a line a minute, not a line per connection. Before, the slow clients were
all kept: the daemon ran out of descriptors, asyncio logged every failed accept() with
a traceback (megabytes in seconds) and the probes failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import aiohttp

from harvester.admin_connections import MAX_CONNECTIONS
from tests.acceptance.conftest import MakeFleet, StartSimulator

DESCRIPTORS = 1024
SLOW_CLIENTS = 1100
ATTACK_SECONDS = 20.0
PROBE_EVERY = 0.25
ATTACKER_ADDRESS = "127.0.0.2"


def limit_descriptors() -> None:
    """Run in the daemon's child process before exec."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


async def test_slow_clients_never_hold_the_admin_port_nor_flood_the_log(
    db_url: str, simulators: StartSimulator, fleets: MakeFleet,
) -> None:
    sim = await simulators()
    fleet = fleets(db_url, sim.url)
    daemon = fleet.spawn(preexec_fn=limit_descriptors)
    await daemon.wait_ready()

    log_before = daemon.log_path.stat().st_size
    # The attack comes from another address of this machine, as it would from another
    # host; the probes from 127.0.0.1, as the kubelet's from the node.
    attackers = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.acceptance.slow_clients", str(daemon.admin_port),
        str(SLOW_CLIENTS), str(ATTACK_SECONDS + 2.0), ATTACKER_ADDRESS,
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    probes = answered = 0
    try:
        await asyncio.sleep(2.0)  # let the slow clients pile up first
        deadline = time.monotonic() + ATTACK_SECONDS
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while time.monotonic() < deadline:
                probes += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(daemon.admin_url + "/healthz",
                                           headers={"Connection": "close"}) as resp:
                        answered += resp.status == 200
                await asyncio.sleep(PROBE_EVERY)
        out, _ = await asyncio.wait_for(attackers.communicate(), timeout=30)
    finally:
        if attackers.returncode is None:
            attackers.kill()
            await attackers.wait()
    attack = json.loads(out)
    log_bytes = daemon.log_path.stat().st_size - log_before
    print(f"/healthz {answered}/{probes}; log {log_bytes} bytes; slow clients {attack}")

    assert answered >= 0.9 * probes, f"/healthz answered {answered} of {probes}"
    assert log_bytes < 16_384, f"{log_bytes} bytes of log during the attack"
    assert attack["shut_out"] >= SLOW_CLIENTS  # every slow client was shut out at least once
    listening = daemon.events("admin.listening")[-1]
    assert listening["max_connections"] == min(MAX_CONNECTIONS, DESCRIPTORS // 8)
    shed = daemon.events("admin.connection_shed")
    assert shed and shed[0]["level"] == "warning", daemon.raw_log()[-2000:]
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert await daemon.stop() == 0
    fleet.assert_healthy_logs()
