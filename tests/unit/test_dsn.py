"""What harvester reads from a DSN itself: where it points, its secrets, its files and
``connect_timeout`` (README "Configuration", TLS to PostgreSQL)."""

from __future__ import annotations

import pytest

from harvester.dsn import (
    DEFAULT_CONNECT_TIMEOUT,
    MASK,
    address,
    named_files,
    scrub,
    secrets,
    split_client_options,
)


@pytest.mark.parametrize(("dsn", "where"), [
    ("postgresql://u:pw@db.internal:6543/h", "db.internal:6543"),
    ("postgresql://u:pw@db.internal/h", "db.internal:5432"),
    ("postgresql://u@[::1]:6000/h", "[::1]:6000"),
    ("postgresql://u@[::1]/h", "[::1]:5432"),
    ("postgresql://u@a:1,b:2/h", "a:1,b:2"),
    ("postgresql:///h?host=/run/postgresql", "/run/postgresql"),
    ("postgresql:///h", "the default PostgreSQL socket"),
])
def test_address_names_where_without_credentials(dsn: str, where: str) -> None:
    assert address(dsn) == where
    assert "pw" not in address(dsn)


def test_secrets_are_found_in_userinfo_and_query_and_scrubbed() -> None:
    dsn = "postgresql://u:p%40ss-word1@db/h?password=qpass-2&sslpassword=keypass-3&sslmode=require"
    assert set(secrets(dsn)) == {"p%40ss-word1", "p@ss-word1", "qpass-2", "keypass-3"}
    text = f"bad query field: 'password=qpass-2', user p@ss-word1, key keypass-3 in {dsn}"
    scrubbed = scrub(text, dsn)
    for secret in ("qpass-2", "p@ss-word1", "p%40ss-word1", "keypass-3"):
        assert secret not in scrubbed
    assert MASK in scrubbed


def test_named_files_are_the_client_side_files() -> None:
    dsn = ("postgresql://u@db/h?sslmode=verify-full&sslrootcert=/etc/ca.pem"
           "&sslcert=/c.pem&sslkey=/k.pem&application_name=x")
    assert named_files(dsn) == {"sslrootcert": "/etc/ca.pem", "sslcert": "/c.pem",
                                "sslkey": "/k.pem"}


@pytest.mark.parametrize(("dsn", "cleaned", "timeout"), [
    ("postgresql://u@db/h", "postgresql://u@db/h", DEFAULT_CONNECT_TIMEOUT),
    ("postgresql://u@db/h?connect_timeout=3", "postgresql://u@db/h", 3.0),
    ("postgresql://u@db/h?sslmode=require&connect_timeout=2.5&sslrootcert=/ca%20x.pem",
     "postgresql://u@db/h?sslmode=require&sslrootcert=/ca%20x.pem", 2.5),
    ("postgresql://u@db/h?connect_timeout=0", "postgresql://u@db/h", None),  # libpq: for ever
    ("postgresql://u@db/h?connect_timeout=-1", "postgresql://u@db/h", None),
])
def test_connect_timeout_is_taken_out_for_the_client(dsn: str, cleaned: str,
                                                     timeout: float | None) -> None:
    assert split_client_options(dsn) == (cleaned, timeout)


@pytest.mark.parametrize("value", ["soon", "", "nan", "3s"])
def test_a_connect_timeout_that_is_no_number_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="connect_timeout must be a number of seconds"):
        split_client_options(f"postgresql://u:pw@db/h?connect_timeout={value}")
