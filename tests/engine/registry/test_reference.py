"""Image references as agents write them, parsed like docker does."""

from __future__ import annotations

import pytest

from sandtree.engine.registry import parse_reference
from sandtree.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("url", "registry", "repository", "tag", "digest"),
    [
        ("docker://alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("docker://python:3.11-slim", "docker.io", "library/python", "3.11-slim", None),
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("docker://org/app", "docker.io", "org/app", "latest", None),
        ("docker://ghcr.io/org/img:tag", "ghcr.io", "org/img", "tag", None),
        ("docker://localhost/img", "localhost", "img", "latest", None),
        ("docker://127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None),
        (
            "docker://host:5000/name@sha256:" + "a" * 64,
            "host:5000",
            "name",
            None,
            "sha256:" + "a" * 64,
        ),
        (
            "docker://host:5000/name:v2@sha256:" + "b" * 64,
            "host:5000",
            "name",
            "v2",
            "sha256:" + "b" * 64,
        ),
    ],
)
def test_references_parse_like_docker(
    url: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(url)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_a_pinned_digest_is_what_the_manifest_request_asks_for() -> None:
    ref = parse_reference("docker://host:5000/name:v2@sha256:" + "c" * 64)
    assert ref.reference == "sha256:" + "c" * 64
    assert parse_reference("busybox").reference == "latest"


def test_docker_hub_names_are_served_by_its_api_host() -> None:
    assert parse_reference("alpine").api_host == "registry-1.docker.io"
    assert parse_reference("ghcr.io/o/i").api_host == "ghcr.io"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:5000/a", "localhost:5000/a", "[::1]:5000/a", "ghcr.io/a", "10.0.0.5:5000/a"]
)
def test_no_registry_is_plain_http_unless_listed_not_even_a_loopback_one(url: str) -> None:
    assert parse_reference(url).is_insecure() is False


def test_registries_listed_as_insecure_are_plain_http() -> None:
    assert parse_reference("10.0.0.5:5000/a").is_insecure(["10.0.0.5:5000"])
    assert parse_reference("registry.lan/a").is_insecure(["registry.lan"])
    assert parse_reference("[::1]:5000/a").is_insecure(["[::1]:5000"])


def test_a_listed_host_without_a_port_covers_its_ports_and_one_with_a_port_only_that_one() -> None:
    assert parse_reference("127.0.0.1:5000/a").is_insecure(["127.0.0.1"])
    assert not parse_reference("127.0.0.1:5001/a").is_insecure(["127.0.0.1:5000"])


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("oci-archive:/tmp/x.tar", "only docker:// registry"),
        ("https://ghcr.io/a/b", "only docker://"),
        ("docker://", "empty"),
        ("docker://Alpine", "not a valid repository"),
        ("docker://alpine:bad tag", "not a valid tag"),
        ("docker://alpine@sha256:1234", "not a digest"),
        ("docker://host:5000/", "not a valid repository"),
    ],
)
def test_malformed_references_are_refused_with_an_example(url: str, complaint: str) -> None:
    with pytest.raises(InvalidRequestError, match=complaint):
        parse_reference(url)
