"""A secret passed into a log call never reaches the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from harvester.logs import (
    REDACTED,
    REDACTOR,
    QuietForeignErrors,
    QuietLoopErrors,
    Redactor,
    configure_logging,
    get_logger,
)
from harvester.observer import WarningDigest

TOKEN = "jc_live_9f8e7d6c5b4a39281706"
ADMIN = "admin-0123456789abcdef"
PASSWORD = "pg-pass-55aa55aa"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", [TOKEN, ADMIN, PASSWORD], stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_token_in_any_position_is_redacted(captured: io.StringIO) -> None:
    log = get_logger("test")
    log.info("plain.value", token=TOKEN)
    log.info("inside.text", note=f"used Bearer {TOKEN} for the call")
    log.info("nested", request={"headers": {"Authorization": f"Bearer {TOKEN}"}, "ok": [ADMIN]})
    log.info(f"event text carries {PASSWORD}")
    log.info("secretstr", value=SecretStr(TOKEN))
    log.info("harmless", dsn=f"postgresql://u:{PASSWORD}@db/x")
    try:
        raise RuntimeError(f"upstream said no to {TOKEN}")
    except RuntimeError:
        log.exception("with.traceback")
    logging.getLogger("aiohttp.client").warning("foreign logger saw %s", TOKEN)

    output = captured.getvalue()
    for secret in (TOKEN, ADMIN, PASSWORD):
        assert secret not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 8
    assert lines[0]["token"] == REDACTED
    assert lines[1]["note"] == f"used Bearer {REDACTED} for the call"
    assert REDACTED in lines[3]["event"]
    assert "RuntimeError" in lines[6]["exception"]


def test_sensitive_keys_are_redacted_even_for_unknown_values(captured: io.StringIO) -> None:
    get_logger("test").info("keys", api_token="whatever-value", password="x" * 8, count=3)
    line = json.loads(captured.getvalue())
    assert line["api_token"] == REDACTED
    assert line["password"] == REDACTED
    assert line["count"] == 3


def test_redactor_scrubs_longest_secret_first() -> None:
    redactor = Redactor(["abcd1234", "abcd1234-extended"])
    assert redactor.scrub("x abcd1234-extended y") == f"x {REDACTED} y"


def test_console_format_is_redacted_too() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", [TOKEN], stream=stream)
    try:
        get_logger("test").warning("console.line", detail=TOKEN)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert TOKEN not in stream.getvalue()
    assert "console.line" in stream.getvalue()


# ---------------------------------------------------------------- asyncpg's noise


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pool_warning(logger: logging.Logger) -> None:
    """What asyncpg's pool logs on each failed reconnect while PostgreSQL is away."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError as inner:
            raise OSError("Multiple exceptions: [Errno 111] Connect call failed\nsecond line") \
                from inner
    except OSError:
        logger.warning("Failed to restore the pool connection floor; retrying", exc_info=True)


def test_asyncpg_outage_warnings_are_one_line_without_traceback_and_rate_limited() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", [], stream=stream)
    clock = Clock()
    quiet = QuietForeignErrors(window=60.0, clock=clock)
    handler = logging.getLogger().handlers[0]
    handler.filters[:] = [quiet]  # the same filter, on a clock the test moves
    pool_log = logging.getLogger("asyncpg.pool")
    try:
        for _ in range(50):
            _pool_warning(pool_log)
            clock.now += 1.0  # one retry a second: 50 in 50 s, all within one window
        clock.now += 11.0
        _pool_warning(pool_log)
        logging.getLogger("aiohttp.client").warning("other libraries are left alone")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["asyncpg.pool", "asyncpg.pool", "aiohttp.client"]
    first, second = lines[0], lines[1]
    assert first["event"] == ("Failed to restore the pool connection floor; retrying "
                              "(OSError: Multiple exceptions: [Errno 111] Connect call failed)")
    assert "exception" not in first
    assert "Traceback" not in stream.getvalue()
    assert second["event"].endswith("[49 more like this in the last 60 s not shown]")
    assert first["level"] == "warning"


def test_the_quiet_filter_keys_on_message_and_exception_type() -> None:
    clock = Clock()
    quiet = QuietForeignErrors(window=10.0, clock=clock)

    def record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, info)

    assert quiet.filter(record("asyncpg.pool", "a", OSError("x")))
    assert not quiet.filter(record("asyncpg.pool", "a", OSError("y")))
    assert quiet.filter(record("asyncpg.pool", "a", TimeoutError()))  # another kind of failure
    assert quiet.filter(record("asyncpg.pool", "b"))
    assert quiet.filter(record("asyncpg", "a", OSError("x")))  # another logger
    assert quiet.filter(record("asyncpgx", "a", OSError("x")))  # not asyncpg's
    assert quiet.filter(record("asyncpgx", "a", OSError("x")))
    clock.now += 10.0
    kept = record("asyncpg.pool", "a", OSError("z"))
    assert quiet.filter(kept)
    assert kept.getMessage() == "a (OSError: z) [1 more like this in the last 10 s not shown]"
    assert kept.exc_info is None


