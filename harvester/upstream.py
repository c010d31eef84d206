"""The upstream client: the justcrawl API as seen through aiohttp.

One ``ClientSession`` with a connector sized to the concurrency, a total timeout per
request (kept by :mod:`harvester.deadlines`, not by aiohttp), no redirects (a redirect
could carry the token to another host), and a body limit enforced while reading, on the
bytes held after decoding: a body larger than ``MAX_BODY_BYTES`` is refused after at
most that many bytes, never held whole, however small it was on the wire
(:mod:`harvester.decoding`). aiohttp's exceptions stop here; what comes out is a
:class:`~harvester.policy.Response`, a :class:`~harvester.policy.TransportFailure` or,
for batch-status, a :class:`~harvester.policy.StatusAnswer`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self
from uuid import UUID

import aiohttp
from yarl import URL

from harvester import __version__
from harvester.api import BATCH_STATUS_LIMIT, BATCH_STATUS_PATH, RESULTS_PREFIX
from harvester.deadlines import Deadlines
from harvester.decoding import (
    ACCEPT_ENCODING,
    BodyTooLarge,
    LimitedBody,
    UndecodableBody,
    content_coding,
)
from harvester.policy import (
    Answer,
    Response,
    StatusAnswer,
    TransportFailure,
    looks_like_html,
)
from harvester.settings import Settings
from harvester.status_policy import parse_batch_status

_CHUNK: Final = 64 * 1024


class Upstream:
    """A session against one API base URL. Use as an async context manager."""

    def __init__(self, settings: Settings, *, limit: int | None = None) -> None:
        self._base = settings.api_base_url
        # Parsed and encoded once: a job ID needs no encoding, so each result URL is the
        # base with a longer path, not a string for yarl to parse and quote again.
        self._origin = URL(self._base)
        self._results_path = self._origin.raw_path.rstrip("/") + RESULTS_PREFIX
        self._max_body = settings.max_body_bytes
        self._deadlines = Deadlines(settings.request_timeout)
        self._limit = limit or settings.concurrency
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self._headers = {
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": f"harvester/{__version__}",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        }
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the headers: they hold the token
        return f"Upstream(base={self._base!r})"

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            limit=self._limit + 4,  # room for batch-status beside the polls
            limit_per_host=0,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # No timer per request: self._deadlines keeps one watchdog for them all.
            timeout=aiohttp.ClientTimeout(total=None),
            headers=self._headers,
            raise_for_status=False,
            auto_decompress=False,  # decoded under the body limit: harvester.decoding
            trust_env=False,
            # Upstream's cookies are neither kept nor sent back: nothing of ours needs
            # them, and no request pays for looking them up.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # aiohttp (>= 3.10) silently repeats an idempotent request once when a kept-alive
        # connection is reset under it. For us a repeat is a poll upstream sees and
        # our books do not (polls, backoff): a reset is a fault for the policy instead.
        # Private, but the only switch; were it to disappear, aiohttp warns on setting
        # an unknown attribute, and the tests turn that warning into a failure.
        self._session._retry_connection = False
        self._deadlines.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._deadlines.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream used outside its context")
        return self._session

    def result_url(self, job_id: UUID) -> URL:
        return self._origin.with_path(self._results_path + str(job_id), encoded=True)

    async def fetch_result(self, job_id: UUID) -> Answer:
        """GET one job's result. Never raises for network or HTTP trouble."""
        task = self._deadlines.begin()
        try:
            async with self.session.get(self.result_url(job_id), allow_redirects=False) as resp:
                body = await self._read_limited(resp)
                return Response(
                    status=resp.status,
                    body=body,
                    content_type=resp.headers.get("Content-Type"),
                    retry_after=resp.headers.get("Retry-After"),
                    date=resp.headers.get("Date"),
                )
        except asyncio.CancelledError:
            if self._deadlines.expired(task):
                return TransportFailure(
                    "timeout", f"no complete answer within {self._deadlines.timeout:g}s")
            raise
        except BodyTooLarge as exc:
            return TransportFailure("too_large", str(exc))
        except UndecodableBody as exc:
            return TransportFailure("protocol", str(exc))
        except aiohttp.ClientPayloadError as exc:
            return TransportFailure("protocol", f"truncated or malformed body ({_brief(exc)})")
        except aiohttp.ClientResponseError as exc:
            return TransportFailure("protocol", f"malformed response ({_brief(exc)})")
        except (aiohttp.ClientError, OSError) as exc:
            return TransportFailure("connection", _brief(exc))
        finally:
            self._deadlines.end(task)

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        """The decoded body, read as it arrives; raises BodyTooLarge as soon as more
        than the limit would be held, UndecodableBody for a coding we cannot trust."""
        body = LimitedBody(content_coding(resp.headers.getall("Content-Encoding", [])),
                           self._max_body)
        declared = resp.content_length
        if body.coding is None and declared is not None:
            if declared > self._max_body:
                raise BodyTooLarge(
                    f"body of {declared} bytes exceeds HARVESTER_MAX_BODY_BYTES={self._max_body}")
            # Not encoded, and its length declared within the limit: the parser stops at
            # Content-Length, so it is read whole (the common answer, in one step).
            return await resp.read()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body.feed(chunk)
        return body.finish()

    async def batch_status(self, job_ids: Sequence[UUID]) -> StatusAnswer:
        """POST batch-status for at most 100 IDs. Never raises for network or HTTP trouble:
        the answer says what came back, and the policy judges it
        (:func:`~harvester.status_policy.judge_status_call`)."""
        if len(job_ids) > BATCH_STATUS_LIMIT:
            raise ValueError(f"batch-status takes at most {BATCH_STATUS_LIMIT} IDs")
        if not job_ids:
            return StatusAnswer({})
        payload = json.dumps({"jobIds": [str(j) for j in job_ids]})
        task = self._deadlines.begin()
        try:
            async with self.session.post(
                self._base + BATCH_STATUS_PATH, data=payload, allow_redirects=False,
                headers={"Content-Type": "application/json"},
            ) as resp:
                body = await self._read_limited(resp)
                status, content_type = resp.status, resp.headers.get("Content-Type")
                retry_after, date = resp.headers.get("Retry-After"), resp.headers.get("Date")
        except asyncio.CancelledError:
            if self._deadlines.expired(task):
                return StatusAnswer(None, None, "batch-status timed out")
            raise
        except (BodyTooLarge, UndecodableBody) as exc:
            return StatusAnswer(None, None, f"batch-status: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return StatusAnswer(None, None, f"batch-status failed: {_brief(exc)}")
        finally:
            self._deadlines.end(task)
        html = looks_like_html(Response(status, body, content_type))
        if status != 200 or html:
            return StatusAnswer(None, status, f"batch-status answered HTTP {status}"
                                + (" with a web page" if html else ""), retry_after, html, date)
        try:
            return StatusAnswer(parse_batch_status(body), date=date)
        except (ValueError, UnicodeDecodeError) as exc:
            return StatusAnswer(None, status, f"batch-status answer not understood: {_brief(exc)}",
                                date=date)


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    text = text.replace("\n", " ")
    return f"{type(exc).__name__}: {text[:200]}"

