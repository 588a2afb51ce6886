"""``sandtree token``: create, list and revoke, against the server's token store."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandtree.api import TokenStore
from sandtree.cli import cli
from sandtree.testing import FakeClock


def test_token_create_list_revoke_round_trip(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]

    create = ["token", "create", "--name", "ci", "--namespace", "team-a", "--permission", "list"]
    created = runner.invoke(cli, [*create, *data])
    assert created.exit_code == 0, created.output
    token_uuid, secret = created.output.split()
    store = TokenStore(tmp_path / "tokens.db")
    record = store.verify(secret)
    assert record is not None
    assert (record.namespace, record.permissions) == ("team-a", frozenset({"list"}))

    listed = runner.invoke(cli, ["token", "list", *data])
    assert token_uuid in listed.output
    assert secret not in listed.output

    revoked = runner.invoke(cli, ["token", "revoke", token_uuid, *data])
    assert revoked.exit_code == 0
    assert store.verify(secret) is None
    missing = runner.invoke(cli, ["token", "revoke", "no-such-token", *data])
    assert missing.exit_code == 1
    assert "sandtree token list" in missing.output


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_expires_in_sets_the_expiry_that_far_from_now(
    tmp_path: Path, duration: str, seconds: int
) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    created = CliRunner().invoke(
        cli, ["token", "create", "--expires-in", duration, "--data-dir", str(tmp_path)]
    )
    after = datetime.datetime.now(datetime.UTC)

    assert created.exit_code == 0, created.output
    _, secret = created.stdout.split()
    with contextlib.closing(TokenStore(tmp_path / "tokens.db")) as store:
        record = store.verify(secret)
    assert record is not None
    assert record.expires_at is not None
    assert before <= record.expires_at - datetime.timedelta(seconds=seconds) <= after
    assert f"expires at {record.expires_at.isoformat()}" in created.stderr


@pytest.mark.parametrize("duration", ["7", "3x", "0d", "-1h", "1.5h", "h", "7 days"])
def test_a_bad_expires_in_fails_with_one_line_naming_the_accepted_forms(
    tmp_path: Path, duration: str
) -> None:
    result = CliRunner().invoke(
        cli, ["token", "create", "--expires-in", duration, "--data-dir", str(tmp_path)]
    )

    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "90s, 30m, 12h, 7d or 2w" in result.output
    with contextlib.closing(TokenStore(tmp_path / "tokens.db")) as store:
        assert store.list() == []


def test_expires_at_takes_an_iso_8601_time_and_keeps_it_in_utc(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = CliRunner().invoke(
        cli, ["token", "create", "--expires-at", "2999-07-01T12:00:00+02:00", *data]
    )
    both = CliRunner().invoke(
        cli, ["token", "create", "--expires-at", "2999-07-01", "--expires-in", "7d", *data]
    )
    past = CliRunner().invoke(cli, ["token", "create", "--expires-at", "2000-01-01", *data])

    assert created.exit_code == 0, created.output
    with contextlib.closing(TokenStore(tmp_path / "tokens.db")) as store:
        (record,) = store.list()
    assert record.expires_at == datetime.datetime(2999, 7, 1, 10, tzinfo=datetime.UTC)
    assert (both.exit_code, past.exit_code) == (1, 1)
    assert "not both" in both.output
    assert "not in the future" in past.output


def test_list_shows_each_expiry_and_marks_expired_ones(tmp_path: Path) -> None:
    long_ago = TokenStore(tmp_path / "tokens.db", clock=FakeClock("2020-01-01T00:00:00+00:00"))
    expired, _ = long_ago.create(
        name="old",
        created_at="2020-01-01T00:00:00+00:00",
        expires_at=datetime.datetime(2020, 1, 2, tzinfo=datetime.UTC),
    )
    forever, _ = long_ago.create(name="forever", created_at="2020-01-01T00:00:01+00:00")
    long_ago.close()
    runner = CliRunner()
    runner.invoke(cli, ["token", "create", "--name", "week", "--expires-in", "7d",
                        "--data-dir", str(tmp_path)])  # fmt: skip

    listed = runner.invoke(cli, ["token", "list", "--data-dir", str(tmp_path)])

    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert header.split() == ["UUID", "NAME", "NAMESPACE", "STATE", "EXPIRES", "PERMISSIONS"]
    by_name = {row.split()[1]: row.split() for row in rows}
    assert by_name["old"][:5] == [
        expired.uuid, "old", "default", "expired", "2020-01-02T00:00:00+00:00"
    ]  # fmt: skip
    assert by_name["forever"][:5] == [forever.uuid, "forever", "default", "active", "never"]
    assert by_name["week"][3] == "active"
    assert by_name["week"][4].endswith("+00:00")
