"""Settings: the one validated configuration object, built at the edge and passed down.

Every value comes from ``HARVESTER_*`` environment variables, a ``.env`` file, or a
command-line flag (flags win); a secret may instead come from a file named by its
``*_FILE`` variable (README "Configuration", the Kubernetes and Docker secrets
convention). Nothing deeper in the code reads the environment. A bad value never
reaches the engine: :func:`load_settings` turns pydantic's report into one line per
problem that names the variable and says what is allowed, and never echoes a secret:
not a token, not a DSN, not the credentials or query string of a URL.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from harvester import dsn
from harvester.errors import ConfigError

ENV_PREFIX = "HARVESTER_"
DEFAULT_API_BASE_URL = "https://api.justcrawl.io"
MIB = 1024 * 1024
HOUR = 3600.0
DAY = 24 * HOUR
ADMIN_TOKEN_MIN = 16
"""Characters of HARVESTER_ADMIN_TOKEN at least (README "Security"): the admin server
answers as many wrong guesses as it is sent, so the token must be out of guessing
reach; 16 random characters are ~95 bits, and a word or a PIN is refused."""

SECRET_FIELDS = frozenset({"api_token", "admin_token", "database_url"})
# Secrets that may be read from a file named by HARVESTER_<NAME>_FILE.
FILE_FIELDS = ("api_token", "admin_token", "database_url")
FILE_SUFFIX = "_FILE"
# HARVESTER_* variables that are not settings but are read by harvester's own tooling
# (the test suite's server), so that they draw no "unknown variable" warning.
NOT_SETTINGS = frozenset({"HARVESTER_TEST_DATABASE_URL"})


def default_data_dir() -> Path:
    """A per-user data directory (XDG on Linux, ~/Library on macOS); for root, which
    runs the embedded PostgreSQL as another user that could not enter /root,
    /var/lib/harvester (README "Security").

    Root's data from before that default is not silently left behind for an empty
    cluster: where ~/.local/share/harvester already holds one, it stays the default, and
    is either usable or refused in one line that says how to move on."""
    home = Path.home()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "harvester"
    per_user = home / ".local" / "share" / "harvester"
    if os.geteuid() == 0:
        return per_user if per_user.is_dir() else Path("/var/lib/harvester")
    if (home / "Library" / "Application Support").is_dir():
        return home / "Library" / "Application Support" / "harvester"
    return per_user


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _seconds(default: float, ge: float, le: float, what: str) -> Any:
    return Field(default=default, ge=ge, le=le, allow_inf_nan=False, description=what)


class Settings(BaseSettings):
    """The README's configuration table, every row of it."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL DSN; unset means the embedded PostgreSQL"
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    api_base_url: str = DEFAULT_API_BASE_URL
    api_token: SecretStr | None = None
    insecure: bool = Field(default=False, description="allow http:// to a non-loopback host")

    concurrency: int = Field(default=64, ge=1, le=10_000)
    max_rps: float = Field(default=0.0, ge=0, le=100_000, allow_inf_nan=False)
    request_timeout: float = _seconds(30.0, 0.1, 600, "seconds for one request")
    max_body_bytes: int = Field(default=16 * MIB, ge=1024, le=1024 * MIB)
    default_retry_after: float = _seconds(5.0, 0, DAY, "delay for a 202 naming none")
    min_poll_interval: float = _seconds(1.0, 0, DAY, "lower clamp for upstream delays")
    max_poll_interval: float = _seconds(HOUR, 0.1, 7 * DAY, "upper clamp for upstream delays")
    lease_seconds: float = _seconds(60.0, 1, DAY, "claimed jobs stay invisible this long")
    not_found_timeout: float = _seconds(DAY, 0, 365 * DAY, "404s tolerated after enqueue")
    stuck_after: int = Field(default=3, ge=1, le=1000)
    stuck_recheck: float = _seconds(15 * 60.0, 1, 30 * DAY, "how often stuck jobs are re-polled")
    max_age: float = _seconds(7 * DAY, 1, 3650 * DAY, "unresolved this long after enqueue fails")
    status_min_interval: float = _seconds(1.0, 0.1, HOUR, "batch-status checks of a job at most this often")
    status_max_interval: float = _seconds(60.0, 0.1, DAY, "batch-status checks of a job at least this often")
    auth_probe_interval: float = _seconds(30.0, 0.1, HOUR, "one probe this often while 401/403")
    shutdown_grace: float = _seconds(20.0, 0, HOUR, "time in-flight requests get on SIGTERM")
    finished_retention: float = _seconds(
        30 * DAY, 0, 3650 * DAY,
        "queue rows of jobs landed or failed longer ago than this are deleted (0 = keep)")
    result_retention: float | None = Field(
        default=None, ge=0, le=36500 * DAY, allow_inf_nan=False,
        description="mirror rows harvested longer ago than this are deleted (unset or 0 = keep)")

    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: SecretStr | None = None

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("result_retention", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        if not raw:
            return None
        try:
            parts = urlsplit(raw)
            _ = parts.port  # raises on a non-numeric port
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user@host:5432/db")
        dsn.split_client_options(raw)  # a connect_timeout that is not a number
        return SecretStr(raw)

    @field_validator("api_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        try:
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.justcrawl.io")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; put the token in HARVESTER_API_TOKEN")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value

    @field_validator("api_token", "admin_token")
    @classmethod
    def _blank_token_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        token = value.get_secret_value().strip()
        if any(ch in token for ch in "\r\n\x00 "):
            raise ValueError("must not contain spaces, line breaks or NUL characters")
        return SecretStr(token)

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < ADMIN_TOKEN_MIN:
            raise ValueError(
                f"must be at least {ADMIN_TOKEN_MIN} characters; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        parts = urlsplit(self.api_base_url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not self.insecure:
            raise ValueError(
                "HARVESTER_API_BASE_URL: plain http:// is only allowed to a loopback host; "
                "use https:// or set HARVESTER_INSECURE=1 (--insecure)"
            )
        if self.min_poll_interval > self.max_poll_interval:
            raise ValueError(
                "HARVESTER_MIN_POLL_INTERVAL: must not exceed HARVESTER_MAX_POLL_INTERVAL "
                f"({self.min_poll_interval:g} > {self.max_poll_interval:g})"
            )
        if self.status_min_interval > self.status_max_interval:
            raise ValueError(
                "HARVESTER_STATUS_MIN_INTERVAL: must not exceed HARVESTER_STATUS_MAX_INTERVAL "
                f"({self.status_min_interval:g} > {self.status_max_interval:g})"
            )
        if self.lease_seconds <= self.request_timeout:
            raise ValueError(
                "HARVESTER_LEASE_SECONDS: must be longer than HARVESTER_REQUEST_TIMEOUT "
                f"({self.lease_seconds:g} <= {self.request_timeout:g}), or a job still in "
                "flight could be claimed again"
            )
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def targets_loopback(self) -> bool:
        """True when upstream is on this machine, i.e. the simulated upstream."""
        return is_loopback_host(urlsplit(self.api_base_url).hostname)

    def require_api_token(self) -> None:
        """`run` needs a token unless it polls a simulated upstream on loopback."""
        if self.api_token is None and not self.targets_loopback:
            raise ConfigError(
                f"HARVESTER_API_TOKEN: required to poll {self.api_base_url} "
                "(only a loopback upstream such as `harvester simulate` may go without)"
            )

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the log redactor."""
        secrets: list[str] = []
        for token in (self.api_token, self.admin_token):
            if token is not None:
                secrets.append(token.get_secret_value())
        if self.database_url is not None:
            secrets.extend(dsn.secrets(self.database_url.get_secret_value()))
        return secrets


def shown_value(raw: str) -> str:
    """A rejected value as it may be echoed: a URL loses its credentials and its query
    (either may hold a token), and anything long is cut."""
    text = raw
    if "://" in raw or "@" in raw:
        try:
            parts = urlsplit(raw)
            netloc = parts.netloc
            if "@" in netloc:
                netloc = "…@" + netloc.rpartition("@")[2]
            text = parts._replace(netloc=netloc, query="…" if parts.query else "",
                                  fragment="…" if parts.fragment else "").geturl()
        except ValueError:
            text = "…"  # not even a URL: nothing of it is safe to show
    return text[:60]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"must be ≤ {ctx.get('le')}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return "must be a finite number (seconds may be written as 2 or 0.2)"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false (1/0, yes/no)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    message = str(error.get("msg", "is not valid"))
    return message.removeprefix("Value error, ")


def format_validation_error(exc: ValidationError,
                            names: Mapping[str, str] | None = None) -> list[str]:
    """One line per problem, each naming its variable and what is allowed; secret
    values never shown. ``names`` maps a field to the variable it came from when that
    is not its own (``HARVESTER_API_TOKEN_FILE``)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error.get("loc", ()) if str(part)]
        description = _describe(error)
        if not loc:
            lines.append(description)  # a relation check that names its variables itself
            continue
        field = loc[0]
        shown = ""
        raw = error.get("input")
        if field not in SECRET_FIELDS and isinstance(raw, (str, int, float)):
            shown = f" (got {shown_value(str(raw))!r})"
        variable = (names or {}).get(field, env_name(field))
        lines.append(f"{variable}: {description}{shown}")
    return lines


def _read_env_file(env_file: str | None) -> dict[str, str]:
    """The .env file as pydantic-settings sees it (missing file: nothing)."""
    if env_file is None or not Path(env_file).is_file():
        return {}
    return {key: value for key, value in dotenv_values(env_file).items() if value is not None}


def _harvester_variables(environ: Mapping[str, str], dotenv: Mapping[str, str]
                         ) -> dict[str, str]:
    """Every HARVESTER_* variable, upper-cased as pydantic-settings matches them
    (case-insensitively); the environment wins over .env, as it does for settings."""
    found: dict[str, str] = {}
    for source in (dotenv, environ):
        for key, value in source.items():
            if key.upper().startswith(ENV_PREFIX):
                found[key.upper()] = value
    return found


def _read_secret_files(variables: Mapping[str, str], overrides: Mapping[str, Any]
                       ) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Values of the ``*_FILE`` variables: (values by field, variable by field, problems).

    The file's content is the value, less its trailing line break (``echo`` and most
    editors add one). A problem names the variable and the path, never the content."""
    values: dict[str, str] = {}
    names: dict[str, str] = {}
    problems: list[str] = []
    for field in FILE_FIELDS:
        variable = env_name(field)
        file_variable = variable + FILE_SUFFIX
        path = variables.get(file_variable, "").strip()
        if not path:
            continue
        if variables.get(variable, "").strip() or overrides.get(field) is not None:
            problems.append(f"{variable} and {file_variable} are both set: keep one "
                            "(the _FILE variable names a file holding the value)")
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                content = handle.read()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            problems.append(f"{file_variable}: cannot read {path}: {reason}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{file_variable}: {path} is not UTF-8 text")
            continue
        values[field] = content.rstrip("\r\n")
        names[field] = file_variable
    return values, names, problems


def known_variables() -> frozenset[str]:
    """Every HARVESTER_* name harvester reads, derived from the Settings model."""
    fields = {env_name(field) for field in Settings.model_fields}
    files = {env_name(field) + FILE_SUFFIX for field in FILE_FIELDS}
    return frozenset(fields | files | NOT_SETTINGS)


@dataclass(frozen=True)
class UnknownVariable:
    """A HARVESTER_* variable that is no setting, and the known name closest to it."""

    name: str
    closest: str | None

    def __str__(self) -> str:
        hint = f" (did you mean {self.closest}?)" if self.closest else ""
        return f"{self.name} is not a harvester setting{hint}; it is ignored"


def unknown_variables(env_file: str | None = ".env") -> list[UnknownVariable]:
    """Every HARVESTER_* variable (environment or .env) that is no setting: a misspelt
    name would otherwise be ignored without a word."""
    known = known_variables()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    found: list[UnknownVariable] = []
    for variable in sorted(_harvester_variables(os.environ, _read_env_file(env_file))):
        if variable in known:
            continue
        close = difflib.get_close_matches(variable.removeprefix(ENV_PREFIX), list(suffixes),
                                          n=1, cutoff=0.75)
        found.append(UnknownVariable(variable, suffixes[close[0]] if close else None))
    return found


def load_settings(overrides: Mapping[str, Any] | None = None, *, env_file: str | None = ".env"
                  ) -> Settings:
    """Build the settings from environment, .env, ``*_FILE`` secrets and flag overrides,
    or raise ConfigError listing every problem, one line each."""
    values = {key: value for key, value in (overrides or {}).items() if value is not None}
    variables = _harvester_variables(os.environ, _read_env_file(env_file))
    from_files, names, problems = _read_secret_files(variables, values)
    try:
        settings = Settings(_env_file=env_file, **{**from_files, **values})
    except ValidationError as exc:
        raise ConfigError("\n".join([*problems, *format_validation_error(exc, names)])
                          ) from None
    if problems:
        raise ConfigError("\n".join(problems))
    return settings
