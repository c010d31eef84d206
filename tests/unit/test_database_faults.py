"""The fault table (README "The database's faults"), read as a table: every SQLSTATE class
it names maps as the README says, every error asyncpg can raise gets a verdict, and the
error it becomes carries the action in its class and the cause in its message."""

from __future__ import annotations

import socket
import ssl

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.database_faults import (
    BY_CLASS,
    BY_CODE,
    UNKNOWN,
    Action,
    by_sqlstate,
    classify,
    error_for,
)
from harvester.errors import (
    DatabaseConfigError,
    StoreConflict,
    StoreError,
    StoreTimedOut,
    StoreUnavailable,
    UserError,
    ValueRefused,
)

WAIT, NOW, TIMED, ROW, CONFIG, ODD = (Action.WAIT_OUT, Action.RETRY_NOW, Action.TIMED_OUT,
                                      Action.REFUSE_ROW, Action.CONFIGURATION,
                                      Action.UNEXPECTED)

# The README's table, row by row: (SQLSTATE, action).
README_TABLE = [
    # wait out
    ("08000", WAIT), ("08001", WAIT), ("08003", WAIT), ("08006", WAIT), ("08P01", WAIT),
    ("57P01", WAIT), ("57P02", WAIT), ("57P03", WAIT), ("57P04", WAIT), ("57P05", WAIT),
    ("57000", WAIT), ("25006", WAIT), ("25P03", WAIT),
    ("53000", WAIT), ("53100", WAIT), ("53200", WAIT), ("53300", WAIT), ("53400", WAIT),
    ("55000", WAIT), ("55006", WAIT), ("58000", WAIT), ("58030", WAIT), ("58P01", WAIT),
    # retried at once, then waited out
    ("40000", NOW), ("40001", NOW), ("40P01", NOW), ("40003", NOW), ("72000", NOW),
    # timed out: waited out by claims and writes, a refusal for the purge
    ("57014", TIMED), ("55P03", TIMED), ("25P04", TIMED),
    # refuse the row
    ("22000", ROW), ("22001", ROW), ("22003", ROW), ("22P02", ROW), ("22P05", ROW),
    ("23000", ROW), ("23502", ROW), ("23505", ROW), ("23514", ROW), ("21000", ROW),
    ("54000", ROW),
    # configuration
    ("28000", CONFIG), ("28P01", CONFIG), ("3D000", CONFIG), ("42501", CONFIG),
    ("3F000", CONFIG), ("42P01", CONFIG), ("42703", CONFIG), ("42883", CONFIG),
    # unexpected: waited out, loudly
    ("XX000", ODD), ("XX001", ODD), ("XX002", ODD), ("0A000", ODD), ("42601", ODD),
    ("42000", ODD), ("P0001", ODD), ("25P02", ODD), ("26000", ODD), ("F0000", ODD),
    ("HV000", ODD),
]


@pytest.mark.parametrize(("code", "action"), README_TABLE)
def test_each_sqlstate_maps_as_the_readme_says(code: str, action: Action) -> None:
    assert by_sqlstate(code).action is action


def test_a_code_the_table_does_not_name_is_judged_by_its_class() -> None:
    assert by_sqlstate("08999").action is WAIT  # a future connection exception
    assert by_sqlstate("22ZZZ").action is ROW
    assert by_sqlstate("ZZ999") is UNKNOWN


def test_the_table_names_only_real_codes_and_classes() -> None:
    assert all(len(code) == 5 for code in BY_CODE)
    assert all(len(cls) == 2 for cls in BY_CLASS)
    # An exact code never contradicts its class by accident: where it differs, the
    # README says why (25006/25P03 in an unexpected class, timeouts, configuration).
    assert {code for code, fault in BY_CODE.items()
            if code[:2] in BY_CLASS and BY_CLASS[code[:2]].action is not fault.action} == {
        "57014", "55P03"}


