"""The admin server of a real daemon: /metrics, /healthz, /readyz and the 404s
(README "Probes and metrics").

The daemon is ``harvester run`` as a subprocess against a real PostgreSQL and the
simulated upstream. Metrics are read with prometheus-client's own parser, so the
exposition format is checked by the same code Prometheus users rely on, and every
counter is compared with what the database and the simulator saw.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from harvester import __version__
from harvester.tools.processes import free_port
from harvester.tools.simulator import Mix
from tests.helpers import (
    Daemon,
    SimulatedUpstream,
    enqueue,
    state_counts,
    wait_for_states,
)

# What README "Probes and metrics" says /metrics carries: family name -> type, labels.
REQUIRED_FAMILIES: dict[str, tuple[str, set[str]]] = {
    "harvester_requests": ("counter", {"status_class", "outcome"}),
    "harvester_polls": ("counter", set()),
    "harvester_landed": ("counter", set()),
    "harvester_failed": ("counter", {"reason"}),
    "harvester_stuck_open": ("gauge", set()),
    "harvester_oldest_stuck_age_seconds": ("gauge", set()),
    "harvester_queue_jobs": ("gauge", {"state"}),
    "harvester_due_jobs": ("gauge", set()),
    "harvester_oldest_due_age_seconds": ("gauge", set()),
    "harvester_claim_seconds": ("histogram", set()),
    "harvester_write_seconds": ("histogram", set()),
    "harvester_in_flight_requests": ("gauge", set()),
    "harvester_auth_circuit_open": ("gauge", set()),
    "harvester_paused_until_timestamp_seconds": ("gauge", set()),
}


class Scrape:
    """One parsed /metrics page."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """One series' value; 0 for a labelled series that has not been touched yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {dict(key)[label]: v for (n, key), v in self.samples.items()
                if n == name and v and label in dict(key)}


