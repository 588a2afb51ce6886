"""Finding 8 and its siblings: one tenant's effects on, and view of, another's through what
they share (public images), and by naming the other's ids; plus the worker pool's fairness
and env values kept in operations.

Bob attacks, alice is the victim. Every answer to bob about alice's things must be the answer
about a thing that does not exist (same status, same words but for the id): a 404 that
differs from the 404 of a missing id is still an existence oracle.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server, wait_until

_TERMINAL = ("SUCCESS", "FAILED", "CANCELLED")


def _busybox(tenant: Tenant) -> str:
    with tenant.client() as http:
        listed = http.get("/v1/images", params={"tag": "busybox:latest"}).json()["images"]
    assert len(listed) == 1, listed
    return str(listed[0]["uuid"])


def _kept(tenant: Tenant, command: str, image: str = "tag:busybox:latest") -> dict[str, Any]:
    """A kept run of ``command`` (it must change the filesystem); its operation."""
    with tenant.client() as http:
        answer = http.post(
            "/v1/instances",
            json={"command": command, "image": image, "shell": True, "timeout": 20},
        )
        assert answer.status_code == 201, answer.text
    op = tenant.wait(answer.json()["uuid"])
    assert op["status"] == "SUCCESS", op["error"]
    assert op["result_image_uuid"], op
    return op


def _tags_seen(tenant: Tenant, **params: str) -> set[str]:
    with tenant.client() as http:
        images = http.get("/v1/images", params={"limit": "1000", **params}).json()["images"]
    return {i["tag"] for i in images if i["tag"]}


# -- tags -----------------------------------------------------------------------------------


def test_bobs_bare_untag_of_public_busybox_leaves_alices_tag_and_the_public_one(
    hostile: HostileServer,
) -> None:
    busybox = _busybox(hostile.alice)
    with hostile.alice.client() as alice:
        tagged = alice.patch(f"/v1/images/{busybox}/tag", json={"tag": "alice/base:pinned"})
        assert tagged.status_code == 200, tagged.text
        assert tagged.json()["tag"] == "alice/base:pinned"

    with LatencyProbe(hostile.alice), hostile.bob.client() as bob:
        bare = bob.delete(f"/v1/images/{busybox}/tag")
        public = bob.delete(f"/v1/images/{busybox}/tag", params={"tag": "busybox:latest"})
        theirs = bob.delete(f"/v1/images/{busybox}/tag", params={"tag": "alice/base:pinned"})

    assert bare.status_code == 204  # it removed bob's own tags of it: none
    assert public.status_code == 403
    assert theirs.status_code == 400  # not bob's: as if no such tag existed
    assert "alice/base:pinned" in _tags_seen(hostile.alice, tag="alice/base")
    assert _busybox(hostile.bob) == busybox
    assert hostile.bob.spawn("true")["status"] == "SUCCESS"  # tag:busybox:latest still runs


def test_bob_never_sees_or_matches_alices_tag_of_public_busybox(hostile: HostileServer) -> None:
    busybox = _busybox(hostile.alice)
    secret = "aaa-alice-secret-name"  # sorts before busybox:latest: the old tags[0]
    with hostile.alice.client() as alice:
        assert alice.patch(f"/v1/images/{busybox}/tag", json={"tag": secret}).status_code == 200

    with LatencyProbe(hostile.alice), hostile.bob.client() as bob:
        answers = [
            bob.get("/v1/images", params={"limit": "1000"}),
            bob.get("/v1/images", params={"tag": "aaa"}),
            bob.get("/v1/images", params={"uuid": busybox}),
            bob.get(f"/v1/inspect/{busybox}/"),
            bob.get(f"/v1/images/{busybox}/lineage"),
            bob.head(f"/v1/images/{busybox}/export"),
        ]
        by_tag = bob.get("/v1/inspect/", params={"tag": secret}, follow_redirects=False)
        missing_tag = bob.get("/v1/inspect/", params={"tag": "no-such-tag"})
        spawn = bob.post("/v1/instances", json={"command": "true", "image": f"tag:{secret}"})
        spawn_missing = bob.post("/v1/instances", json={"command": "true", "image": "tag:nope"})

    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert secret not in answer.text
        assert secret not in answer.headers.get("content-disposition", "")
    assert answers[1].json() == {"images": []}
    assert _same_answer(by_tag, missing_tag, secret, "no-such-tag", status=404)
    assert _same_answer(spawn, spawn_missing, secret, "nope", status=400)
    assert secret in _tags_seen(hostile.alice, tag="aaa")


def test_a_tag_filter_answers_with_the_tag_it_matched(hostile: HostileServer) -> None:
    busybox = _busybox(hostile.bob)
    with hostile.bob.client() as bob:
        tagged = bob.patch(f"/v1/images/{busybox}/tag", json={"tag": "zzz-bob:1"})
        matched = bob.get("/v1/images", params={"tag": "zzz-bob"}).json()["images"]
        bob.delete(f"/v1/images/{busybox}/tag", params={"tag": "zzz-bob:1"})  # others' view

    assert tagged.json()["tag"] == "zzz-bob:1"
    assert [i["tag"] for i in matched] == ["zzz-bob:1"]


# -- lineage ----------------------------------------------------------------------------------


def test_lineage_of_public_busybox_seen_by_bob_shows_none_of_alices_children(
    hostile: HostileServer,
) -> None:
    busybox = _busybox(hostile.alice)
    alices = _kept(hostile.alice, "echo alice-secret-command > /alice")["result_image_uuid"]
    bobs = _kept(hostile.bob, "echo bob > /bob")["result_image_uuid"]

    with LatencyProbe(hostile.alice), hostile.bob.client() as bob:
        seen = bob.get(f"/v1/images/{busybox}/lineage")
        own = bob.get(f"/v1/images/{bobs}/lineage").json()

    assert seen.status_code == 200
    children = [c["uuid"] for c in seen.json()["children"]]
    assert bobs in children
    assert alices not in children
    assert "alice-secret-command" not in seen.text
    assert [a["uuid"] for a in own["ancestors"]] == [busybox]  # a public ancestor is shown
    assert own["parent"]["tag"] == "busybox:latest"
    with hostile.alice.client() as alice:
        hers = alice.get(f"/v1/images/{busybox}/lineage").json()["children"]
    assert alices in [c["uuid"] for c in hers]
    assert bobs not in [c["uuid"] for c in hers]


# -- naming another tenant's ids: the answer for something that does not exist ---------------


def _same_answer(
    theirs: httpx.Response, missing: httpx.Response, their_id: str, missing_id: str, status: int
) -> bool:
    """``theirs`` is ``missing``'s answer, word for word but for the id."""
    assert theirs.status_code == status, theirs.text
    assert missing.status_code == status, missing.text
    return theirs.text.replace(their_id, "ID") == missing.text.replace(missing_id, "ID")


