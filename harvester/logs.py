"""Structured logs: JSON lines for machines, readable lines on a terminal.

Event names are stable (``job.landed``, ``auth.circuit_open``) and context is bound as
keys (``job_id``, ``status``, ``polls``). The last processor before rendering is the
redactor: every secret the settings hold is replaced wherever it appears, in values,
nested structures and exception text, so that a token cannot reach the output even if
code passes it by mistake. Foreign loggers (aiohttp, asyncpg) go through the same chain,
and asyncpg's and aiohttp's server's are kept to one line per kind of message per minute
(see :class:`QuietForeignErrors`); so are the event loop's own error reports (see
:class:`QuietLoopErrors`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

import structlog
from pydantic import SecretStr

REDACTED = "**********"
_SENSITIVE_KEYS = re.compile(r"(token|password|passwd|secret|authorization|api[_-]?key|dsn)", re.I)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


SHORT_SECRET = 4
"""Secrets shorter than this are redacted where they stand as a credential, not
wherever their characters occur: replacing every ``ab`` would mangle every line."""


def _credential_patterns(short: Iterable[str]) -> list[re.Pattern[str]]:
    """Where a short secret stands as a credential: a URL's password (``://u:ab@``),
    the value of a sensitive key (``password=ab``, ``'token': 'ab'``), a bearer token."""
    alternatives = "|".join(re.escape(s) for s in sorted(short, key=len, reverse=True))
    end = r"(?=$|[&\s;,'\"}\])])"
    return [
        re.compile(rf"(://[^/@\s:]*:)(?:{alternatives})(@)"),
        re.compile(rf"(?i)(\b\w*(?:password|passwd|token|secret|api[_-]?key)['\"]?\s*[=:]\s*['\"]?)"
                   rf"(?:{alternatives}){end}"),
        re.compile(rf"(?i)(\bbearer\s+)(?:{alternatives}){end}"),
    ]


def _mask(match: re.Match[str]) -> str:
    """The credential's context kept, the credential (between group 1 and any group 2)
    replaced."""
    before, *after = match.groups()
    return before + REDACTED + "".join(after)


class Redactor:
    """A structlog processor that scrubs known secrets and sensitive keys."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._short: frozenset[str] = frozenset()
        self._patterns: list[re.Pattern[str]] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        merged = {s for s in [*self._secrets, *self._short, *secrets] if s}
        # Longest first so that a secret containing another is replaced whole.
        self._secrets = sorted((s for s in merged if len(s) >= SHORT_SECRET),
                               key=len, reverse=True)
        self._short = frozenset(s for s in merged if len(s) < SHORT_SECRET)
        self._patterns = _credential_patterns(self._short) if self._short else []

    def scrub(self, value: Any) -> Any:
        if isinstance(value, SecretStr):
            return REDACTED
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            if self._short:
                if value in self._short:
                    return REDACTED
                for pattern in self._patterns:
                    value = pattern.sub(_mask, value)
            return value
        if isinstance(value, dict):
            return {k: (REDACTED if isinstance(k, str) and _SENSITIVE_KEYS.search(k)
                        and v is not None else self.scrub(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(v) for v in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        # Anything else (exceptions, URLs, objects) is rendered through its str form
        # so that a secret hiding in its repr is caught as well.
        return self.scrub(str(value)) if self._secrets or self._short else value

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            value = event_dict[key]
            if key not in ("event", "level", "timestamp", "logger") and _SENSITIVE_KEYS.search(key):
                event_dict[key] = REDACTED if value is not None else None
            else:
                event_dict[key] = self.scrub(value)
        return event_dict


REDACTOR = Redactor()


@dataclass(slots=True)
class _Seen:
    since: float
    suppressed: int = 0


class QuietForeignErrors(logging.Filter):
    """One line per kind of message per ``window`` seconds from noisy library loggers.

    While PostgreSQL is away, asyncpg's pool logs "Failed to restore the pool connection
    floor; retrying" with a multi-kB traceback on every reconnect attempt, for every
    pool. The daemon already reports the outage itself (``store.unavailable``, the
    readiness check, the metrics), so the traceback adds nothing but volume: the record
    keeps its message plus the exception's type and first line, and repeats of the same
    message and exception type within the window are counted, not written; the next line
    that gets through says how many were held back. aiohttp's server logs a traceback
    for every request it cannot parse, which anyone who reaches the admin port can
    send by the thousand: the same rule holds for it.
    """

    MAX_KEYS = 256
    DETAIL = 200

    def __init__(self, prefixes: Iterable[str] = ("asyncpg", "aiohttp.server"),
                 window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._prefixes = tuple(prefixes)
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, str, str], _Seen] = {}

    def _ours(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self._prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._ours(record.name):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, str(record.msg), type(exc).__name__ if exc is not None else "")
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self._window:
            seen.suppressed += 1
            return False
        held_back = seen.suppressed if seen is not None else 0
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = _Seen(now)
        message = record.getMessage()
        if exc is not None:
            detail = (str(exc) or type(exc).__name__).splitlines()[0][:self.DETAIL]
            message += f" ({type(exc).__name__}: {detail})"
        if held_back:
            message += (f" [{held_back} more like this in the last {self._window:g} s "
                        "not shown]")
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class QuietLoopErrors:
    """The event loop's exception handler: the first error of each kind (message and
    exception type) in full, through asyncio's default handler with its traceback, so
    an unexpected error stays visible; repeats within ``window`` seconds are counted
    and said as one ``asyncio.errors_repeated`` line at the window's end.

    Out of file descriptors, asyncio reports every failed ``accept()`` of a listening
    socket, and Python 3.11 goes on through the whole backlog after each failure:
    50,946 lines in 20 s were measured (issue 26).
    """

    MAX_KEYS = 256

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        key = (str(context.get("message", ""))[:200], type(exc).__name__ if exc else "")
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self._window:
            seen.suppressed += 1
            if seen.suppressed == 1:
                loop.call_later(seen.since + self._window - now, self._summarise, key)
            return
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = _Seen(now)
        loop.default_exception_handler(context)

    def _summarise(self, key: tuple[str, str]) -> None:
        seen = self._seen.get(key)
        if seen is None or not seen.suppressed:
            return
        get_logger("asyncio").warning(
            "asyncio.errors_repeated", message=key[0], error_type=key[1], more=seen.suppressed,
            window_seconds=self._window, note="the first was logged in full")
        # Still going: the next window counts from here, and says nothing until its end.
        seen.since, seen.suppressed = self._clock(), 0


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger once, at the edge."""
    stream = stream if stream is not None else cast(TextIO, _StandardError())
    REDACTOR.add(secrets)
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())

    shared: list[Any] = [
        _logger_key,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions are rendered to text *before* the redactor so a secret in an error
    # message or traceback is scrubbed like any other value.
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    tail: list[Any] = [structlog.processors.format_exc_info, REDACTOR, renderer]

    numeric = _LEVELS[level]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )

    # aiohttp, asyncpg and friends log through the stdlib: same redaction, same shape.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    ))
    handler.addFilter(QuietForeignErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _StandardError:
    """``sys.stderr`` as it is at each write: whoever swaps it (pytest's capture, an
    embedding program) must not leave the logs writing to a stream it has closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _logger_key(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Loggers carry their name as ``logger_name`` (see :func:`get_logger`); the line
    says ``logger`` like the stdlib loggers' lines do."""
    if "logger_name" in event:
        event.setdefault("logger", event.pop("logger_name"))
    return event


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; the name becomes the ``logger`` key.

    Lazy: modules make their loggers at import time, often before
    :func:`configure_logging` runs (and tests reconfigure structlog at will); each call
    uses the configuration of the moment. (``logger`` itself cannot be an initial value
    here: it is the name of structlog's own argument for the wrapped logger.)"""
    if name is None:
        return structlog.get_logger()
    return structlog.get_logger(logger_name=name)
