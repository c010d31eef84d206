"""What harvester itself reads from a PostgreSQL URL before asyncpg sees it.

Pure functions over the DSN text, no I/O: where it points (for messages), the secrets
it holds (for the log redactor and for scrubbing error text), the files it names (for
an error that says which one is missing), ``connect_timeout``, which libpq honours
but asyncpg would pass to the server as a setting the server refuses, another database
on the same server (``--database``), and the same DSN as libpq reads it, for psql.
README "Configuration" (TLS to PostgreSQL) documents the parameters.
"""

from __future__ import annotations

import ipaddress
import math
import os
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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


def with_database(dsn: str, name: str) -> str:
    """``dsn`` naming database ``name`` instead (a ``dbname=`` parameter is dropped)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("dbname", "database")]
    return parts._replace(path="/" + quote(name, safe=""),
                          query=urlencode(query, quote_via=quote)).geturl()


def _dsn_database(dsn: str) -> str:
    parts = urlsplit(dsn)
    named = dict(parse_qsl(parts.query))
    return (named.get("dbname") or named.get("database") or unquote(parts.path.lstrip("/"))
            or unquote(parts.username or "") or "postgres")


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: database and host, never the password."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2] or dict(parse_qsl(parts.query)).get("host", "")
    return f'database "{_dsn_database(dsn)}"' + (f" on {host}" if host else "")


# Connection parameters libpq understands in a URI (PostgreSQL 16's list). Anything
# else in an asyncpg DSN is a server setting (asyncpg sends unknown query parameters as
# such), which psql gets through PGOPTIONS instead.
LIBPQ_PARAMETERS: Final = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "passfile", "channel_binding",
    "connect_timeout", "client_encoding", "options", "application_name",
    "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
    "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode",
    "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
    "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
    "target_session_attrs", "load_balance_hosts"})


# Secret parameters libpq reads from no environment variable (there is PGPASSWORD, but
# no PGSSLPASSWORD): they leave the URI too, for a service file (harvester psql).
FILE_SECRETS: Final = frozenset({"sslpassword"})


def libpq_connection(dsn: str) -> tuple[str, dict[str, str]]:
    """A connection URI for psql's command line and the environment to go with it.

    libpq parses the URI itself, exactly as it would any client's: percent-encoded user
    names, several hosts, ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` and every
    other parameter keep their meaning. Only the secrets leave the URI, so that they never
    show on a process list: the password, decoded, for ``PGPASSWORD``; ``sslpassword``
    for a service file (:func:`libpq_file_secrets`). asyncpg's spellings (``database=``,
    server settings such as ``search_path=``) are translated."""
    uri, env, _ = _libpq(dsn)
    return uri, env


def libpq_file_secrets(dsn: str) -> dict[str, str]:
    """The secrets :func:`libpq_connection` takes out of the URI that no environment
    variable can carry, decoded, for a service file (``[service]`` then ``key=value``)."""
    return _libpq(dsn)[2]


def _libpq(dsn: str) -> tuple[str, dict[str, str], dict[str, str]]:
    parts = urlsplit(dsn)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    env: dict[str, str] = {}
    if password:
        env["PGPASSWORD"] = unquote(password)
    kept: list[tuple[str, str]] = []
    options: list[str] = []
    file_secrets: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            env["PGPASSWORD"] = value
        elif key in FILE_SECRETS:
            file_secrets[key] = value
        elif key == "database":
            kept.append(("dbname", value))
        elif key in LIBPQ_PARAMETERS:
            kept.append((key, value))
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            options.append(f"-c {key}={escaped}")
    if options:
        env["PGOPTIONS"] = " ".join(filter(None, [os.environ.get("PGOPTIONS", ""), *options]))
    netloc = f"{user}{at}{hostport}" if user else hostport
    uri = parts._replace(scheme="postgresql", netloc=netloc,
                         query=urlencode(kept, quote_via=quote)).geturl()
    return uri, env, file_secrets
