"""The admin HTTP server inside ``harvester run``: probes, metrics, and the job API.

Small on purpose: aiohttp.web, JSON errors ``{"error": "..."}``, a body limit, bearer
auth compared in constant time. Write endpoints exist only when ``HARVESTER_ADMIN_TOKEN``
is set. Job reads need the token too when one is set, and always when the server
listens on a non-loopback address (README "Security"): the probes and /metrics stay
open for the kubelet and Prometheus. It holds no logic the engine needs: it reads the
store and the engine's state.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from harvester.admin_connections import SERVER_NAME, Connections, GuardedSite
from harvester.errors import ConfigError, StoreError
from harvester.feed import InvalidJobId, parse_job_id, shorten_for_display
from harvester.jobquery import DEFAULT_PAGE, LISTABLE_STATES, MAX_PAGE, BadJobQuery, JobQuery
from harvester.logs import get_logger
from harvester.metrics import CONTENT_TYPE, FAILED_REASONS, Metrics
from harvester.ports import OperatorPort, json_default
from harvester.settings import Settings, is_loopback_host

log = get_logger("harvester.admin")

BODY_LIMIT: Final = 1024 * 1024
MAX_IDS_PER_REQUEST: Final = 10_000
SHOWN_ERRORS: Final = 20
JOB_QUERY_MISTAKES: Final[dict[str, str]] = {
    "reason": f"reason must be one of {', '.join(FAILED_REASONS)} or http_<status>",
    "state": f"state must be one of {', '.join(LISTABLE_STATES)}",
    "reason_state": "reason applies to state=failed only",
    "limit": f"limit must be a whole number from 1 to {MAX_PAGE}",
    "after": 'after must be the cursor of a previous page (its "next")',
}
"""A job query's broken rule (:class:`~harvester.jobquery.BadJobQuery`) as the API says it."""
READY_CACHE: Final = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda o: json.dumps(o, default=json_default))


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as the sender wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "array" if isinstance(value, list) else "object"


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including aiohttp's own (404, 405, 413) and our bugs, as JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "not found", 405: "method not allowed",
                   413: f"request body larger than {BODY_LIMIT} bytes"}.get(exc.status, exc.reason)
        response = error(exc.status, message)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("admin.handler_failed", path=request.path, method=request.method)
        return error(500, "internal error (logged as admin.handler_failed)")