def test_repeated_per_job_warnings_are_summarised_not_repeated() -> None:
    """README "Operating": during an incident the log stays proportionate: the first few
    of each per-job warning in full, then one summary per window with counts and samples."""
    now = [0.0]
    digest = WarningDigest(every=30.0, shown=5, clock=lambda: now[0])
    with capture_logs() as logs:
        for n in range(1000):
            digest.warn("job.poll_error", f"job-{n}", "200 with an HTML page", status=200)
        digest.flush()  # the window is not over: nothing yet
        now[0] = 31.0
        digest.flush()
        digest.warn("job.poll_error", "job-late", "timeout")
    assert [e["event"] for e in logs].count("job.poll_error") == 6  # 5, then a new window
    (summary,) = [e for e in logs if e["event"] == "log.summary"]
    assert summary["summarised"] == "job.poll_error"
    assert summary["more"] == 995
    assert summary["sample_job_ids"] == ["job-5", "job-6", "job-7", "job-8", "job-9"]
    assert summary["by_reason"] == {"200 with an HTML page": 995}


def test_the_default_stream_is_stderr_at_each_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configured while stderr was one stream (a test's capture), the logs follow stderr
    when it is swapped and the first one closed, instead of failing on a closed file."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging("info", "json", [])
    try:
        first.close()
        monkeypatch.setattr("sys.stderr", second)
        get_logger("test").info("after.swap")
        logging.getLogger("asyncpg.pool").warning("stdlib too")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    events = [json.loads(line)["event"] for line in second.getvalue().splitlines()]
    assert events == ["after.swap", "stdlib too"]


def test_repeated_loop_errors_are_one_full_report_then_a_count_per_window() -> None:
    """What asyncio reports for each failed accept() when descriptors run out: the first
    in full (with its traceback), the next 9,999 as one line; another kind of error is
    still shown at once."""
    stream = io.StringIO()
    configure_logging("info", "json", [], stream=stream)
    loop = asyncio.new_event_loop()
    clock = Clock()  # which window a report falls in; the loop's own timers say when
    QuietLoopErrors(window=0.2, clock=clock).install(loop)

    def out_of_descriptors() -> None:
        try:
            raise OSError(24, "Too many open files")
        except OSError as exc:
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": exc})

    try:
        for _ in range(10_000):
            out_of_descriptors()
        loop.call_exception_handler({"message": "Task exception was never retrieved",
                                     "exception": ValueError("a bug")})
        clock.now += 0.25
        loop.run_until_complete(asyncio.sleep(0.3))  # the window's summary, due at 0.2 s
        clock.now += 0.05
        out_of_descriptors()  # still going: counted towards the next window's line
        loop.run_until_complete(asyncio.sleep(0.3))
    finally:
        loop.close()
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"].split(" ")[0], line.get("more")) for line in lines] == [
        ("socket.accept()", None), ("Task", None), ("asyncio.errors_repeated", 9_999),
        ("asyncio.errors_repeated", 1)]
    assert "Too many open files" in lines[0]["exception"]  # the first keeps its traceback
    assert "ValueError: a bug" in lines[1]["exception"]
    assert lines[2]["message"] == "socket.accept() out of system resource"
    assert lines[2]["error_type"] == "OSError"


@pytest.mark.parametrize(("text", "shown"), [
    ("ab", REDACTED),                                          # the whole value
    ("postgresql://harvester:ab@db.internal/x", f"postgresql://harvester:{REDACTED}@db.internal/x"),
    ("host=db password=ab sslmode=require", f"host=db password={REDACTED} sslmode=require"),
    ("?sslpassword=ab&x=1", f"?sslpassword={REDACTED}&x=1"),
    ("{'password': 'ab'}", f"{{'password': '{REDACTED}'}}"),
    ('"token": "Zq"', f'"token": "{REDACTED}"'),
    ("Authorization: Bearer Zq", f"Authorization: Bearer {REDACTED}"),
    # Anywhere else the characters are just characters: no line is mangled.
    ("status ab, about a cab", "status ab, about a cab"),
    ("password=abc", "password=abc"),
    ("tab=ab", "tab=ab"),
    ("Zqx", "Zqx"),
])
def test_a_secret_under_four_characters_is_redacted_where_it_stands_as_a_credential(
        text: str, shown: str) -> None:
    redactor = Redactor(["ab", "Zq"])  # a DSN password and an API token of two characters
    assert redactor.scrub(text) == shown


def test_a_short_secret_never_reaches_a_log_line(captured: io.StringIO) -> None:
    REDACTOR.add(["p1"])
    get_logger("test").warning("store.connect_failed", where="db:5432", pw_field="p1",
                               error="could not use postgresql://u:p1@db/x (password=p1)")
    line = json.loads(captured.getvalue())
    assert "p1" not in json.dumps({k: v for k, v in line.items() if k != "timestamp"})
    assert line["where"] == "db:5432"
