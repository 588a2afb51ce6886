"""A run's events tell a tenant nothing of the host: no host path, no host pid."""

from __future__ import annotations

import json

from .hostile import HostileServer, LatencyProbe


def test_a_runs_events_name_no_host_path_and_no_host_pid(hostile: HostileServer) -> None:
    with LatencyProbe(hostile.bob):
        done = hostile.alice.spawn("echo hi")
        assert done["status"] == "SUCCESS", done
        with hostile.alice.client() as http:
            answer = http.get(f"/v1/operations/{done['uuid']}/events")
    assert answer.status_code == 200, answer.text
    text = answer.text
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    by_type = {event["type"]: event["data"] for event in events}

    assert str(hostile.data_dir.resolve()) not in text
    assert "/run/sandtree" not in text
    assert by_type["init"]["runtime_path"] == "/"
    assert by_type["spawn"]["pid"] == 1
