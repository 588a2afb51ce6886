"""Token expiry: the store judges it by an injected clock, the API refuses expired tokens with
a 401 that says when, whoami reports it, and older token databases are migrated."""

from __future__ import annotations

import datetime
import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sandtree.api import TokenStore
from sandtree.api.openapi import openapi_document
from sandtree.engine.runtime import CgroupHost
from sandtree.errors import InvalidRequestError, TokenExpiredError, UnauthorizedError
from sandtree.testing import FakeClock

if TYPE_CHECKING:
    from conftest import Api  # the fixture's type, from tests/api/conftest.py

CREATED = "2026-01-01T00:00:00+00:00"
HOUR = datetime.timedelta(hours=1)
SECOND = datetime.timedelta(seconds=1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(CREATED)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[TokenStore]:
    tokens = TokenStore(tmp_path / "tokens.db", clock=clock)
    yield tokens
    tokens.close()


def test_a_token_without_an_expiry_never_expires(store: TokenStore, clock: FakeClock) -> None:
    record, secret = store.create(name="ci", created_at=CREATED)

    clock.advance(datetime.timedelta(days=3650))

    assert record.expires_at is None
    assert store.authenticate(secret).uuid == record.uuid


def test_a_token_works_until_its_expiry_and_is_refused_from_then_on(
    store: TokenStore, clock: FakeClock
) -> None:
    record, secret = store.create(name="ci", created_at=CREATED, expires_at=clock() + HOUR)

    clock.advance(HOUR - SECOND)
    assert store.authenticate(secret).uuid == record.uuid
    clock.advance(SECOND)

    with pytest.raises(TokenExpiredError) as refused:
        store.authenticate(secret)
    assert refused.value.status == 401
    assert "expired at 2026-01-01T01:00:00+00:00" in refused.value.message
    assert "sandtree token create" in refused.value.message
    assert store.verify(secret) is None


def test_an_unknown_token_is_refused_with_a_message_that_is_not_about_expiry(
    store: TokenStore,
) -> None:
    with pytest.raises(UnauthorizedError) as refused:
        store.authenticate("st_no-such-token")

    assert not isinstance(refused.value, TokenExpiredError)
    assert "unknown or revoked" in refused.value.message


def test_an_expiry_that_is_not_in_the_future_is_refused_on_create(
    store: TokenStore, clock: FakeClock
) -> None:
    with pytest.raises(InvalidRequestError, match="not in the future"):
        store.create(name="ci", created_at=CREATED, expires_at=clock())


def test_the_expiry_is_kept_in_utc_to_the_second_across_reopening(
    tmp_path: Path, store: TokenStore, clock: FakeClock
) -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    local = datetime.datetime(2026, 1, 1, 5, 0, 0, 123456, tzinfo=plus_two)
    store.create(name="ci", created_at=CREATED, expires_at=local)

    reopened = TokenStore(tmp_path / "tokens.db", clock=clock)
    (record,) = reopened.list()
    reopened.close()
    with sqlite3.connect(tmp_path / "tokens.db") as db:
        (stored,) = db.execute("SELECT expires_at FROM tokens").fetchone()
    db.close()

    assert stored == "2026-01-01T03:00:00+00:00"
    assert record.expires_at == datetime.datetime(2026, 1, 1, 3, tzinfo=datetime.UTC)


OLD_COLUMNS = (
    "uuid TEXT PRIMARY KEY, name TEXT NOT NULL, namespace TEXT NOT NULL, hash TEXT NOT NULL"
    " UNIQUE, permissions TEXT NOT NULL, limits TEXT NOT NULL, created_at TEXT NOT NULL"
)


def _old_database(path: Path, columns: str, secret: str, *extra: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE tokens ({columns}, revoked INTEGER NOT NULL DEFAULT 0)")
        names = ", expires_at" if extra else ""
        db.execute(
            f"INSERT INTO tokens(uuid, name, namespace, hash, permissions, limits, created_at"
            f"{names}) VALUES (?,?,?,?,?,?,?{',?' if extra else ''})",
            ("old-uuid", "old", "default", hashlib.sha256(secret.encode()).hexdigest(),
             '["list"]', "{}", CREATED, *extra),
        )  # fmt: skip
    db.close()


def test_a_database_without_the_expiry_column_gets_it_and_keeps_its_tokens(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "tokens.db"
    _old_database(path, OLD_COLUMNS, "st_old")

    store = TokenStore(path, clock=clock)
    _, secret = store.create(name="new", created_at=CREATED, expires_at=clock() + HOUR)

    old = store.authenticate("st_old")
    assert (old.uuid, old.expires_at) == ("old-uuid", None)
    assert store.authenticate(secret).expires_at == clock() + HOUR
    store.close()
    TokenStore(path, clock=clock).close()  # opening it again adds nothing
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(tokens)")]
    db.close()
    assert columns.count("expires_at") == 1


def test_a_database_from_the_release_with_an_integer_expiry_column_keeps_working(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "tokens.db"
    in_an_hour = int((clock() + HOUR).timestamp())
    _old_database(path, OLD_COLUMNS + ", expires_at INTEGER", "st_old", in_an_hour)

    store = TokenStore(path, clock=clock)
    _, secret = store.create(name="new", created_at=CREATED, expires_at=clock() + 2 * HOUR)

    assert store.authenticate("st_old").expires_at == clock() + HOUR
    assert store.authenticate(secret).expires_at == clock() + 2 * HOUR
    clock.advance(HOUR)
    with pytest.raises(TokenExpiredError):
        store.authenticate("st_old")
    store.close()


@pytest.mark.anyio
async def test_expired_token_is_refused_with_401_naming_when_it_expired(api: Api) -> None:
    headers = api.token("list", expires_at=api.clock() + HOUR)
    before = await api.http.get("/v1/images", headers=headers)

    api.clock.advance(HOUR)
    after = await api.http.get("/v1/images", headers=headers)

    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json() == {
        "error": "this token expired at 2026-01-01T01:00:00+00:00; `sandtree token create` "
        "makes a new one (`--expires-in` sets how long it lasts)",
        "status": 401,
    }


@pytest.mark.anyio
async def test_an_unknown_token_gets_401_that_does_not_speak_of_expiry(api: Api) -> None:
    response = await api.http.get("/v1/images", headers={"Authorization": "Bearer st_nope"})

    assert response.status_code == 401
    assert "unknown or revoked" in response.json()["error"]
    assert "expired" not in response.json()["error"]


@pytest.mark.anyio
async def test_whoami_reports_the_expiry_as_unix_time_and_as_iso_8601(api: Api) -> None:
    expires = api.clock() + HOUR

    body = (await api.http.get("/v1/whoami", headers=api.token(expires_at=expires))).json()
    forever = (await api.http.get("/v1/whoami", headers=api.auth)).json()

    assert body["token_expiration"] == int(expires.timestamp())
    assert body["expires_at"] == "2026-01-01T01:00:00+00:00"
    assert (forever["token_expiration"], forever["expires_at"]) == (None, None)


@pytest.mark.anyio
async def test_whoami_fields_beyond_the_contract_are_documented_as_ours(api: Api) -> None:
    body = (await api.http.get("/v1/whoami", headers=api.auth)).json()
    schemas = openapi_document()["components"]["schemas"]
    contract, ours = schemas["WhoAmIResponse"], schemas["SandtreeWhoAmIFields"]

    assert contract.get("additionalProperties", True) is not False
    assert ours["x-sandtree"] is True
    assert set(body) - set(contract["properties"]) == set(ours["properties"])


@pytest.mark.anyio
async def test_whoami_names_the_cgroup_mode_the_engine_found_on_its_host(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = CgroupHost(mode="v2", root=Path("/sys/fs/cgroup"), unified=None, controllers=())
    monkeypatch.setattr(api.engine, "cgroups", lambda: found)

    body = (await api.http.get("/v1/whoami", headers=api.auth)).json()

    assert body["cgroup_mode"] == "v2"
    modes = openapi_document()["components"]["schemas"]["SandtreeWhoAmIFields"]["properties"]
    assert modes["cgroup_mode"]["enum"] == ["v1", "hybrid", "v2"]


def test_a_token_made_before_push_with_every_permission_of_its_time_can_push_after_the_upgrade(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "tokens.db"
    _old_database(path, OLD_COLUMNS, "st_list_only")
    earlier = '["cancel","import","list","set_image_tag","spawn","spawn_disposable","upload"]'
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO tokens(uuid, name, namespace, hash, permissions, limits, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            ("admin-uuid", "admin", "default", hashlib.sha256(b"st_admin").hexdigest(),
             earlier, "{}", CREATED),
        )  # fmt: skip
    db.close()

    store = TokenStore(path, clock=clock)

    assert "push" in store.authenticate("st_admin").permissions
    assert store.authenticate("st_list_only").permissions == frozenset({"list"})
    store.close()
