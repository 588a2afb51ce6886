"""Image references as agents write them: ``docker://python:3.11-slim``, ``ghcr.io/o/i:t``,
``host:5000/name@sha256:…``. Bare names mean Docker Hub's ``library/``, as in docker.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from sandtree.errors import InvalidRequestError

from ._network import DestinationPolicy

__all__ = ["DOCKER_HUB", "ImageReference", "parse_reference"]

#: The registry bare names live in, and the host its API actually answers on.
DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?")
_OTHER_TRANSPORTS = frozenset(
    {"oci", "oci-archive", "docker-archive", "docker-daemon", "dir", "containers-storage"}
)
_EXAMPLES = (
    "e.g. docker://alpine:3.20, docker://ghcr.io/org/img:tag or docker://host:5000/name@sha256:…"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageReference:
    """A parsed reference: where the image lives and which version of it."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def is_insecure(self, insecure: Iterable[str] = ()) -> bool:
        """Plain HTTP for the registries listed as insecure (``host`` or ``host:port``).

        Loopback registries are not implicitly plain HTTP (nor reachable at all) any more:
        the operator lists them, as every registry on a non-public address."""
        return DestinationPolicy(insecure=insecure).is_insecure(self.registry)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(url: str) -> ImageReference:
    """Parse ``docker://[host[:port]/]name[:tag][@digest]`` (the ``docker://`` is optional).

    Raises:
        InvalidRequestError: another transport, or a malformed name, tag or digest.
    """
    text = url.strip()
    transport = text.split(":", 1)[0]
    if transport in _OTHER_TRANSPORTS:
        raise InvalidRequestError(
            f"registry url {url!r} names skopeo's {transport}: transport; only docker:// "
            f"registry references are supported ({_EXAMPLES})"
        )
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme != "docker":
            raise InvalidRequestError(
                f"registry url {url!r} uses {scheme}://; only docker:// registry references "
                f"are supported ({_EXAMPLES})"
            )
    if not text:
        raise InvalidRequestError(f"registry url is empty; pass an image reference, {_EXAMPLES}")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidRequestError(
                f"{digest!r} in {url!r} is not a digest; write sha256: and 64 hex digits"
            )
    first, slash, rest = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, remainder = first, rest
        if not _HOST.fullmatch(registry):
            raise InvalidRequestError(f"{registry!r} in {url!r} is not a registry host[:port]")
    else:
        registry, remainder = DOCKER_HUB, text
    tag = None
    name, colon, maybe_tag = remainder.rpartition(":")
    if colon and "/" not in maybe_tag:
        remainder, tag = name, maybe_tag
        if not _TAG.fullmatch(tag):
            raise InvalidRequestError(
                f"{tag!r} in {url!r} is not a valid tag (letters, digits, '_', '.', '-')"
            )
    if registry == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    if not _REPOSITORY.fullmatch(remainder):
        raise InvalidRequestError(
            f"{remainder!r} in {url!r} is not a valid repository name (lower-case letters, "
            f"digits and separators), {_EXAMPLES}"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=remainder, tag=tag, digest=digest)
