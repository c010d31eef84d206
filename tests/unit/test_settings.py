"""Every bad setting is refused with one line naming the variable, every bad value is
named, a misspelt variable is pointed out, and secrets may come from files (README
"Configuration")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harvester.cli import main
from harvester.errors import ConfigError
from harvester.settings import (
    FILE_FIELDS,
    Settings,
    default_data_dir,
    env_name,
    known_variables,
    load_settings,
    unknown_variables,
)

BAD_SETTINGS = [
    ("HARVESTER_DATABASE_URL", "mysql://u:hunter2@db/x", "postgresql://"),
    ("HARVESTER_DATABASE_URL", "postgresql://u:hunter2@db:notaport/x", "not a valid URL"),
    ("HARVESTER_API_BASE_URL", "ftp://api.justcrawl.io", "http(s) URL"),
    ("HARVESTER_API_BASE_URL", "http://api.justcrawl.io", "loopback"),
    ("HARVESTER_API_BASE_URL", "https://user:pw@api.justcrawl.io", "credentials"),
    ("HARVESTER_API_BASE_URL", "https://api.justcrawl.io/?a=1", "query"),
    # A check that refuses a secret must not echo it (issue 12, item 1).
    ("HARVESTER_API_BASE_URL", "https://user:hunter2@api.justcrawl.io", "credentials"),
    ("HARVESTER_API_BASE_URL", "https://hunter2@api.justcrawl.io", "credentials"),
    ("HARVESTER_API_BASE_URL", "https://api.justcrawl.io/?token=hunter2", "query"),
    ("HARVESTER_API_BASE_URL", "https://api.justcrawl.io/#hunter2", "fragment"),
    ("HARVESTER_API_BASE_URL", "ftp://user:hunter2@api.justcrawl.io", "http(s) URL"),
    ("HARVESTER_API_BASE_URL", "https://user:hunter2@[::1", "not a valid URL"),
    ("HARVESTER_DATABASE_URL", "postgresql://u:hunter2@db/x?connect_timeout=soon",
     "connect_timeout must be a number"),
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
    ("HARVESTER_FINISHED_RETENTION", "-1", "≥ 0"),
    ("HARVESTER_FINISHED_RETENTION", "30d", "finite number"),
    ("HARVESTER_RESULT_RETENTION", "-5", "≥ 0"),
    ("HARVESTER_RESULT_RETENTION", "forever", "finite number"),
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
    assert "hunter2" not in captured.err
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
    assert (s.finished_retention, s.result_retention) == (30 * 24 * 3600, None)


def test_an_empty_result_retention_keeps_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVESTER_RESULT_RETENTION", " ")
    monkeypatch.setenv("HARVESTER_FINISHED_RETENTION", "0")
    s = load_settings(env_file=None)
    assert (s.finished_retention, s.result_retention) == (0, None)


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


# ---------------------------------------------------------------- every problem named


def test_every_bad_value_is_named_on_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """Several bad values used to be one line "(and 2 more)" that named only the first."""
    monkeypatch.setenv("HARVESTER_CONCURRENCY", "-3")
    monkeypatch.setenv("HARVESTER_MAX_RPS", "fast")
    monkeypatch.setenv("HARVESTER_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert "more)" not in str(caught.value)
    assert main(["status"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert sorted(lines) == [
        "harvester: HARVESTER_CONCURRENCY: must be ≥ 1 (got '-3')",
        "harvester: HARVESTER_LOG_LEVEL: must be one of 'debug', 'info', 'warning' or 'error' "
        "(got 'loud')",
        "harvester: HARVESTER_MAX_RPS: must be a finite number (seconds may be written as 2 "
        "or 0.2) (got 'fast')",
    ]


# ---------------------------------------------------------------- unknown variables


def test_a_misspelt_variable_is_named_with_the_closest_setting(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARVESTER_CONCURENCY", "5")
    monkeypatch.setenv("harvester_api_tokn", "x")  # matched case-insensitively, as settings are
    monkeypatch.setenv("HARVESTER_COLOUR", "blue")
    env_file = tmp_path / ".env"
    env_file.write_text("HARVESTER_LEASE_SECOND=90\nOTHER_TOOL_SETTING=1\n")
    found = {v.name: v.closest for v in unknown_variables(env_file=str(env_file))}
    assert found == {
        "HARVESTER_CONCURENCY": "HARVESTER_CONCURRENCY",
        "HARVESTER_API_TOKN": "HARVESTER_API_TOKEN",
        "HARVESTER_LEASE_SECOND": "HARVESTER_LEASE_SECONDS",
        "HARVESTER_COLOUR": None,
    }
    # The misspelt value really is ignored: the default stands.
    assert load_settings(env_file=str(env_file)).concurrency == 64


def test_every_setting_and_secret_file_variable_is_known(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Known names come from the Settings model, so a setting added later is known."""
    for field in Settings.model_fields:
        monkeypatch.setenv(env_name(field), "1")
    for field in FILE_FIELDS:
        monkeypatch.setenv(env_name(field) + "_FILE", "/dev/null")
    assert unknown_variables(env_file=None) == []
    assert {env_name(f) for f in Settings.model_fields} <= known_variables()


