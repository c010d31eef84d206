"""Settings: the one validated configuration object, built at the edge and passed down.

Every value comes from ``HARVESTER_*`` environment variables, a ``.env`` file, or a
command-line flag (flags win). Nothing deeper in the code reads the environment. A bad
value never reaches the engine: :func:`load_settings` turns pydantic's report into one
line that names the variable and says what is allowed, and never echoes a secret.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from harvester.errors import ConfigError

ENV_PREFIX = "HARVESTER_"
DEFAULT_API_BASE_URL = "https://api.justcrawl.io"
MIB = 1024 * 1024
HOUR = 3600.0
DAY = 24 * HOUR

SECRET_FIELDS = frozenset({"api_token", "admin_token", "database_url"})


def default_data_dir() -> Path:
    """A per-user data directory (XDG on Linux, ~/Library on macOS)."""
    home = Path.home()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "harvester"
    if (home / "Library" / "Application Support").is_dir():
        return home / "Library" / "Application Support" / "harvester"
    return home / ".local" / "share" / "harvester"


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
    """The whole configuration table of SPEC section 3, plus a few operational knobs."""

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

    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: SecretStr | None = None

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

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
            password = urlsplit(self.database_url.get_secret_value()).password
            if password:
                secrets.append(password)
        return secrets


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


def format_validation_error(exc: ValidationError) -> str:
    """One line naming the variable and what is allowed; secret values never shown."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if str(part)]
    description = _describe(first)
    if not loc:
        line = description  # a relation check that names its variables itself
    else:
        field = loc[0]
        shown = ""
        raw = first.get("input")
        if field not in SECRET_FIELDS and isinstance(raw, (str, int, float)):
            shown = f" (got {str(raw)[:60]!r})"
        line = f"{env_name(field)}: {description}{shown}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


def load_settings(overrides: Mapping[str, Any] | None = None, *, env_file: str | None = ".env") -> Settings:
    """Build the settings from environment, .env and flag overrides, or raise ConfigError."""
    values = {key: value for key, value in (overrides or {}).items() if value is not None}
    try:
        return Settings(_env_file=env_file, **values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