def _postgres_errors() -> list[type[asyncpg.PostgresError]]:
    found = []
    for name in dir(asyncpg.exceptions):
        cls = getattr(asyncpg.exceptions, name)
        if isinstance(cls, type) and issubclass(cls, asyncpg.PostgresError) \
                and isinstance(getattr(cls, "sqlstate", None), str):
            found.append(cls)
    return found


@pytest.mark.parametrize("cls", _postgres_errors(), ids=lambda c: f"{c.sqlstate}-{c.__name__}")
def test_every_asyncpg_error_gets_the_verdict_of_its_sqlstate(
        cls: type[asyncpg.PostgresError]) -> None:
    exc = cls("message")
    fault = classify(exc)
    if cls is asyncpg.InvalidCachedStatementError:
        assert fault.action is NOW  # asyncpg dropped the statement: prepare it anew
    else:
        assert fault == by_sqlstate(cls.sqlstate)
    assert isinstance(error_for(exc), StoreError)


@pytest.mark.parametrize(("exc", "action"), [
    (ConnectionResetError(104, "Connection reset by peer"), WAIT),
    (OSError(111, "Connection refused"), WAIT),
    (TimeoutError(), WAIT),
    (asyncpg.InterfaceError("cannot perform operation: connection is closed"), WAIT),
    (asyncpg.InternalClientError("cannot switch to state 12"), WAIT),
    (socket.gaierror(-2, "Name or service not known"), WAIT),
    (asyncpg.OutdatedSchemaCacheError("type changed"), NOW),
    (asyncpg.ClientConfigurationError("bad sslmode"), CONFIG),
    (ssl.SSLCertVerificationError("certificate verify failed"), CONFIG),
    (RuntimeError("not the database's"), ODD),
])
def test_the_clients_own_errors(exc: BaseException, action: Action) -> None:
    assert classify(exc).action is action


@pytest.mark.parametrize(("cls", "expected", "starts"), [
    (asyncpg.ReadOnlySQLTransactionError, StoreUnavailable, "database unavailable: "),
    (asyncpg.DeadlockDetectedError, StoreConflict, "database unavailable: "),
    (asyncpg.QueryCanceledError, StoreTimedOut, "database unavailable: "),
    (asyncpg.StringDataRightTruncationError, ValueRefused, "database refused a value: "),
    (asyncpg.InsufficientPrivilegeError, DatabaseConfigError, "HARVESTER_DATABASE_URL: "),
    (asyncpg.InternalServerError, StoreError, "database error: "),
])
def test_the_error_carries_the_action_in_its_class_and_the_cause_in_its_message(
        cls: type[asyncpg.PostgresError], expected: type[StoreError], starts: str) -> None:
    error = error_for(cls("what the server said\nDETAIL: more"))
    assert type(error) is expected
    assert str(error).startswith(starts)
    assert f"({cls.sqlstate} {cls.__name__}: what the server said)" in str(error)
    assert error.code == cls.sqlstate


def test_a_fault_of_configuration_is_a_users_mistake_and_names_the_variable() -> None:
    error = error_for(asyncpg.InsufficientPrivilegeError("permission denied for table jobs"))
    assert isinstance(error, UserError) and error.exit_status == 2
    assert str(error) == ("HARVESTER_DATABASE_URL: the role lacks a privilege (42501 "
                          "InsufficientPrivilegeError: permission denied for table jobs)")


def test_only_a_read_only_node_or_a_dropped_database_retires_the_sessions() -> None:
    assert {code for code, fault in BY_CODE.items() if fault.reconnect} == {"25006", "57P04"}
    assert not any(fault.reconnect for fault in BY_CLASS.values())


def test_an_unresolvable_host_says_so_without_errno() -> None:
    error = error_for(socket.gaierror(-2, "Name or service not known"))
    assert isinstance(error, StoreUnavailable)
    assert "[Errno" not in str(error)
    assert "HARVESTER_DATABASE_URL" in str(error)
    assert "Name or service not known" in str(error)


@given(st.text(min_size=5, max_size=5))
def test_any_five_characters_get_a_verdict(code: str) -> None:
    assert by_sqlstate(code).action in Action