def run_harvester(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "harvester", *args], env={**base, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_the_daemon_warns_about_a_misspelt_variable_in_its_log(tmp_path: Path) -> None:
    """A typo in the token's name: `run` refuses for want of a token, and the log line
    before says which variable it did not know and what was probably meant."""
    proc = run_harvester("run", cwd=tmp_path, env={
        "HARVESTER_API_TOKN": "tok-typo-1234", "HARVESTER_LOG_FORMAT": "json"})
    assert proc.returncode == 2
    warning, error = proc.stderr.splitlines()
    event = json.loads(warning)
    assert (event["event"], event["level"]) == ("settings.unknown_variable", "warning")
    assert (event["variable"], event["did_you_mean"]) == ("HARVESTER_API_TOKN",
                                                          "HARVESTER_API_TOKEN")
    assert error.startswith("harvester: HARVESTER_API_TOKEN: required")
    assert "tok-typo-1234" not in proc.stderr


def test_a_refused_configuration_also_names_the_misspelt_variable(tmp_path: Path) -> None:
    proc = run_harvester("status", cwd=tmp_path, env={
        "HARVESTER_CONCURENCY": "5", "HARVESTER_LEASE_SECONDS": "0"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "harvester: HARVESTER_LEASE_SECONDS: must be ≥ 1.0 (got '0')",
        "harvester: HARVESTER_CONCURENCY is not a harvester setting (did you mean "
        "HARVESTER_CONCURRENCY?); it is ignored",
    ]


# ---------------------------------------------------------------- secrets from files


def test_secrets_can_come_from_files_without_their_trailing_newline(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text("tok-from-file-123\n")
    (tmp_path / "admin-token").write_text("adm-from-file-456\r\n")
    (tmp_path / "database-url").write_text("postgresql://h:pw-from-file-789@db:5432/h\n")
    for field in FILE_FIELDS:
        monkeypatch.setenv(env_name(field) + "_FILE", str(tmp_path / field.replace("_", "-")))
    settings = load_settings(env_file=None)
    assert settings.api_token is not None and settings.admin_token is not None
    assert settings.api_token.get_secret_value() == "tok-from-file-123"
    assert settings.admin_token.get_secret_value() == "adm-from-file-456"
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://h:pw-from-file-789@db:5432/h"
    assert set(settings.secret_values()) == {"tok-from-file-123", "adm-from-file-456",
                                              "pw-from-file-789"}
    assert "from-file" not in repr(settings)


def test_a_secret_file_in_a_dotenv_file_is_read_too(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-dotenv-file\n")
    env_file = tmp_path / ".env"
    env_file.write_text(f"HARVESTER_API_TOKEN_FILE={tmp_path / 'token'}\n")
    token = load_settings(env_file=str(env_file)).api_token
    assert token is not None and token.get_secret_value() == "tok-dotenv-file"


@pytest.mark.parametrize("field", FILE_FIELDS)
def test_a_value_and_its_file_together_are_one_clear_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("postgresql://u:pw-in-file@db/x\n")
    monkeypatch.setenv(env_name(field), "postgresql://u:pw-in-env@db/x")
    monkeypatch.setenv(env_name(field) + "_FILE", str(secret))
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    variable = env_name(field)
    assert str(caught.value) == (f"{variable} and {variable}_FILE are both set: keep one "
                                 "(the _FILE variable names a file holding the value)")


def test_an_unreadable_secret_file_names_the_variable_and_path_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-file"
    monkeypatch.setenv("HARVESTER_API_TOKEN_FILE", str(missing))
    monkeypatch.setenv("HARVESTER_ADMIN_TOKEN_FILE", str(tmp_path))  # a directory
    (tmp_path / "binary").write_bytes(b"\xff\xfesecret-bytes")
    monkeypatch.setenv("HARVESTER_DATABASE_URL_FILE", str(tmp_path / "binary"))
    assert main(["status"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"harvester: HARVESTER_API_TOKEN_FILE: cannot read {missing}: No such file or directory",
        f"harvester: HARVESTER_ADMIN_TOKEN_FILE: cannot read {tmp_path}: Is a directory",
        f"harvester: HARVESTER_DATABASE_URL_FILE: {tmp_path / 'binary'} is not UTF-8 text",
    ]


def test_a_bad_value_in_a_secret_file_names_the_file_variable_not_the_value(
        tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-with a-space-123\n")
    (tmp_path / "dsn").write_text("mysql://u:pw-file-dsn-456@db/x")
    proc = run_harvester("status", cwd=tmp_path, env={
        "HARVESTER_API_TOKEN_FILE": str(tmp_path / "token"),
        "HARVESTER_DATABASE_URL_FILE": str(tmp_path / "dsn")})
    assert proc.returncode == 2
    assert sorted(proc.stderr.splitlines()) == [
        "harvester: HARVESTER_API_TOKEN_FILE: must not contain spaces, line breaks or NUL "
        "characters",
        "harvester: HARVESTER_DATABASE_URL_FILE: must be a postgresql:// URL, e.g. "
        "postgresql://user@host:5432/db",
    ]
    assert "tok-with" not in proc.stderr and "pw-file-dsn-456" not in proc.stderr


@pytest.mark.parametrize("token", ["x", "hunter2", "fifteen-chars-1"])
def test_an_admin_token_under_sixteen_characters_is_refused_by_name(
        monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("HARVESTER_ADMIN_TOKEN", token)
    with pytest.raises(ConfigError) as refused:
        load_settings(env_file=None)
    assert str(refused.value) == (
        "HARVESTER_ADMIN_TOKEN: must be at least 16 characters; generate one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    monkeypatch.setenv("HARVESTER_ADMIN_TOKEN", "sixteen-chars-12")
    assert load_settings(env_file=None).admin_token is not None


def test_a_short_admin_token_from_a_file_names_the_file_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text("short\n")
    monkeypatch.setenv("HARVESTER_ADMIN_TOKEN_FILE", str(secret))
    with pytest.raises(ConfigError, match=r"^HARVESTER_ADMIN_TOKEN_FILE: must be at least 16"):
        load_settings(env_file=None)


def test_root_keeps_its_data_where_the_embedded_servers_user_can_reach_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir() == Path("/var/lib/harvester")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_data_dir() != Path("/var/lib/harvester")
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir() == Path("/srv/data/harvester")


def test_roots_existing_data_is_not_left_behind_for_an_empty_cluster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Root's data from before /var/lib/harvester became its default stays the default
    (usable, or refused in one line naming HARVESTER_DATA_DIR), rather than a new, empty
    cluster taking its place unnoticed."""
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (tmp_path / ".local" / "share" / "harvester").mkdir(parents=True)
    assert default_data_dir() == tmp_path / ".local" / "share" / "harvester"