async def fetch(daemon: Daemon, path: str, method: str = "GET"
                ) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.request(
            method, daemon.admin_url + path) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def scrape(daemon: Daemon) -> Scrape:
    status, body, headers = await fetch(daemon, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(body)


async def scrape_until(daemon: Daemon, check: Callable[[Scrape], bool], what: str,
                       timeout: float = 30.0) -> Scrape:
    """Scrape until ``check`` holds; the queue gauges are cached for a few seconds."""
    deadline = time.monotonic() + timeout
    last = await scrape(daemon)
    while not check(last):
        if time.monotonic() > deadline:
            shown = sorted((n, sorted(k), v) for (n, k), v in last.samples.items()
                           if n.startswith("harvester_"))
            raise AssertionError(f"/metrics never showed {what}; last scrape: {shown}")
        daemon._fail_if_exited()
        await asyncio.sleep(0.2)
        last = await scrape(daemon)
    return last


async def ready_until(daemon: Daemon, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /readyz until it answers ``status`` (its answer is cached for 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        got, body, _ = await fetch(daemon, "/readyz")
        if got == status:
            document: dict[str, Any] = json.loads(body)
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {got} {body}, expected {status}")
        daemon._fail_if_exited()
        await asyncio.sleep(0.2)


async def test_metrics_carry_every_family_and_count_what_happened(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path, upstream: SimulatedUpstream
) -> None:
    plain = [uuid.uuid4() for _ in range(30)]
    forbidden, gone_upstream, stuck = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fault_then_row, html_then_row, racing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    upstream.script(
        {forbidden: ["403"], gone_upstream: ["404"], stuck: ["500"],
         fault_then_row: ["502", "200"], html_then_row: ["html", "200"], racing: ["404", "200"]},
        batch_status={gone_upstream: "failed"})
    later = [uuid.uuid4() for _ in range(4)]
    await pool.execute(
        "INSERT INTO harvester.jobs (job_id, next_poll_at) "
        "SELECT unnest($1::uuid[]), now() + interval '1 hour'", later)
    await enqueue(pool, [*plain, forbidden, gone_upstream, stuck, fault_then_row, html_then_row,
                         racing])
    landed = len(plain) + 3

    daemon = Daemon(db_url, upstream.url, tmp_path, env={"HARVESTER_STUCK_AFTER": "2"}).start()
    try:
        await daemon.wait_ready()
        await wait_for_states(pool, 60, landed=landed, failed=2, stuck=1, pending=len(later))
        # Counters move when the write commits; the queue gauges are the database's view.
        page = await scrape_until(
            daemon,
            lambda s: (s.value("harvester_landed_total") == landed
                       and s.value("harvester_queue_jobs", state="pending") == len(later)
                       and s.value("harvester_queue_jobs", state="stuck") == 1),
            "the settled queue")
        counts = await state_counts(pool)
        polls_in_db = await pool.fetchval("SELECT sum(polls) FROM harvester.jobs")
    finally:
        assert await daemon.stop() == 0

    for name, (kind, labels) in REQUIRED_FAMILIES.items():
        assert name in page.families, f"/metrics lacks {name}"
        family = page.families[name]
        assert family.type == kind, name
        for sample in family.samples:
            if sample.name in (name, f"{name}_total"):
                assert set(sample.labels) == labels, (name, sample.labels)

    # Counters against the database and the simulator.
    assert page.value("harvester_landed_total") == landed == counts["landed"]
    assert page.by_label("harvester_failed_total", "reason") == {
        "forbidden": 1, "upstream_failed": 1}
    # Every GET upstream saw is a poll of its job, or a control asking whose a 403 was
    # (README "How upstream answers are handled"), which is no poll of any job.
    checks = page.total("harvester_permission_checks_total")
    assert page.value("harvester_polls_total") == polls_in_db == upstream.state.requests - checks
    assert page.total("harvester_requests_total") == page.value("harvester_polls_total")
    assert page.value("harvester_requests_total", status_class="2xx", outcome="landed") == landed
    # The refused job: held twice (refused while others were answered), failed the third time.
    assert page.value("harvester_requests_total", status_class="4xx", outcome="held") == 2
    assert page.value("harvester_requests_total", status_class="4xx", outcome="failed") == 1
    # Upstream-failed jobs cost no GET; a 404 although batch-status said completed is one.
    assert upstream.requests_for(gone_upstream) == []
    assert page.value("harvester_requests_total", status_class="4xx", outcome="not_found") == 1
    # The outcome labels the alert rules select on are the ones the daemon emits.
    assert page.value("harvester_requests_total", status_class="5xx", outcome="fault") == 1
    assert page.value("harvester_requests_total", status_class="2xx", outcome="invalid") == 1
    assert page.value("harvester_requests_total", status_class="5xx", outcome="stuck") == 1
    assert page.value("harvester_stuck_transitions_total") == 1
    assert page.value("harvester_batch_status_requests_total", result="ok") >= 1

    # The database's view: 4 pending not yet due, 1 stuck waiting for its recheck.
    assert page.value("harvester_queue_jobs", state="pending") == len(later)
    assert page.value("harvester_queue_jobs", state="stuck") == 1
    assert page.value("harvester_stuck_open") == 1
    assert 0 < page.value("harvester_oldest_stuck_age_seconds") < 120
    assert page.value("harvester_due_jobs") == 0
    assert page.value("harvester_oldest_due_age_seconds") == 0
    assert page.value("harvester_queue_gauges_read_timestamp_seconds") > 0

    # Latency histograms saw every claim and write; nothing is in flight at rest.
    assert page.value("harvester_claim_seconds_count") >= 1
    assert page.value("harvester_write_seconds_count") >= 1
    assert page.value("harvester_claim_seconds_bucket", le="+Inf") == page.value(
        "harvester_claim_seconds_count")
    assert page.value("harvester_write_batch_size_sum") >= counts["landed"] + counts["failed"]
    assert page.value("harvester_in_flight_requests") == 0
    assert page.value("harvester_auth_circuit_open") == 0
    assert page.value("harvester_paused_until_timestamp_seconds") == 0
    assert page.value("harvester_build_info", version=__version__) == 1
    assert page.value("process_resident_memory_bytes") > 0


async def test_health_readiness_follows_the_auth_circuit_and_unknown_paths_are_json_404(
    db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sim = await SimulatedUpstream(Mix()).start()
    daemon = Daemon(db_url, sim.url, tmp_path).start()
    try:
        await daemon.wait_ready()
        status, body, _ = await fetch(daemon, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        ready = await ready_until(daemon, 200)
        assert ready == {"ready": True, "checks": {
            "database": True, "migrations_current": True, "auth_circuit_closed": True,
            "permission_circuit_closed": True, "base_url_plausible": True,
            "database_serving": True, "running": True}}

        for path in ("/nope", "/metrics/extra", "/v1", "/healthz/"):
            status, body, headers = await fetch(daemon, path)
            assert status == 404, path
            assert headers["Content-Type"].startswith("application/json"), path
            assert isinstance(json.loads(body)["error"], str), path
        status, body, _ = await fetch(daemon, "/healthz", method="POST")
        assert status == 405
        assert "error" in json.loads(body)

        # Upstream starts refusing the token: the circuit opens, readiness fails,
        # liveness does not (restarting would not fix a token).
        sim.simulator.apply_control({"unauthorized_for": 3600})
        jobs = [uuid.uuid4() for _ in range(5)]
        await enqueue(pool, jobs)
        await daemon.wait_for_event("auth.circuit_open", 30)
        not_ready = await ready_until(daemon, 503)
        assert not_ready["ready"] is False
        assert not_ready["checks"]["auth_circuit_closed"] is False
        assert not_ready["checks"]["database"] is True
        status, _, _ = await fetch(daemon, "/healthz")
        assert status == 200
        page = await scrape(daemon)
        assert page.value("harvester_auth_circuit_open") == 1
        # The 401 came to a result GET (held) or to a batch-status call (an error).
        assert (page.value("harvester_requests_total", status_class="4xx", outcome="held")
                + page.value("harvester_batch_status_requests_total", result="error")) >= 1
        assert page.value("harvester_landed_total") == 0
        assert page.value("harvester_queue_jobs", state="pending") == len(jobs)

        # The token is accepted again: the next probe closes the circuit.
        sim.simulator.apply_control({"unauthorized_for": 0})
        await daemon.wait_for_event("auth.circuit_closed", 30)
        ready = await ready_until(daemon, 200)
        assert ready["checks"]["auth_circuit_closed"] is True
        await wait_for_states(pool, 30, landed=len(jobs))
        page = await scrape_until(daemon, lambda s: s.value("harvester_landed_total") == len(jobs),
                                  "every job landed")
        assert page.value("harvester_auth_circuit_open") == 0
    finally:
        assert await daemon.stop() == 0
        await sim.stop()
    assert len(daemon.events("auth.circuit_open")) == 1
    assert len(daemon.events("auth.circuit_closed")) == 1
    assert await pool.fetchval("SELECT max(attempt) FROM harvester.jobs") == 0


async def test_probes_answer_while_the_database_is_away(tmp_path: Path) -> None:
    """Liveness must hold while the daemon waits for its database (or another replica's
    migration); readiness must not."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    daemon = Daemon(dead, "http://127.0.0.1:9", tmp_path).start()
    try:
        await daemon.wait_for_event("store.connect_failed", 30)
        assert (await daemon.get("/healthz"))[0] == 200
        status, body = await daemon.get("/readyz")
        assert status == 503
        assert body["checks"]["database"] is False
        status, body = await daemon.get("/v1/jobs/3f2504e0-4f89-11d3-9a0c-0305e82c3301")
        assert status == 503
        assert "not connected" in body["error"]
    finally:
        assert await daemon.stop() == 0
