"""``sandtree token``: create, list and revoke, against the server's token store."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sandtree.api import TokenStore
from sandtree.cli import cli


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
