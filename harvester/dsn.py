"""What harvester itself reads from a PostgreSQL URL before asyncpg sees it.

Pure functions over the DSN text, no I/O: where it points (for messages), the secrets
it holds (for the log redactor and for scrubbing error text), the files it names (for
an error that says which one is missing), and ``connect_timeout``, which libpq honours
but asyncpg would pass to the server as a setting the server refuses. README
"Configuration" (TLS to PostgreSQL) documents the parameters.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Final
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
MASK: Final = "**********"
# Query parameters whose value is a secret (libpq and asyncpg spellings).
SECRET_KEYS: Final = frozenset({"password", "sslpassword"})
# Query parameters that name a file the client reads while connecting.
FILE_KEYS: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
CLIENT_ONLY_KEYS: Final = frozenset({"connect_timeout"})


def _query(dsn: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(urlsplit(dsn).query, keep_blank_values=True)
    except ValueError:
        return []


def secrets(dsn: str) -> list[str]:
    """The password, wherever the DSN writes it: ``user:pw@`` or ``?password=``."""
    found: list[str] = []
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        found.extend({password, unquote(password)})
    found.extend(value for key, value in _query(dsn) if key.lower() in SECRET_KEYS and value)
    return found


def scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN's secrets masked (for error messages from the driver)."""
    for secret in sorted(secrets(dsn), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def address(dsn: str) -> str:
    """``host:port`` (or the socket directory) for messages: never user or password."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "the configured database"
    hosts = parts.netloc.rpartition("@")[2]
    params = dict(_query(dsn))
    if not hosts and params.get("host"):
        hosts = params["host"]
        if params.get("port"):
            hosts += f":{params['port']}"
    if not hosts:
        return "the default PostgreSQL socket"
    if hosts.startswith("/") or "," in hosts:  # a socket directory, or several hosts
        return hosts
    has_port = "]:" in hosts if hosts.startswith("[") else ":" in hosts
    return hosts if has_port else f"{hosts}:5432"


def named_files(dsn: str) -> dict[str, str]:
    """The files the DSN asks the client to read, by parameter."""
    return {key: value for key, value in _query(dsn) if key in FILE_KEYS and value}


def split_client_options(dsn: str) -> tuple[str, float | None]:
    """The DSN without the options asyncpg does not understand, and the connect timeout
    in seconds (libpq: ``connect_timeout``; 0 or less waits for ever; default 10 s).

    Raises ValueError for a ``connect_timeout`` that is not a number."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return dsn, DEFAULT_CONNECT_TIMEOUT
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT
    kept: list[str] = []
    for segment in parts.query.split("&") if parts.query else []:
        key, _, value = segment.partition("=")
        if unquote(key) not in CLIENT_ONLY_KEYS:
            kept.append(segment)
            continue
        try:
            seconds = float(unquote(value))
        except ValueError:
            seconds = math.nan
        if math.isnan(seconds):
            raise ValueError(f"connect_timeout must be a number of seconds "
                             f"(got {unquote(value)[:20]!r})")
        timeout = seconds if 0 < seconds < math.inf else None
    return parts._replace(query="&".join(kept)).geturl(), timeout


def host_names(dsn: str) -> list[str]:
    """The host names the DSN asks to resolve (socket directories and IP addresses left
    out), for an error that says which one did not resolve."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return []
    hosts = parts.netloc.rpartition("@")[2] or dict(_query(dsn)).get("host", "")
    names = []
    for entry in hosts.split(","):
        name = entry.rsplit(":", 1)[0] if not entry.startswith("[") else ""
        if name and not name.startswith("/") and not _is_address(name):
            names.append(unquote(name))
    return names


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
