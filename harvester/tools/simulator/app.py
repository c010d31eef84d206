"""The simulated upstream served: the justcrawl API's paths, statuses, headers and
bodies over aiohttp, and its control API (``/_sim/...``).

Each request is answered from the job's plan (:mod:`.plans`) and the simulator's state
(:mod:`.state`), the answer looked up by the step's kind (:mod:`.answers`). Jobs can
live a timeline, as jobs fed when their crawl starts do: from the first time the
simulator hears of a job it runs for a drawn time (404, and ``running`` in
batch-status), then indexes (202 + Retry-After, ``extraction_done``), then has its row
(``completed``); batch-status answers from the same timeline. A gateway limit (a token
bucket over every request, 429 + Retry-After beyond it) can sit in front, and windows of
401 (a revoked token), 429 and outage can be opened while it runs. Its clock can be set
apart from the machine's (``clock_skew``): the Date header and every HTTP-date it sends
are then on that clock, as a real upstream's would be, while its own bookkeeping stays
on the machine's. It records what it served and checks the client's manners as it goes:
polls earlier than the Retry-After it gave, two requests in flight for one job at once,
requests sent while it had just asked for a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aiohttp import web

from harvester.api import BATCH_STATUS_LIMIT, BATCH_STATUS_PATH, RESULTS_PREFIX
from harvester.tools.simulator.answers import (
    EARLY_TOLERANCE,
    FIXED,
    FORBIDDEN,
    INDEXING_BODY,
    NOT_FOUND,
    OUTAGE_BODY,
    PAUSES,
    RATE_LIMITED,
    ROWS,
    STATUS_OUTAGE_BODY,
    STREAMED,
    UNAUTHORIZED,
    WAITS,
    Answer,
    named_moment,
    pause_header,
    retry_after,
    simulated,
)
from harvester.tools.simulator.plans import PAUSE_STYLES, SIM_TOKEN, Mix, Plan, Step
from harvester.tools.simulator.state import Gateway, JobRecord, Served, SimulatorState


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _reply(answer: Answer, headers: dict[str, str] | None = None) -> web.Response:
    """An :class:`Answer` as aiohttp's response."""
    if answer.text is None:
        return _json(answer.data, answer.status, headers)
    return web.Response(text=answer.text, status=answer.status, headers=headers,
                        content_type=answer.content_type)


