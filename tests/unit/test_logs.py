"""A secret passed into a log call never reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from pydantic import SecretStr

from harvester.logs import REDACTED, Redactor, configure_logging, get_logger

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