@pytest.fixture(scope="module")
def alices_things(hostile: HostileServer) -> dict[str, str]:
    """Alice's private image, the operation that made it, an uploaded file and a state."""
    op = _kept(hostile.alice, "echo private > /private")
    content = b"alice's private file\n"
    with hostile.alice.client() as alice:
        upload = alice.post("/v1/files", content=content).json()
        state = alice.post(
            "/v1/directory_states", json={"files": {"/x": {"uuid": upload["uuid"]}}}
        ).json()
    return {
        "image": op["result_image_uuid"],
        "op": op["uuid"],
        "file": upload["uuid"],
        "sha": hashlib.sha256(content).hexdigest(),
        "state": str(state["id"]),
    }


#: (method, path, body) naming one of alice's things as ``{image}``, ``{op}``, ``{sha}``…
_BY_ID: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/images/{image}/lineage", None),
    ("GET", "/v1/images/{image}/diff", None),
    ("GET", "/v1/images/{busybox}/diff?against={image}", None),
    ("GET", "/v1/images/{image}/export", None),
    ("HEAD", "/v1/images/{image}/export", None),
    ("POST", "/v1/images/{image}/push", {"registry": {"url": "docker://127.0.0.1:1/x:y"}}),
    ("PATCH", "/v1/images/{image}/tag", {"tag": "bob-steals"}),
    ("DELETE", "/v1/images/{image}/tag", None),
    ("GET", "/v1/inspect/{image}/", None),
    ("GET", "/v1/inspect/{image}/list?path=/", None),
    ("GET", "/v1/inspect/{image}/download?path=/private", None),
    ("GET", "/v1/inspect/{image}/archive?path=/", None),
    ("GET", "/v1/inspect/{image}/grep?pattern=private&path=/", None),
    ("GET", "/v1/operations/{op}", None),
    ("DELETE", "/v1/operations/{op}", None),
    ("GET", "/v1/operations/{op}/events", None),
    ("GET", "/v1/operations/{op}/subprocesses/1", None),
    ("POST", "/v1/operations/{op}/subprocesses", {"command": "true"}),
    ("GET", "/v1/files/{sha}", None),
    ("HEAD", "/v1/files/{sha}", None),
    ("GET", "/v1/directory_states/{state}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), _BY_ID)
def test_naming_alices_thing_gets_bob_the_404_of_a_missing_one(
    hostile: HostileServer,
    alices_things: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    missing = {
        "image": str(uuid.uuid4()),
        "op": str(uuid.uuid4()),
        "sha": hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
        "state": "999999999",
        "file": str(uuid.uuid4()),
    }
    busybox = _busybox(hostile.bob)
    with LatencyProbe(hostile.alice), hostile.bob.client() as bob:
        theirs = bob.request(method, path.format(busybox=busybox, **alices_things), json=body)
        nothing = bob.request(method, path.format(busybox=busybox, **missing), json=body)

    key = next(k for k in missing if "{" + k + "}" in path)
    assert _same_answer(theirs, nothing, alices_things[key], missing[key], status=404)


_IN_A_BODY: list[tuple[str, Callable[[dict[str, str]], dict[str, Any]]]] = [
    ("image", lambda ids: {"image": ids["image"]}),
    ("file", lambda ids: {"image": "tag:busybox:latest", "files": {"/f": {"uuid": ids["file"]}}}),
    ("state", lambda ids: {"image": "tag:busybox:latest", "directory_state_id": int(ids["state"])}),
]


@pytest.mark.parametrize(("key", "body"), _IN_A_BODY, ids=[k for k, _ in _IN_A_BODY])
def test_a_run_from_alices_image_file_or_state_is_refused_as_if_it_did_not_exist(
    hostile: HostileServer,
    alices_things: dict[str, str],
    key: str,
    body: Callable[[dict[str, str]], dict[str, Any]],
) -> None:
    missing = {"image": str(uuid.uuid4()), "file": str(uuid.uuid4()), "state": "999999999"}
    run = {"command": "cat /f /x /private", "shell": True, "disposable": True}
    with hostile.bob.client() as bob:
        theirs = bob.post("/v1/instances", json={**run, **body(alices_things)})
        nothing = bob.post("/v1/instances", json={**run, **body(missing)})

    assert theirs.status_code in (400, 404), theirs.text
    assert _same_answer(theirs, nothing, alices_things[key], missing[key], theirs.status_code)


def test_bobs_listings_hold_nothing_of_alices(
    hostile: HostileServer, alices_things: dict[str, str]
) -> None:
    with hostile.bob.client() as bob:
        images = bob.get("/v1/images", params={"limit": "1000"}).text
        by_uuid = bob.get("/v1/images", params={"uuid": alices_things["image"]}).json()
        operations = bob.get("/v1/operations", params={"limit": "1000"}).text
        files = bob.get("/v1/files", params={"limit": "1000"}).text
        lookup = bob.post("/v1/files/lookup", json={"sha256": [alices_things["sha"]]}).json()

    assert alices_things["image"] not in images
    assert by_uuid == {"images": []}
    assert alices_things["op"] not in operations
    assert alices_things["file"] not in files
    assert lookup == {"files": {}}


def test_bobs_kept_child_of_public_busybox_is_bobs_alone(hostile: HostileServer) -> None:
    op = _kept(hostile.bob, "echo mine > /bobs-own")
    child = op["result_image_uuid"]

    with hostile.alice.client() as alice:
        listed = alice.get("/v1/images", params={"uuid": child}).json()
        lineage = alice.get(f"/v1/images/{child}/lineage")
        run = alice.post("/v1/instances", json={"command": "true", "image": child})
        bobs_op = alice.get(f"/v1/operations/{op['uuid']}")

    assert listed == {"images": []}
    assert lineage.status_code == 404
    assert run.status_code == 400
    assert bobs_op.status_code == 404


def test_a_published_image_names_the_operation_that_made_it_to_its_publisher_only(
    hostile: HostileServer,
) -> None:
    publisher = hostile.tenant("publisher", "public")
    op = _kept(publisher, "echo published > /published")
    image = op["result_image_uuid"]

    with hostile.bob.client() as bob:
        listed = bob.get("/v1/images", params={"uuid": image}).json()["images"]
        their_op = bob.get(f"/v1/operations/{op['uuid']}")
        events = bob.get(f"/v1/operations/{op['uuid']}/events")
        lineage = bob.get(f"/v1/images/{image}/lineage").json()

    assert [i["uuid"] for i in listed] == [image]  # published: bob sees and may run it
    assert listed[0]["operation_uuid"] is None
    assert lineage["image"]["operation_uuid"] is None
    assert (their_op.status_code, events.status_code) == (404, 404)
    with publisher.client() as own:
        mine = own.get("/v1/images", params={"uuid": image}).json()["images"]
    assert mine[0]["operation_uuid"] == op["uuid"]


# -- env values ----------------------------------------------------------------------------


def test_env_values_are_kept_nowhere_an_operation_is_served_or_stored(
    hostile: HostileServer,
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    env = {"DATABASE_URL": f"postgres://alice:{secret}@db/app", "PLAIN": secret}
    with hostile.alice.client() as alice:
        created = alice.post(
            "/v1/instances",
            json={"command": 'printf %s "$PLAIN" | sha256sum', "image": "tag:busybox:latest",
                  "shell": True, "disposable": True, "env": env},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        op = hostile.alice.wait(created.json()["uuid"])
        events = alice.get(f"/v1/operations/{op['uuid']}/events").text
        listed = alice.get("/v1/operations", params={"limit": "1000"}).text

    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert op["metadata"]["result"]["stdout"]["value"].startswith(digest)  # the run got it
    assert op["metadata"]["env"] == {"DATABASE_URL": "<MASKED>", "PLAIN": "<MASKED>"}
    for served in (created.text, str(op), events, listed):
        assert secret not in served
    stored = [p for p in hostile.data_dir.glob("sandtree.db*") if p.is_file()]
    assert stored
    assert all(secret.encode() not in p.read_bytes() for p in stored)


# -- fairness ------------------------------------------------------------------------------


def _status(tenant: Tenant, op_id: str) -> str:
    with tenant.client() as http:
        return str(http.get(f"/v1/operations/{op_id}").json()["status"])


def _errors(tenant: Tenant, ops: list[str]) -> list[tuple[str, str | None]]:
    with tenant.client() as http:
        found = [http.get(f"/v1/operations/{op}").json() for op in ops]
    return [(op["status"], op["error"]) for op in found]


def test_alices_flood_of_long_runs_leaves_bob_a_slot_at_once(
    tmp_path: Path, busybox_rootfs: Path
) -> None:
    env = {"SANDTREE_MAX_CONCURRENCY": "2"}
    with start_hostile_server(tmp_path, busybox_rootfs, env=env) as server:
        flood: list[str] = []
        with server.alice.client() as alice:
            for _ in range(5):
                answer = alice.post(
                    "/v1/instances",
                    json={"command": "sleep 120", "image": "tag:busybox:latest", "shell": True,
                          "disposable": True, "timeout": 150},
                )  # fmt: skip
                assert answer.status_code == 201, answer.text
                flood.append(answer.json()["uuid"])
        try:
            wait_until(lambda: _status(server.alice, flood[0]) == "EXECUTING", "alice's run", 30)
            with LatencyProbe(server.bob), server.bob.client() as bob:
                answer = bob.post(
                    "/v1/instances",
                    json={"command": "sleep 5", "image": "tag:busybox:latest", "shell": True,
                          "disposable": True, "timeout": 30},
                )  # fmt: skip
                bobs = answer.json()["uuid"]
                # Well below the 120 s alice's runs hold their slots for.
                wait_until(
                    lambda: _status(server.bob, bobs) in ("EXECUTING", *_TERMINAL),
                    "bob's run starting while alice's flood runs",
                    30,
                )
            statuses = [_status(server.alice, op) for op in flood]
            # Bob did not just get a slot alice's ended runs had left.
            assert "EXECUTING" in statuses, _errors(server.alice, flood)
            assert statuses.count("PENDING") >= 3, statuses
        finally:
            with server.alice.client() as alice:
                for op in flood:
                    alice.delete(f"/v1/operations/{op}")