async def response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No version in ``Server``; nothing of the job API kept by a cache (a browser's,
    a proxy's), errors included: job records are the data harvester guards."""
    response.headers["Server"] = SERVER_NAME
    if request.path.startswith("/v1/"):
        response.headers["Cache-Control"] = "no-store"


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port, brackets or final dot."""
    value = header.strip().lower()
    if value.startswith("["):
        value = value[1:value.find("]")] if "]" in value else value[1:]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.removesuffix(".")


def unauthorized() -> web.Response:
    response = error(401, "missing or wrong bearer token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="harvester"'
    return response


async def _starting() -> dict[str, bool]:
    return {"database": False, "running": False}


class Admin:
    """Routes and their dependencies."""

    def __init__(self, settings: Settings, store: OperatorPort | None, metrics: Metrics,
                 checks: Callable[[], Awaitable[dict[str, bool]]] | None = None,
                 connections: Connections | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.checks = checks or _starting
        token = settings.admin_token
        self._token = token.get_secret_value().encode() if token is not None else None
        self._ready_cache: tuple[float, dict[str, bool]] | None = None
        self._runner: web.AppRunner | None = None
        self.connections = connections or Connections()
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"Admin(host={self.settings.admin_host!r}, port={self.port})"

    def attach(self, store: OperatorPort, checks: Callable[[], Awaitable[dict[str, bool]]]) -> None:
        """The daemon starts the admin server before the database answers (so liveness
        holds while it waits); the store and the real readiness checks come later."""
        self.store = store
        self.checks = checks
        self._ready_cache = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=BODY_LIMIT,
                              middlewares=[self.connections.middleware, json_errors])
        app.on_response_prepare.append(response_headers)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_post("/v1/jobs", self.post_jobs)
        app.router.add_get("/v1/jobs", self.list_jobs)
        app.router.add_get("/v1/jobs/{job_id}", self.get_job)
        return app

    @property
    def reads_open(self) -> bool:
        """Job reads without a token only when nobody off this machine can ask."""
        return is_loopback_host(self.settings.admin_host)

    async def start(self) -> None:
        """Listen, or raise ConfigError naming the setting that makes it impossible."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        site = GuardedSite(self._runner, self.settings.admin_host, self.settings.admin_port,
                           self.connections)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(self._bind_problem(exc)) from None
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.settings.admin_port
        if self._token:
            reads = "token required"
        elif self.reads_open:
            reads = "open (loopback only)"
        else:
            reads = "refused (403): set HARVESTER_ADMIN_TOKEN, the server is not on loopback"
        log.info("admin.listening", host=self.settings.admin_host, port=self.port,
                 write_endpoints="enabled" if self._token else "disabled (no HARVESTER_ADMIN_TOKEN)",
                 job_reads=reads, max_connections=self.connections.cap,
                 request_within=self.connections.within)

    def _bind_problem(self, exc: OSError) -> str:
        host, port = self.settings.admin_host, self.settings.admin_port
        if isinstance(exc, socket.gaierror):
            return (f"HARVESTER_ADMIN_HOST: cannot resolve {host!r} "
                    f"({exc.strerror or exc}); use an address such as 127.0.0.1 or 0.0.0.0")
        if exc.errno == errno.EADDRINUSE:
            return (f"HARVESTER_ADMIN_PORT: {host}:{port} is already in use (another "
                    "harvester on this machine?); choose a free port")
        if exc.errno == errno.EADDRNOTAVAIL:
            return (f"HARVESTER_ADMIN_HOST: {host} is not an address of this machine; "
                    "use 127.0.0.1, 0.0.0.0 or one of its own addresses")
        if exc.errno == errno.EACCES:
            return (f"HARVESTER_ADMIN_PORT: not allowed to listen on {host}:{port} "
                    "(ports below 1024 need privileges); choose a port above 1024")
        return (f"HARVESTER_ADMIN_HOST/HARVESTER_ADMIN_PORT: cannot listen on {host}:{port}: "
                f"{exc.strerror or exc}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ probes

    async def healthz(self, request: web.Request) -> web.Response:
        """Answering at all proves the event loop is alive."""
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if self._ready_cache is None or now - self._ready_cache[0] > READY_CACHE:
            self._ready_cache = (now, await self.checks())
        checks = self._ready_cache[1]
        ready = all(checks.values())
        return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        if self.metrics.queue is not None:
            try:
                await asyncio.wait_for(self.metrics.queue.refresh(), timeout=3.0)
            except (StoreError, TimeoutError) as exc:
                log.debug("metrics.queue_gauges_stale", error=str(exc))
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------ jobs

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return False
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # aiohttp keeps undecodable header bytes as surrogates; encode them back as they
        # came so that any header compares (unequal) instead of failing.
        return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"),
                                   self._token)

    async def post_jobs(self, request: web.Request) -> web.Response:
        """Enqueue ``{"jobIds": [...]}``: all valid, or nothing enqueued and a 400 that
        lists the bad entries (the first ``SHOWN_ERRORS``) by index."""
        if self._token is None:
            return error(403, "write endpoints are disabled: set HARVESTER_ADMIN_TOKEN "
                              "to enable POST /v1/jobs")
        if not self._authorized(request):
            return unauthorized()
        raw = await request.read()
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # [[[[… is bad input too
            return error(400, 'body must be JSON: {"jobIds": ["<uuid>", ...]}')
        if not isinstance(document, dict) or not isinstance(document.get("jobIds"), list):
            return error(400, 'body must be a JSON object with a "jobIds" array')
        items: list[Any] = document["jobIds"]
        if len(items) > MAX_IDS_PER_REQUEST:
            return error(400, f"at most {MAX_IDS_PER_REQUEST} job IDs per request "
                              f"(got {len(items)}); split the batch")
        valid: list[UUID] = []
        invalid: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if not isinstance(item, str):
                invalid.append({"index": index,
                                "value": shorten_for_display(json.dumps(item), quote=False),
                                "reason": f"not a string ({_json_type(item)})"})
                continue
            try:
                valid.append(parse_job_id(item))
            except InvalidJobId as exc:
                invalid.append({"index": index, "value": shorten_for_display(item, quote=False),
                                "reason": str(exc)})
        if invalid:
            return error(400, f"{len(invalid)} invalid job ID(s); nothing was enqueued",
                         invalid=invalid[:SHOWN_ERRORS], invalid_count=len(invalid))
        unique = list(dict.fromkeys(valid))
        if self.store is None:
            return error(503, "starting: the database is not connected yet; try again")
        try:
            new = await self.store.enqueue(unique)
        except StoreError as exc:
            log.warning("admin.enqueue_failed", error=str(exc))
            return error(503, "database unavailable; nothing was enqueued, try again")
        log.info("admin.enqueued", new=new, known=len(valid) - new, received=len(items))
        # Same meaning as `harvester enqueue --json`: known = valid IDs that created no
        # job (already queued, or repeated in this request).
        return json_response({"new": new, "known": len(valid) - new, "invalid": 0,
                              "duplicates_in_request": len(valid) - len(unique)})

    def refuse_read(self, request: web.Request) -> web.Response | None:
        """None when ``request`` may read jobs, else the answer that refuses it.

        Job records and mirror rows are the data harvester guards: with a token
        configured a read must present it; without one, reads are served only on a
        loopback address, and a server bound elsewhere answers 403 saying why. Open
        reads also need a ``Host`` that names this machine's loopback: a web page that
        rebinds its own name to 127.0.0.1 (DNS rebinding) makes the browser send that
        name, and is refused."""
        if self._token is not None:
            return None if self._authorized(request) else unauthorized()
        if not self.reads_open:
            return error(403, "job reads are disabled: the admin server listens on "
                              f"{self.settings.admin_host}, not on loopback; set "
                              "HARVESTER_ADMIN_TOKEN and send it as a bearer token")
        host = request.headers.get("Host")
        if host is not None and not is_loopback_host(host_name(host)):
            return error(403, f"Host {shorten_for_display(host)} is not this machine's "
                              "loopback: job reads without a token answer only to localhost, "
                              "127.0.0.1 or ::1 (a guard against DNS rebinding); set "
                              "HARVESTER_ADMIN_TOKEN to read under another name")
        return None

    async def list_jobs(self, request: web.Request) -> web.Response:
        """``GET /v1/jobs?state=failed&reason=not_found&limit=100&after=CURSOR``: one page
        of jobs in a state, in that state's index order, and the cursor of the next page
        (``next``, null on the last). Bounded: at most ``MAX_PAGE`` jobs per page."""
        refused = self.refuse_read(request)
        if refused is not None:
            return refused
        query = request.query
        unknown = sorted(set(query) - {"state", "reason", "limit", "after"})
        if unknown:
            return error(400, f"unknown query parameter(s): {', '.join(unknown)}")
        try:
            jobs = JobQuery.parse(query.get("state"), query.getall("reason", []),
                                  query.get("limit", str(DEFAULT_PAGE)), query.get("after"))
        except BadJobQuery as exc:
            return error(400, JOB_QUERY_MISTAKES[exc.rule])
        if self.store is None:
            return error(503, "starting: the database is not connected yet; try again")
        try:
            rows, following = await self.store.list_jobs(jobs.state, reasons=jobs.reasons,
                                                         limit=jobs.limit, after=jobs.after)
        except StoreError:
            return error(503, "database unavailable")
        return json_response({"jobs": rows, "next": None if following is None else str(following)})

    async def get_job(self, request: web.Request) -> web.Response:
        """State, polls, last status/error, the stuck record and, once landed, the
        mirror row. See :meth:`refuse_read` for who may ask."""
        refused = self.refuse_read(request)
        if refused is not None:
            return refused
        try:
            job_id = parse_job_id(request.match_info["job_id"])
        except InvalidJobId as exc:
            return error(400, f"job ID {exc}")
        if self.store is None:
            return error(503, "starting: the database is not connected yet; try again")
        try:
            found = await self.store.job(job_id)
        except StoreError:
            return error(503, "database unavailable")
        if found is None:
            return error(404, "unknown job")
        return json_response(found)
