"""The kit itself: the tenants are separate and the probe notices a slow server."""

from __future__ import annotations

from .hostile import HostileServer, LatencyProbe


def test_each_tenant_runs_public_busybox_and_sees_only_its_own_namespace(
    hostile: HostileServer,
) -> None:
    done = hostile.alice.spawn("echo hi > /root/mine", disposable=False)
    assert done["status"] == "SUCCESS", done
    kept = done["result_image_uuid"]
    assert kept is not None
    with hostile.alice.client() as http:
        assert kept in {image["uuid"] for image in http.get("/v1/images").json()["images"]}
    with hostile.bob.client() as http:
        images = http.get("/v1/images").json()["images"]
    assert kept not in {image["uuid"] for image in images}
    with hostile.alice_list.client() as http:
        assert http.get("/v1/images").status_code == 200
        refused = http.post(
            "/v1/instances", json={"command": "true", "image": "tag:busybox:latest"}
        )
    assert refused.status_code == 403


def test_the_probe_records_every_answer(hostile: HostileServer) -> None:
    with LatencyProbe(hostile.bob) as probe:
        hostile.alice.spawn("true")
    assert probe.latencies
