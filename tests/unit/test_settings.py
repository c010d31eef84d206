"""Every bad setting is refused with one line naming the variable (SPEC section 3)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harvester.cli import main
from harvester.errors import ConfigError
from harvester.settings import Settings, load_settings

BAD_SETTINGS = [
    ("HARVESTER_DATABASE_URL", "mysql://u:hunter2@db/x", "postgresql://"),
    ("HARVESTER_DATABASE_URL", "postgresql://u:hunter2@db:notaport/x", "not a valid URL"),
    ("HARVESTER_API_BASE_URL", "ftp://api.justcrawl.io", "http(s) URL"),
    ("HARVESTER_API_BASE_URL", "http://api.justcrawl.io", "loopback"),
    ("HARVESTER_API_BASE_URL", "https://user:pw@api.justcrawl.io", "credentials"),
    ("HARVESTER_API_BASE_URL", "https://api.justcrawl.io/?a=1", "query"),
    ("HARVESTER_API_TOKEN", "two words", "spaces"),
    ("HARVESTER_CONCURRENCY", "-3", "≥ 1"),
    ("HARVESTER_CONCURRENCY", "0", "≥ 1"),
    ("HARVESTER_CONCURRENCY", "lots", "whole number"),
    ("HARVESTER_CONCURRENCY", "100001", "≤ 10000"),
    ("HARVESTER_MAX_RPS", "-1", "≥ 0"),
    ("HARVESTER_MAX_RPS", "fast", "finite number"),
    ("HARVESTER_REQUEST_TIMEOUT", "0", "≥ 0.1"),
    ("HARVESTER_REQUEST_TIMEOUT", "nan", "finite number"),
    ("HARVESTER_REQUEST_TIMEOUT", "2s", "finite number"),
    ("HARVESTER_MAX_BODY_BYTES", "10", "≥ 1024"),
    ("HARVESTER_DEFAULT_RETRY_AFTER", "-5", "≥ 0"),
    ("HARVESTER_MIN_POLL_INTERVAL", "-1", "≥ 0"),
    ("HARVESTER_MAX_POLL_INTERVAL", "0", "≥ 0.1"),
    ("HARVESTER_MIN_POLL_INTERVAL", "7200", "must not exceed HARVESTER_MAX_POLL_INTERVAL"),
    ("HARVESTER_LEASE_SECONDS", "0", "≥ 1"),
    ("HARVESTER_LEASE_SECONDS", "10", "longer than HARVESTER_REQUEST_TIMEOUT"),
    ("HARVESTER_NOT_FOUND_TIMEOUT", "-1", "≥ 0"),
    ("HARVESTER_STUCK_AFTER", "0", "≥ 1"),
    ("HARVESTER_STUCK_AFTER", "2.5", "whole number"),
    ("HARVESTER_STUCK_RECHECK", "0", "≥ 1"),
    ("HARVESTER_MAX_AGE", "0", "≥ 1"),
    ("HARVESTER_ADMIN_PORT", "70000", "≤ 65535"),
    ("HARVESTER_ADMIN_PORT", "http", "whole number"),
    ("HARVESTER_LOG_FORMAT", "xml", "must be one of"),
    ("HARVESTER_LOG_LEVEL", "loud", "must be one of"),
    ("HARVESTER_INSECURE", "perhaps", "true or false"),
    ("HARVESTER_AUTH_PROBE_INTERVAL", "0", "≥ 0.1"),
    ("HARVESTER_SHUTDOWN_GRACE", "-1", "≥ 0"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_SETTINGS)
def test_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(variable + ":"), message
    assert expected in message
    assert "hunter2" not in message


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_SETTINGS[:12])
def test_cli_prints_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    variable: str, value: str, expected: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["status"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"harvester: {variable}:")
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_bad_setting_through_the_console_script_has_no_traceback() -> None:
    env = {"HARVESTER_CONCURRENCY": "-3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "harvester", "status"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "harvester: HARVESTER_CONCURRENCY: must be ≥ 1 (got '-3')"


def test_defaults_match_the_spec_table() -> None:
    s = Settings(_env_file=None)
    assert s.database_url is None
    assert s.api_base_url == "https://api.justcrawl.io"
    assert s.api_token is None
    assert s.concurrency == 64
    assert s.max_rps == 0
    assert s.request_timeout == 30
    assert s.max_body_bytes == 16 * 1024 * 1024
    assert s.default_retry_after == 5
    assert (s.min_poll_interval, s.max_poll_interval) == (1, 3600)
    assert s.lease_seconds == 60
    assert s.not_found_timeout == 24 * 3600
    assert s.stuck_after == 3
    assert s.stuck_recheck == 15 * 60
    assert s.max_age == 7 * 24 * 3600
    assert (s.admin_host, s.admin_port, s.admin_token) == ("127.0.0.1", 8080, None)
    assert (s.log_format, s.log_level) == ("auto", "info")


def test_durations_are_plain_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVESTER_REQUEST_TIMEOUT", "0.2")
    monkeypatch.setenv("HARVESTER_LEASE_SECONDS", "2")
    s = load_settings(env_file=None)
    assert s.request_timeout == pytest.approx(0.2)
    assert s.lease_seconds == 2


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVESTER_CONCURRENCY", "5")
    assert load_settings({"concurrency": 7}, env_file=None).concurrency == 7
    assert load_settings({"concurrency": None}, env_file=None).concurrency == 5


def test_loopback_http_is_allowed_and_insecure_opens_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1:8900", "http://localhost:1", "http://[::1]:8900/"):
        monkeypatch.setenv("HARVESTER_API_BASE_URL", url)
        assert load_settings(env_file=None).targets_loopback
    monkeypatch.setenv("HARVESTER_API_BASE_URL", "http://upstream.internal")
    monkeypatch.setenv("HARVESTER_INSECURE", "1")
    assert load_settings(env_file=None).api_base_url == "http://upstream.internal"


def test_token_is_required_only_for_a_real_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^HARVESTER_API_TOKEN: required"):
        load_settings(env_file=None).require_api_token()
    monkeypatch.setenv("HARVESTER_API_BASE_URL", "http://127.0.0.1:8900")
    load_settings(env_file=None).require_api_token()


def test_secrets_never_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVESTER_API_TOKEN", "tok-abcdef123456")
    monkeypatch.setenv("HARVESTER_ADMIN_TOKEN", "adm-abcdef123456")
    monkeypatch.setenv("HARVESTER_DATABASE_URL", "postgresql://u:pw-abcdef123456@db/x")
    s = load_settings(env_file=None)
    text = repr(s) + str(s) + str(s.model_dump())
    for secret in ("tok-abcdef123456", "adm-abcdef123456", "pw-abcdef123456"):
        assert secret not in text
    assert "**********" in repr(s)
    assert set(s.secret_values()) == {"tok-abcdef123456", "adm-abcdef123456", "pw-abcdef123456"}


def test_dotenv_is_read(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"  # type: ignore[operator]
    env_file.write_text("HARVESTER_CONCURRENCY=9\n")
    assert load_settings(env_file=str(env_file)).concurrency == 9