class Simulator:
    """The aiohttp application and its state."""

    def __init__(self, mix: Mix, token: str | None = SIM_TOKEN, record: bool = True,
                 default_retry_after: float = 5.0) -> None:
        self.state = SimulatorState(mix=mix, token=token, record=record)
        self.default_retry_after = default_retry_after
        self._auth_header = f"Bearer {token}" if token else None
        self.skew = mix.clock_skew
        """Upstream's clock minus the machine's (Mix ``clock_skew``)."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        if self.skew:
            app.on_response_prepare.append(self._date_header)
        app.router.add_get(RESULTS_PREFIX + "{job_id}", self.result)
        app.router.add_post(BATCH_STATUS_PATH, self.batch_status)
        app.router.add_get("/_sim/stats", self.stats)
        app.router.add_get("/_sim/log", self.served_log)
        app.router.add_get("/_sim/ready", self.ready_times)
        app.router.add_post("/_sim/script", self.script)
        app.router.add_post("/_sim/control", self.control)
        app.router.add_get("/", self.dashboard)
        return app

    async def _date_header(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's Date on upstream's clock (aiohttp adds the machine's otherwise)."""
        response.headers["Date"] = email.utils.formatdate(time.time() + self.skew, usegmt=True)

    # ------------------------------------------------------------ control

    def set_token(self, token: str | None) -> None:
        self.state.token = token
        self._auth_header = f"Bearer {token}" if token else None

    def apply_control(self, document: dict[str, Any]) -> None:
        now = time.monotonic()
        if "token" in document:
            self.set_token(document["token"])
        if "unauthorized_for" in document:
            self.state.unauthorized_until = now + float(document["unauthorized_for"])
        if "forbidden_for" in document:
            self.state.forbidden_until = now + float(document["forbidden_for"])
        if "status_outage_for" in document:
            self.state.status_outage_until = now + float(document["status_outage_for"])
            self.state.status_outage_status = int(document.get("status", 500))
        if "rate_limit_for" in document:
            self.state.rate_limited_until = now + float(document["rate_limit_for"])
            self.state.rate_limit_retry_after = float(document.get("retry_after", 1.0))
            style = document.get("retry_after_style", self.state.mix.rate_retry_after_style)
            self.state.rate_limit_style = style if style in PAUSE_STYLES else "header"
        if "outage_for" in document:
            self.state.outage_until = now + float(document["outage_for"])
            self.state.outage_status = int(document.get("status", 502))
        if "record" in document:
            self.state.record = bool(document["record"])
        if "rate_limit" in document:
            # The gateway limit changes (0 removes it); a fresh bucket at the new rate.
            rate = float(document["rate_limit"])
            burst = float(document.get("rate_burst", self.state.mix.rate_burst))
            self.state.gateway = Gateway(rate, burst) if rate > 0 else None

    def apply_script(self, document: dict[str, Any]) -> None:
        """Jobs scripted step by step: ``jobs`` {id: [result steps]}, and optionally
        ``batch_status`` {id: status or null}, ``status`` {id: [one status per batch-status
        call]}, ``run`` / ``index`` {id: seconds of running / indexing}."""
        single = document.get("batch_status", {})
        sequences = document.get("status", {})
        runs, indexes = document.get("run", {}), document.get("index", {})
        for raw_id, steps in document.get("jobs", {}).items():
            job_id = UUID(raw_id)
            sequence = sequences.get(raw_id)
            self.state.scripts[job_id] = Plan(
                [Step.parse(s) for s in steps],
                batch_status=single.get(raw_id, "completed"), fate="scripted",
                run=float(runs.get(raw_id, 0.0)), index=float(indexes.get(raw_id, 0.0)),
                statuses=list(sequence) if sequence is not None else None)

    async def control(self, request: web.Request) -> web.Response:
        self.apply_control(await request.json())
        return _json({"ok": True}, 200)

    async def script(self, request: web.Request) -> web.Response:
        self.apply_script(await request.json())
        return _json({"ok": True}, 200)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.state.stats(), 200)

    async def ready_times(self, request: web.Request) -> web.Response:
        """{job_id: wall-clock time upstream first had its row} for jobs whose row was
        served: the end of the job's timeline, or when the last 202 allowed the poll."""
        ready: dict[str, float] = {}
        for job_id, record in self.state.jobs.items():
            if not record.served_rows:
                continue
            plan = self.state.plan(job_id)
            if plan.run + plan.index > 0:
                ready[str(job_id)] = record.first_seen_wall + plan.run + plan.index
            elif record.ready_wall is not None:
                ready[str(job_id)] = self._effective_ready(record.ready_wall)
        return _json(ready, 200)

    def _effective_ready(self, ready: float) -> float:
        """A job ready during a global pause could only be polled once the pause ended."""
        for start, end in self.state.pauses:
            if start <= ready < end:
                ready = end
        return ready

    async def served_log(self, request: web.Request) -> web.Response:
        return _json([asdict(s) for s in self.state.log], 200)

    async def dashboard(self, request: web.Request) -> web.Response:
        # The old dashboard host answers unknown paths with its web page: so do we.
        return web.Response(text="<!doctype html><html><body>justcrawl dashboard</body></html>",
                            content_type="text/html")

    # ------------------------------------------------------------ API

    def _authorized(self, request: web.Request) -> bool:
        if time.monotonic() < self.state.unauthorized_until:
            return False
        return self._auth_header is None or request.headers.get("Authorization") == self._auth_header

    async def result(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        started = time.monotonic()
        state.requests += 1
        try:
            job_id = UUID(request.match_info["job_id"])
        except ValueError:
            state.statuses[400] += 1
            return _json({"error": "invalid job id"}, 400)
        record = state.record_for(job_id)
        if record.in_flight:
            state.overlaps += 1
        if started + EARLY_TOLERANCE < record.not_before:
            state.early_polls += 1
            if len(state.early_examples) < 50:
                state.early_examples.append({"job_id": str(job_id),
                                             "early_by": round(record.not_before - started, 3)})
        record.in_flight += 1
        status, kind, announced, named = 0, "", None, None
        try:
            if state.mix.latency:
                await asyncio.sleep(state.mix.latency)
            response, kind, announced = await self._answer(request, job_id, record)
            status = response.status
            named = named_moment(response.headers.get("Retry-After"), self.skew)
            return response
        finally:
            record.in_flight -= 1
            finished = time.monotonic()
            if announced is not None and named is not None:
                # An HTTP-date names a moment, not a wait: a client may come back at that
                # second however long this answer took to leave (both clocks read here).
                announced = named - time.time()
            if announced is not None:
                record.not_before = finished + announced
                if kind in ("429", "503"):
                    self._announce_pause(announced)
                if kind == "202":
                    record.ready_wall = time.time() + announced
            elif kind != "200":
                # Any other answer in between (a fault, a 429) restarts the clock: the
                # landing lag measures how closely a client follows a 202's Retry-After.
                record.ready_wall = None
            record.last_status = status or None
            state.statuses[status] += 1
            if state.record:
                state.log.append(Served(str(job_id), started, finished, status, kind, announced,
                                        status != 401))

    def _announce_pause(self, seconds: float) -> None:
        wall = time.time()
        self.state.pauses.append((wall, wall + seconds))
        self.state.pause_until = max(self.state.pause_until, time.monotonic() + seconds)

    def _limited(self, now: float) -> tuple[web.Response, float] | None:
        """The gateway's (or a 429 window's) answer, if this request is refused."""
        state = self.state
        if now < state.pause_until:
            state.during_pause += 1
        if now < state.rate_limited_until:
            wait, style = float(math.ceil(state.rate_limit_retry_after)), state.rate_limit_style
        elif state.gateway is not None and not state.gateway.admit(now):
            state.rate_limited += 1
            wait, style = float(math.ceil(state.mix.rate_retry_after)), state.mix.rate_retry_after_style
        else:
            return None
        state.answered_429 += 1
        headers, exact = pause_header(wait, style, self.skew)
        return _json(RATE_LIMITED.data, RATE_LIMITED.status, headers), exact

    async def _answer(self, request: web.Request, job_id: UUID, record: JobRecord
                      ) -> tuple[web.StreamResponse, str, float | None]:
        state = self.state
        now = time.monotonic()
        if not self._authorized(request):
            return _reply(UNAUTHORIZED), "401", None
        if now < state.forbidden_until:
            return _reply(FORBIDDEN), "403", None
        limited = self._limited(now)
        if limited is not None:
            return limited[0], "429", limited[1]
        if now < state.outage_until:
            return _json(OUTAGE_BODY, state.outage_status), "outage", None

        plan = state.plan(job_id)
        phase = state.phase(plan, record, now)
        if phase == "running":
            return _reply(NOT_FOUND), "404", None
        if phase == "indexing":
            seconds = state.mix.retry_after
            headers, wait = retry_after(seconds, "header", self.default_retry_after, self.skew)
            return _json({**INDEXING_BODY, "retryAfterSeconds": seconds}, 202,
                         headers), "202", wait
        if record.polls and record.last_status == 202 and now + EARLY_TOLERANCE < record.not_before:
            # Back before the Retry-After it was given: still indexing, as a real upstream
            # would be, so a 202 again, naming the same moment (an early poll costs a
            # request, not a step).
            last = plan.steps[min(record.polls - 1, len(plan.steps) - 1)]
            step = replace(last, retry_after=record.not_before - now)
        else:
            step = plan.steps[min(record.polls, len(plan.steps) - 1)]
            record.polls += 1
        response, announced = await self._step(request, job_id, record, step)
        return response, step.kind, announced

    async def _step(self, request: web.Request, job_id: UUID, record: JobRecord, step: Step
                    ) -> tuple[web.StreamResponse, float | None]:
        """A plan step's answer, looked up by its kind (:mod:`.answers`)."""
        kind, seed = step.kind, self.state.mix.seed
        row = ROWS.get(kind)
        if row is not None:
            if kind == "200":
                record.served_rows += 1
            elif kind == "slow":
                await asyncio.sleep(step.retry_after or 3.0)
            return _json(row(job_id, seed), 200), None
        if kind in WAITS:
            seconds = step.retry_after if step.retry_after is not None else self.state.mix.retry_after
            body: dict[str, Any] = dict(INDEXING_BODY)
            if step.style in ("header", "date", "body"):
                body["retryAfterSeconds"] = seconds
            headers, wait = retry_after(seconds, step.style, self.default_retry_after, self.skew)
            return _json(body, 202, headers), wait
        if kind in PAUSES and step.retry_after is not None:
            headers, wait = pause_header(step.retry_after, step.style, self.skew)
            return _json({"error": "slow down"}, int(kind), headers), wait
        if kind in STREAMED:
            return await self._streamed(request, kind), None
        return _reply(FIXED.get(kind) or simulated(kind)), None

    async def _streamed(self, request: web.Request, kind: str) -> web.StreamResponse:
        """A body cut short, a reset connection, or 50 MB of blanks."""
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=599)
        if kind == "truncated":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"id": "' + b"x" * 100)
            if request.transport is not None:
                request.transport.close()
            return resp
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * 65536
        sent = 0
        with contextlib.suppress(ConnectionError, RuntimeError):
            while sent < self.state.mix.huge_bytes:
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        return resp

    async def batch_status(self, request: web.Request) -> web.Response:
        """POST batch-status; recorded in the log under job ``batch-status``."""
        started = time.monotonic()
        response = await self._batch_status(request, started)
        if self.state.record:
            announced = self.state.pause_until - started if response.status == 429 else None
            self.state.log.append(Served("batch-status", started, time.monotonic(),
                                         response.status, "status", announced,
                                         response.status != 401))
        return response

    async def _batch_status(self, request: web.Request, now: float) -> web.Response:
        state = self.state
        state.batch_requests += 1
        if not self._authorized(request):
            return _reply(UNAUTHORIZED)
        if now < state.forbidden_until:
            return _reply(FORBIDDEN)
        limited = self._limited(now)
        if limited is not None:
            self._announce_pause(limited[1])
            return limited[0]
        if now < state.outage_until:
            return _json(OUTAGE_BODY, state.outage_status)
        if now < state.status_outage_until:
            return _json(STATUS_OUTAGE_BODY, state.status_outage_status)
        try:
            document = await request.json()
            ids = [UUID(i) for i in document["jobIds"]]
        except (ValueError, KeyError, TypeError):
            return _json({"error": "body must be {\"jobIds\": [uuid, ...]}"}, 400)
        if len(ids) > BATCH_STATUS_LIMIT:
            return _json({"error": f"at most {BATCH_STATUS_LIMIT} jobIds"}, 400)
        state.batch_ids += len(ids)
        state.batch_sizes[max(0, len(ids) - 1) // 10] += 1
        updated_at = (datetime.now(UTC) + timedelta(seconds=self.skew)).isoformat()
        answer = []
        for job_id in ids:
            status = self._status_of(job_id, now)
            if status is None:
                continue
            answer.append({"id": str(job_id), "status": status, "currentNodeId": "extract",
                           "updatedAt": updated_at})
        return _json(answer, 200)

    def _status_of(self, job_id: UUID, now: float) -> str | None:
        """What batch-status says about a job right now (None: left out)."""
        state = self.state
        plan = state.plan(job_id)
        record = state.record_for(job_id)
        record.status_asks += 1
        if plan.statuses is not None:
            return plan.statuses[min(record.status_asks, len(plan.statuses)) - 1]
        phase = state.phase(plan, record, now)
        if phase == "running":
            return "running"
        if phase == "indexing":
            return "extraction_done"
        return plan.batch_status


async def serve(simulator: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the simulator; returns the runner and the bound port."""
    runner = web.AppRunner(simulator.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound
