"""The admin server's connections: how long one may take to ask, and how many stay open.

aiohttp's web server waits as long as a client likes for a request's headers and keeps
every connection it accepts, so a few hundred clients that send a byte now and then
hold the admin port, run the process out of file descriptors, and the kubelet's
probes stop getting through (issue 26). This sits between the listening socket and
aiohttp's protocol (:class:`Connections` wraps the protocol factory that
``loop.create_server`` calls, :class:`GuardedSite` is the aiohttp site that does so)
and holds two rules (README "Security"):

- a connection must have sent a whole request (its headers) within
  :data:`REQUEST_WITHIN` seconds of connecting or of its previous response, or it is
  closed: this is also the keep-alive idle timeout;
- at most :func:`connection_cap` connections are open; a new one beyond that closes
  the connection that has been idle longest among those of the peer address holding
  the most idle ones. A probe asks at once and comes from an address of its own (the
  node), so it is served while slow clients from elsewhere churn; refusing new
  connections instead would refuse the probes too. Only when every open connection
  is inside a handler is the new one refused.

Connections closed for either reason are logged as one line per minute, with counts.
A request aiohttp's parser refuses (a path or header over 8 KB, not HTTP at all) never
reaches the application: :class:`JsonBadRequests` answers it in the same JSON shape as
every other error, without naming the server's version.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from aiohttp import web

from harvester.logs import get_logger

log = get_logger("harvester.admin")

REQUEST_WITHIN: Final = 5.0
"""Seconds a connection has to send a request's headers, after connecting or after
its previous response. Probes and scrapers ask at once; a kept-alive connection idle
this long is closed and simply reopened by its client."""
MAX_CONNECTIONS: Final = 256
"""Open admin connections at most: probes, scrapes and a few operators need a handful."""
BACKLOG: Final = 128
"""Connections the kernel queues before accept(), and what asyncio accepts in one go
before any of them reaches :class:`Connections` (never more than the cap)."""
REPORT_EVERY: Final = 60.0
SERVER_NAME: Final = "harvester"
"""The ``Server`` header of every admin answer: no versions for a scanner to match."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def connection_cap(descriptor_limit: int | None = None) -> int:
    """:data:`MAX_CONNECTIONS`, or an eighth of the process's descriptor limit when that
    is lower (never below 8): the admin server must never be what runs the daemon out
    of descriptors for its database and upstream connections. An eighth, because under
    a flood of connections asyncio holds a few accept batches (each up to the backlog)
    before the cap sees them, and closes evicted ones a loop turn later."""
    if descriptor_limit is None:
        descriptor_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if descriptor_limit == resource.RLIM_INFINITY or descriptor_limit <= 0:
        return MAX_CONNECTIONS
    return max(8, min(MAX_CONNECTIONS, descriptor_limit // 8))


class Connections:
    """Every open admin connection, its deadline, and who goes when the cap is reached.

    A connection is *idle* from the moment it connects or its last handler returns
    until a request reaches the :meth:`middleware`; only idle connections have a
    deadline and may be closed to admit a new one."""

    def __init__(self, within: float = REQUEST_WITHIN, cap: int | None = None,
                 report_every: float = REPORT_EVERY) -> None:
        self.within = within
        self.cap = cap if cap is not None else connection_cap()
        self._open: dict[asyncio.BaseTransport, _Guarded] = {}
        # Idle connections by peer address, each the longest idle first (dicts keep
        # insertion order).
        self._idle: dict[str, dict[_Guarded, None]] = {}
        self._shed = _ShedReport(report_every)

    @property
    def open(self) -> int:
        return len(self._open)

    def protocol_factory(self, inner: Callable[[], asyncio.BaseProtocol]
                         ) -> Callable[[], asyncio.Protocol]:
        """What ``loop.create_server`` calls: aiohttp's protocol, guarded."""
        return lambda: _Guarded(self, inner())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A whole request arrived: no deadline while it is handled, a new one after."""
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.busy()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.idle()

    def close(self) -> None:
        self._shed.close()

    # ------------------------------------------------------------ bookkeeping

    def _admit(self, conn: _Guarded, transport: asyncio.BaseTransport) -> bool:
        while len(self._open) >= self.cap:
            if not self._idle:
                self._shed.count("refused", self)
                return False
            busiest = max(self._idle.values(), key=len)
            self._shed.count("evicted", self)
            next(iter(busiest)).shut()
        self._open[transport] = conn
        return True

    def _forget(self, conn: _Guarded) -> None:
        if conn.transport is not None:
            self._open.pop(conn.transport, None)
        self._not_idle(conn)

    def _is_idle(self, conn: _Guarded) -> None:
        self._idle.setdefault(conn.peer, {})[conn] = None

    def _not_idle(self, conn: _Guarded) -> None:
        idle = self._idle.get(conn.peer)
        if idle is not None:
            idle.pop(conn, None)
            if not idle:
                del self._idle[conn.peer]


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a deadline."""

    def __init__(self, owner: Connections, inner: asyncio.BaseProtocol) -> None:
        self._owner = owner
        self._inner: Any = inner  # an asyncio.Protocol: aiohttp's RequestHandler
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._deadline: asyncio.TimerHandle | None = None
        self._asked = False  # sent a byte since it last went idle
        self._served = False  # has had a response
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # create_server's are streams
        address = stream.get_extra_info("peername")
        self.peer = str(address[0]) if isinstance(address, tuple) and address else ""
        if not self._owner._admit(self, stream):
            stream.abort()  # never handed to aiohttp: nothing else to undo
            return
        self.transport = stream
        self._inner.connection_made(stream)
        self.idle()

    def data_received(self, data: bytes) -> None:
        self._asked = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused in connection_made
        self._lost = True
        self._disarm()
        self._owner._forget(self)
        self._inner.connection_lost(exc)

    def busy(self) -> None:
        self._disarm()
        self._owner._not_idle(self)
        self._served = True

    def idle(self) -> None:
        if self._lost:
            return  # the client left while its request was handled
        self._disarm()
        self._asked = False
        self._owner._is_idle(self)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._owner.within, self._expire)

    def shut(self) -> None:
        """Close now, whatever is buffered: an idle connection owes nobody anything."""
        self._disarm()
        self._owner._forget(self)
        if self.transport is not None:
            self.transport.abort()

    def _expire(self) -> None:
        self._deadline = None
        # A kept-alive connection that went quiet is ordinary; one that never finished
        # a request, or started one and stalled, is what the rule is for.
        if self._asked or not self._served:
            self._owner._shed.count("slow", self._owner)
        self.shut()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _ShedReport:
    """Connections closed by the rules, said once at first and then as one line of
    counts per ``every`` seconds while it goes on."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._counts: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def count(self, reason: str, owner: Connections) -> None:
        if self._timer is None:
            log.warning("admin.connection_shed", reason=reason, open=owner.open, cap=owner.cap,
                        request_within=owner.within,
                        note=f"further ones are counted and logged every {self.every:g} s")
            self._timer = asyncio.get_running_loop().call_later(self.every, self._report, owner)
            return
        self._counts[reason] += 1

    def _report(self, owner: Connections) -> None:
        self._timer = None
        if not self._counts:
            return  # quiet for a whole window: the next one is said at once again
        log.warning("admin.connections_shed", window_seconds=self.every, open=owner.open,
                    cap=owner.cap, **dict(sorted(self._counts.items())))
        self._counts.clear()
        self._timer = asyncio.get_running_loop().call_later(self.every, self._report, owner)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class JsonBadRequests(web.RequestHandler):
    """aiohttp's protocol, answering what it could not parse (or could not handle) as
    ``{"error": ...}`` instead of its plain-text page.

    aiohttp builds that page in ``handle_error`` outside any application, so no
    middleware sees it; the parent still logs, checks that nothing was sent yet, and
    closes the connection afterwards."""

    MESSAGES: Final = {
        400: "bad request: the request line or headers could not be read (longer than "
             "8 KB, or not HTTP)",
        500: "internal error",
        504: "the request took too long",
    }

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)
        answer = web.json_response(
            {"error": self.MESSAGES.get(plain.status, plain.reason.lower())},
            status=plain.status, headers={"Server": SERVER_NAME})
        answer.force_close()
        return answer


class GuardedSite(web.BaseSite):
    """aiohttp's TCP site with the protocol factory wrapped by :class:`Connections`
    (aiohttp has no setting for a header timeout or a connection cap) and its protocol
    answering parse errors as JSON (:class:`JsonBadRequests`)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 connections: Connections) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._connections = connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        # What web.Server would make, as the admin's runner configures it (None: no
        # access log, which aiohttp's annotations do not foresee), with errors as JSON.
        options: dict[str, Any] = {"access_log": None}

        def protocol() -> asyncio.BaseProtocol:
            return JsonBadRequests(server, loop=loop, **options)

        self._server = await loop.create_server(
            self._connections.protocol_factory(protocol), self._host, self._port,
            backlog=min(BACKLOG, self._connections.cap))

    async def stop(self) -> None:
        self._connections.close()
        await super().stop()
