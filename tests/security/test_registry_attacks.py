"""Attacks through a hostile registry: slow drips that would pin threads, oversized bodies,
manifests too large or too deep, redirects, token realms and upload locations pointing at
internal services, error bodies fishing for echoes, layers claimed by digest, pushes without
the permission.

The server allows exactly one registry, the hostile one (``SANDTREE_INSECURE_REGISTRIES``
lists its port). A second scripted registry on another loopback port plays an internal
service: nothing may ever reach it. Every attack runs while bob's listings are probed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.api._tokens import PERMISSIONS
from sandtree.testing_registry import (
    MEDIA_CONFIG,
    MEDIA_MANIFEST,
    Entry,
    ScriptedRegistry,
    layer_tar,
)

from .hostile import HostileServer, LatencyProbe, Tenant, start_hostile_server

#: What every refusal of a destination tells the operator to do.
GUIDANCE = ("SANDTREE_INSECURE_REGISTRIES", "SANDTREE_ALLOWED_REGISTRIES")
LAYER = layer_tar([Entry(path="etc", kind="dir"), Entry(path="etc/hostile", data=b"hi\n")])


def _layer(name: str) -> bytes:
    """A layer no other test imports (a layer imported before is reused, never fetched)."""
    return layer_tar([Entry(path=name, data=f"{name}\n".encode())])


@pytest.fixture(scope="module")
def internal() -> Iterator[ScriptedRegistry]:
    """An internal service on loopback (another port): it must never receive a request."""
    with ScriptedRegistry() as service:
        service.routes["/v2/x/manifests/latest"] = (200, MEDIA_MANIFEST, b"{}")
        yield service


@pytest.fixture(scope="module")
def registry() -> Iterator[ScriptedRegistry]:
    with ScriptedRegistry() as reg:
        reg.add_image("good/app", [LAYER])
        yield reg


@pytest.fixture(scope="module")
def armed(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, registry: ScriptedRegistry
) -> Iterator[HostileServer]:
    env = {"SANDTREE_INSECURE_REGISTRIES": registry.host}
    with start_hostile_server(tmp_path_factory.mktemp("registry"), busybox_rootfs, env) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _no_request_reaches_the_internal_service(internal: ScriptedRegistry) -> Iterator[None]:
    internal.requests.clear()
    yield
    assert internal.requests == [], "a request reached the internal service"


def _start(tenant: Tenant, url: str, **fields: Any) -> str:
    with tenant.client() as http:
        answer = http.post("/v1/images/import", json={"registry": {"url": url}, **fields})
        assert answer.status_code == 201, answer.text
        op_id: str = answer.json()["uuid"]
        return op_id


def _imported(tenant: Tenant, url: str, deadline: float = 60.0, **fields: Any) -> dict[str, Any]:
    return tenant.wait(_start(tenant, url, **fields), deadline)


def _failed(tenant: Tenant, url: str, *fragments: str, **fields: Any) -> dict[str, Any]:
    op = _imported(tenant, url, **fields)
    assert op["status"] == "FAILED", op
    for fragment in fragments:
        assert fragment in op["error"], op["error"]
    return op


def _busybox(tenant: Tenant) -> str:
    with tenant.client() as http:
        images = http.get("/v1/images", params={"limit": 100}).json()["images"]
    tagged = [i["uuid"] for i in images if i["tag"] == "busybox:latest"]
    return tagged[0] if tagged else str(images[0]["uuid"])


# -- finding 4: thread-pool starvation -----------------------------------------------------


def test_dripping_imports_pin_no_thread_other_tenants_runs_inspect_and_diff_need(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    registry.add_image("drip/app", [_layer("drip-app")])
    registry.dripping.add("/v2/drip/app/manifests/latest")  # one byte a second, headers too
    registry.hold_limit = 300  # it outlasts the attack: only the cancel ends it
    url = f"docker://{registry.host}/drip/app"
    # Two tokens of alice's namespace: 8 dripping imports, more than the default executor's
    # threads on this machine (those six pinned it before).
    second = armed.tenant("alice-2", "alice")
    busybox = _busybox(armed.bob)
    kept = armed.bob.spawn("echo mine > /mine", disposable=False)
    assert kept["status"] == "SUCCESS", kept
    child = kept["result_image_uuid"]
    inspect = LatencyProbe(armed.bob, f"/v1/inspect/{busybox}/list?path=/")
    diff = LatencyProbe(armed.bob, f"/v1/images/{child}/diff")
    started = [_start(t, url, timeout=120) for t in (armed.alice, second) for _ in range(4)]
    end = time.monotonic() + 30
    while registry.requests.count("/v2/drip/app/manifests/latest") < 4:
        assert time.monotonic() < end, "the dripping imports never reached the registry"
        time.sleep(0.05)

    with LatencyProbe(armed.bob), inspect, diff:
        for _ in range(3):
            run = armed.bob.spawn("echo still-served", timeout=10)
            assert run["status"] == "SUCCESS", run
    with armed.alice.client() as http:
        states = [http.get(f"/v1/operations/{op_id}").json() for op_id in started]
    # Still dripping: the attack held for the whole probe.
    assert {op["status"] for op in states} <= {"PENDING", "ASSIGNED", "EXECUTING"}, states

    with armed.alice.client() as first, second.client() as other:
        for i, op_id in enumerate(started):
            answer = (first if i < 4 else other).delete(f"/v1/operations/{op_id}")
            assert answer.status_code in (200, 202, 204), answer.text
    ended = [(armed.alice if i < 4 else second).wait(op, 20) for i, op in enumerate(started)]
    assert {op["status"] for op in ended} == {"CANCELLED"}
    # The stopped transfers gave their threads and their namespace's places back.
    fresh = _imported(armed.alice, f"docker://{registry.host}/good/app", 30, tag="good:1")
    assert fresh["status"] == "SUCCESS", fresh


def test_a_drip_of_one_byte_a_second_never_outlasts_the_import_timeout(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    (blob,) = registry.add_image("drip/blob", [_layer("drip-blob")])
    registry.dripping.add(blob)  # every byte arrives well within any per-read timeout
    with LatencyProbe(armed.bob):
        began = time.monotonic()
        op = _failed(armed.alice, f"docker://{registry.host}/drip/blob", "timed out", timeout=3)
        took = time.monotonic() - began
    assert "nothing was imported" in op["error"]
    assert took < 30, f"the 3 s import took {took:.0f} s to end"


# -- finding 5: unbounded reads ------------------------------------------------------------


def test_a_config_declared_as_100_bytes_and_served_as_400_mib_is_refused_unread(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    claimed = b"x" * 100
    config = {"mediaType": MEDIA_CONFIG, "digest": _sha(claimed), "size": 100}
    registry.huge[f"/v2/big/config/blobs/{config['digest']}"] = 400 << 20
    registry.add_manifest("big/config", _manifest(config, [_descriptor(b"never fetched")]))
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/big/config", "config", "100 bytes")
    assert sum(registry.sent.values()) < 64 << 20, "the server kept reading the config"


def test_a_manifest_past_4_mib_is_refused_while_it_streams(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    registry.huge["/v2/big/manifest/manifests/latest"] = 400 << 20
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/big/manifest", "larger than 4194304")
    assert registry.sent["/v2/big/manifest/manifests/latest"] < 64 << 20


def test_a_10000_layer_manifest_is_refused_naming_the_limit(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    config = registry.add_blob("deep/app", b'{"architecture":"amd64","os":"linux"}')
    layers = [_descriptor(f"layer {i}".encode()) for i in range(10_000)]
    registry.add_manifest("deep/app", _manifest(config, layers))
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/deep/app", "10000 layers", "127")
    assert not [r for r in registry.requests if r.startswith("/v2/deep/app/blobs/")]


def test_a_manifest_list_of_1000_entries_is_refused(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    entry = {"mediaType": MEDIA_MANIFEST, "digest": _sha(b"m"), "size": 1}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**entry, "platform": {"os": "linux", "architecture": "s390x"}}] * 1000,
    }
    registry.add_manifest("wide/app", index)
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/wide/app", "more than 256")


# -- finding 6: requests to internal services ----------------------------------------------


def test_a_loopback_registry_the_operator_did_not_list_is_refused_with_the_way_to_allow_it(
    armed: HostileServer, internal: ScriptedRegistry
) -> None:
    with LatencyProbe(armed.bob):
        op = _failed(armed.alice, f"docker://{internal.host}/x", "refusing to connect", *GUIDANCE)
    assert internal.host in op["error"]


@pytest.mark.parametrize(
    "target",
    [
        "http://{internal}/v2/x/manifests/latest",  # another loopback port
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fd00:ec2::254]/latest/meta-data/",  # cloud metadata over IPv6
        "http://10.1.2.3/v2/x/manifests/latest",  # a private network
        "http://100.64.0.1/",  # CGNAT
        "http://[::ffff:127.0.0.1]:{port}/v2/x/manifests/latest",  # loopback, IPv4-mapped
        "http://localhost:{port}/v2/x/manifests/latest",  # loopback by name
    ],
)
def test_a_redirect_to_an_internal_address_is_refused(
    armed: HostileServer, registry: ScriptedRegistry, internal: ScriptedRegistry, target: str
) -> None:
    port = internal.host.rsplit(":", 1)[1]
    location = target.format(internal=internal.host, port=port)
    registry.redirect("/v2/redirect/app/manifests/latest", location)
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/redirect/app", "refusing", *GUIDANCE)


def test_a_blob_redirect_to_an_internal_address_is_refused(
    armed: HostileServer, registry: ScriptedRegistry, internal: ScriptedRegistry
) -> None:
    (blob,) = registry.add_image("redirect/blob", [_layer("redirect-blob")])
    registry.redirect(blob, f"http://{internal.host}/v2/x/manifests/latest")
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/redirect/blob", "refusing", *GUIDANCE)


@pytest.mark.parametrize("realm", ["http://{internal}/token", "http://169.254.169.254/token"])
def test_a_token_realm_on_an_internal_address_is_refused(
    armed: HostileServer, registry: ScriptedRegistry, internal: ScriptedRegistry, realm: str
) -> None:
    registry.require_bearer(realm.format(internal=internal.host))
    try:
        with LatencyProbe(armed.bob):
            _failed(armed.alice, f"docker://{registry.host}/good/app", "refusing", *GUIDANCE)
    finally:
        registry.challenge = None


@pytest.mark.parametrize(
    "location", ["http://{internal}/upload", "http://169.254.169.254/upload", "/relative/ok"]
)
def test_a_push_upload_location_on_an_internal_address_gets_no_byte(
    armed: HostileServer, registry: ScriptedRegistry, internal: ScriptedRegistry, location: str
) -> None:
    target = location.format(internal=internal.host)
    registry.accept_uploads("evil/sink", target)
    body = {"registry": {"url": f"docker://{registry.host}/evil/sink:1"}}
    with LatencyProbe(armed.bob), armed.alice.client() as http:
        answer = http.post(f"/v1/images/{_busybox(armed.alice)}/push", json=body)
    assert answer.status_code == 502, answer.text
    if target.startswith("/"):  # the registry's own address: allowed, its PUT is simply 404
        assert "not found" in answer.json()["error"]
        assert registry.received.get(target, 0) > 0
    else:
        assert "refusing" in answer.json()["error"]
        assert all(word in answer.json()["error"] for word in GUIDANCE)
    assert internal.received == {}


def test_a_registry_error_body_never_reaches_the_tenant(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    marker = "SECRET-MARKER-f00d"
    errors = {"errors": [{"code": "DENIED", "message": marker, "detail": marker}]}
    registry.routes["/v2/leak/json/manifests/latest"] = (
        500, "application/json", json.dumps(errors).encode()
    )  # fmt: skip
    registry.routes["/v2/leak/html/manifests/latest"] = (
        404, "text/html", f"<html>{marker} internal page</html>".encode()
    )  # fmt: skip
    registry.routes["/v2/leak/code/manifests/latest"] = (
        403, "application/json", json.dumps({"errors": [{"code": marker}]}).encode()
    )  # fmt: skip
    with LatencyProbe(armed.bob):
        ops = [
            _failed(armed.alice, f"docker://{registry.host}/leak/json", "HTTP 500, DENIED"),
            _failed(armed.alice, f"docker://{registry.host}/leak/html", "HTTP 404"),
            _failed(armed.alice, f"docker://{registry.host}/leak/code", "HTTP 403"),
        ]
    for op in ops:
        assert marker not in json.dumps(op)
        with armed.alice.client() as http:
            events = http.get(f"/v1/operations/{op['uuid']}/events").text
        assert marker not in events


def test_a_push_needs_the_push_permission(armed: HostileServer, registry: ScriptedRegistry) -> None:
    no_push = armed.tenant("alice-no-push", "alice", tuple(p for p in PERMISSIONS if p != "push"))
    body = {"registry": {"url": f"docker://{registry.host}/evil/exfil:1"}}
    with LatencyProbe(armed.bob):
        for tenant in (armed.alice_list, no_push):
            with tenant.client() as http:
                answer = http.post(f"/v1/images/{_busybox(tenant)}/push", json=body)
            assert answer.status_code == 403, answer.text
            assert "'push'" in answer.json()["error"]
    assert not [c for c in registry.calls if c[1].startswith("/v2/evil/exfil/")]


# -- layers shared by digest without proof of possession -----------------------------------


def test_naming_another_tenants_layer_digest_does_not_hand_over_the_layer(
    armed: HostileServer, registry: ScriptedRegistry
) -> None:
    secret = layer_tar([Entry(path="bob-secret", data=b"bob's private data\n")])
    registry.add_image("bob/private", [secret])
    bobs = _imported(armed.bob, f"docker://{registry.host}/bob/private", tag="private")
    assert bobs["status"] == "SUCCESS", bobs
    # alice serves the very same manifest (so the same manifest digest and layer digests)
    # from a repository of her own that does not have the blob: she cannot download it.
    _, media, manifest = registry.routes["/v2/bob/private/manifests/latest"]
    registry.routes["/v2/alice/claim/manifests/latest"] = (200, media, manifest)
    config = json.loads(manifest)["config"]["digest"]
    registry.routes[f"/v2/alice/claim/blobs/{config}"] = registry.routes[
        f"/v2/bob/private/blobs/{config}"
    ]
    with LatencyProbe(armed.bob):
        _failed(armed.alice, f"docker://{registry.host}/alice/claim", "not found")
    with armed.alice.client() as http:
        assert http.get("/v1/images", params={"tag": "private"}).json()["images"] == []


# -- helpers ---------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(data: bytes) -> dict[str, Any]:
    media = "application/vnd.oci.image.layer.v1.tar+gzip"
    return {"mediaType": media, "digest": _sha(data), "size": len(data)}


def _manifest(config: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config, "layers": layers}
