"""Where registry traffic may go (addresses checked after resolution, operator allowlists) and
how long it may take (a transfer's deadline, a stop from another thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sandtree.engine.registry import (
    DestinationPolicy,
    ImportCancelled,
    RegistryClient,
    Stop,
    parse_reference,
)
from sandtree.engine.registry._network import is_public_address
from sandtree.errors import RegistryError
from sandtree.testing_registry import Entry, ScriptedRegistry, layer_tar


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "fd00:ec2::254",  # cloud metadata over IPv6
        "fe80::1",
        "100.64.0.1",  # CGNAT
        "100.100.100.200",  # a cloud's metadata, in CGNAT space
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible loopback
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "not an address",
    ],
)
def test_internal_addresses_in_every_form_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_globally_routable_addresses_are_public(address: str) -> None:
    assert is_public_address(address)


def test_a_loopback_host_is_refused_after_resolution_with_the_way_to_allow_it() -> None:
    with pytest.raises(RegistryError) as refused:
        DestinationPolicy().addresses("localhost", 5000)
    assert "refusing to connect to localhost:5000" in refused.value.message
    assert "SANDTREE_INSECURE_REGISTRIES" in refused.value.message
    assert "SANDTREE_ALLOWED_REGISTRIES" in refused.value.message


def test_a_listed_registry_is_allowed_on_its_port_only_and_a_bare_host_on_every_port() -> None:
    policy = DestinationPolicy(insecure="127.0.0.1:5000", allowed=["registry.lan"])
    assert policy.addresses("127.0.0.1", 5000) == ["127.0.0.1"]
    assert policy.permits("registry.lan", 8443)
    assert policy.is_insecure("127.0.0.1:5000")
    assert not policy.is_insecure("registry.lan")  # allowed, but over HTTPS
    with pytest.raises(RegistryError):
        policy.addresses("127.0.0.1", 5001)


@pytest.fixture
def scripted() -> Iterator[ScriptedRegistry]:
    with ScriptedRegistry() as reg:
        reg.add_image("slow/app", [layer_tar([Entry(path="f", data=b"x")])])
        yield reg


def _client(
    reg: ScriptedRegistry, stop: Stop, policy: DestinationPolicy | None = None
) -> RegistryClient:
    ref = parse_reference(f"{reg.host}/slow/app")
    return RegistryClient(ref, policy=policy or DestinationPolicy(insecure=[reg.host]), stop=stop)


def test_a_registry_dripping_a_byte_at_a_time_is_cut_at_the_transfer_deadline(
    scripted: ScriptedRegistry,
) -> None:
    scripted.dripping.add("/v2/slow/app/manifests/latest")
    scripted.drip_interval = 0.2  # every read returns well within any read timeout
    stop = Stop(deadline=time.monotonic() + 1.0)
    with _client(scripted, stop) as client, pytest.raises(RegistryError) as late:
        client.get_manifest("latest")
    assert "did not answer in time" in late.value.message


def test_a_stop_from_another_thread_ends_a_read_blocked_on_a_silent_registry(
    scripted: ScriptedRegistry,
) -> None:
    scripted.stalling.add("/v2/slow/app/manifests/latest")
    scripted.stall_after = 0  # headers, then silence
    stop = Stop()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    try:
        with _client(scripted, stop) as client, pytest.raises(ImportCancelled):
            client.get_manifest("latest")
    finally:
        timer.cancel()


def test_a_redirect_to_a_registry_not_listed_is_refused_before_any_request(
    scripted: ScriptedRegistry,
) -> None:
    with ScriptedRegistry() as other:
        scripted.redirect("/v2/slow/app/manifests/latest", f"{other.url}/v2/x/manifests/latest")
        with _client(scripted, Stop()) as client, pytest.raises(RegistryError) as refused:
            client.get_manifest("latest")
        assert f"refusing to connect to {other.host}" in refused.value.message
        assert other.requests == []


def test_an_unlisted_loopback_registry_gets_no_request(scripted: ScriptedRegistry) -> None:
    with _client(scripted, Stop(), DestinationPolicy()) as client, pytest.raises(RegistryError):
        client.get_manifest("latest")
    assert scripted.requests == []
