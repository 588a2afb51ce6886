"""A small client for the OCI distribution protocol: manifests and blobs, pull and push.

It speaks to registries the way docker and skopeo do: anonymous first, then whatever the
``WWW-Authenticate`` challenge asks for — HTTP basic, or a bearer token fetched from the
challenge's realm (with the request's credentials, if any). Tokens are cached per scope.

Synchronous on purpose: layer streams are read by unpacking threads, one per layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from sandtree.errors import InvalidRequestError, RegistryError

from ._reference import ImageReference

__all__ = ["MANIFEST_TYPES", "Credentials", "Manifest", "RegistryClient"]

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
IMAGE_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MANIFEST_TYPES = INDEX_TYPES + IMAGE_MANIFEST_TYPES
_MANIFEST_LIMIT = 4 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_UPLOAD_CHUNK = 8 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """A manifest or index as the registry sent it, with the digest of those exact bytes."""

    media_type: str
    data: bytes
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistryClient:
    """Talks to one registry for one repository reference.

    Args:
        ref: the image reference (its registry picks the host).
        credentials: sent only when the registry asks for them.
        insecure: plain HTTP instead of HTTPS (loopback registries, as docker allows).
        timeout: per-request connect and read timeout in seconds.
    """

    def __init__(
        self,
        ref: ImageReference,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.ref = ref
        self._base = f"{'http' if insecure else 'https'}://{ref.api_host}"
        self._credentials = credentials
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=True, transport=transport
        )
        self._lock = threading.Lock()
        self._auth: dict[str, str] = {}  # scope -> Authorization header value
        self._basic = False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests and auth ---------------------------------------------------------------------

    def _scope(self, actions: str) -> str:
        return f"repository:{self.ref.repository}:{actions}"

    def _headers(self, scope: str, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        with self._lock:
            value = self._auth.get(scope) or self._auth.get("*")
        if value:
            headers["Authorization"] = value
        return headers

    @contextlib.contextmanager
    def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        content: Any = None,
        params: dict[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        """Send a request, answering one auth challenge; yields the (streamed) response."""
        url = path_or_url if "://" in path_or_url else self._base + path_or_url
        for attempt in range(2):
            request = self._client.build_request(
                method, url, headers=self._headers(scope, headers), content=content, params=params
            )
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise RegistryError(
                    f"cannot reach registry {self.ref.registry} ({type(exc).__name__}: {exc}); "
                    "check the host name and port and that the registry is up"
                ) from exc
            try:
                if response.status_code == 401 and attempt == 0:
                    challenge = response.headers.get("www-authenticate", "")
                    self._answer(challenge, scope)
                    continue
                if response.status_code == 401:
                    raise self._refused()
                yield response
                return
            finally:
                response.close()

    def _refused(self) -> RegistryError:
        if self._credentials is None:
            return RegistryError(
                f"registry {self.ref.registry} requires credentials for {self.ref.repository}; "
                "pass registry.credentials with a username and password"
            )
        return RegistryError(
            f"registry {self.ref.registry} refused the credentials of user "
            f"{self._credentials.username!r} for {self.ref.repository}; check the username and "
            "password (or token)"
        )

    def _answer(self, challenge: str, scope: str) -> None:
        kind, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        if kind.lower() == "basic":
            if self._credentials is None:
                raise self._refused()
            basic = httpx.BasicAuth(self._credentials.username, self._credentials.password)
            value = basic._auth_header  # the ready "Basic …" header value
            with self._lock:
                self._auth["*"] = value
            return
        if kind.lower() != "bearer" or "realm" not in params:
            raise RegistryError(
                f"registry {self.ref.registry} asked for unsupported authentication "
                f"{challenge!r}; only basic and bearer tokens are supported"
            )
        query = {"service": params["service"]} if "service" in params else {}
        query["scope"] = scope
        auth = (
            (self._credentials.username, self._credentials.password) if self._credentials else None
        )
        try:
            answer = self._client.get(params["realm"], params=query, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryError(
                f"cannot reach the token service {params['realm']} of registry "
                f"{self.ref.registry}: {exc}"
            ) from exc
        if answer.status_code in (401, 403):
            raise self._refused()
        if answer.status_code != 200:
            raise RegistryError(
                f"the token service of {self.ref.registry} answered {answer.status_code}: "
                f"{answer.text[:200]}"
            )
        try:
            body = answer.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.ref.registry} returned no token")
        with self._lock:
            self._auth[scope] = f"Bearer {token}"

    def _fail(self, response: httpx.Response, what: str) -> RegistryError:
        response.read()
        detail = response.text[:300].strip()
        with contextlib.suppress(ValueError, AttributeError, KeyError, IndexError, TypeError):
            first = response.json()["errors"][0]
            detail = f"{first.get('code')}: {first.get('message')}"
        if response.status_code == 404:
            return RegistryError(
                f"{what} was not found in registry {self.ref.registry} ({detail}); check the "
                "repository name and tag"
            )
        if response.status_code == 403:
            return RegistryError(
                f"registry {self.ref.registry} denied access to {what} ({detail}); the "
                "credentials lack permission"
            )
        return RegistryError(
            f"registry {self.ref.registry} answered {response.status_code} for {what} ({detail})"
        )

    # -- pull ----------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest; a digest is checked against the bytes."""
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        accept = ", ".join(MANIFEST_TYPES)
        what = f"{self.ref.repository}:{reference}" if ":" not in reference else reference
        with self._send("GET", path, scope=self._scope("pull"), headers={"Accept": accept}) as r:
            if r.status_code != 200:
                raise self._fail(r, f"image {what}")
            data = b""
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > _MANIFEST_LIMIT:
                    raise RegistryError(f"manifest {what} is larger than {_MANIFEST_LIMIT} bytes")
            media_type = r.headers.get("content-type", "").split(";")[0].strip()
        digest = digest_of(data)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(
                f"registry {self.ref.registry} sent a manifest with digest {digest} for "
                f"{reference}; refusing it"
            )
        if media_type not in MANIFEST_TYPES:
            declared = _declared_type(data)
            if declared in MANIFEST_TYPES:
                media_type = declared
            else:
                raise RegistryError(
                    f"image {what} has manifest type {media_type or declared!r}, which is not "
                    "supported; push it as an OCI or Docker v2 schema 2 image"
                )
        return Manifest(media_type=media_type, data=data, digest=digest)

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[httpx.Response]:
        """Stream a blob; the caller reads ``iter_bytes`` and checks the digest."""
        path = f"/v2/{self.ref.repository}/blobs/{digest}"
        with self._send("GET", path, scope=self._scope("pull")) as response:
            if response.status_code != 200:
                raise self._fail(response, f"blob {digest}")
            yield response

    # -- push ----------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        path = f"/v2/{self.ref.repository}/blobs/{digest}"
        with self._send("HEAD", path, scope=self._scope("pull,push")) as response:
            if response.status_code in (200, 307):
                return True
            if response.status_code == 404:
                return False
            raise self._fail(response, f"blob {digest}")

    def upload_bytes(self, digest: str, data: bytes) -> None:
        """Upload a small blob (a config) held in memory, unless already there."""
        if self.blob_exists(digest):
            return
        self._put_blob(digest, data, len(data))

    def upload_blob(self, digest: str, source: Path) -> None:
        """Upload a blob from a file (a monolithic PUT after POST), unless already there."""
        if self.blob_exists(digest):
            return
        with source.open("rb") as f:
            self._put_blob(digest, _file_chunks(f), source.stat().st_size)

    def _put_blob(self, digest: str, content: Any, size: int) -> None:
        scope = self._scope("pull,push")
        path = f"/v2/{self.ref.repository}/blobs/uploads/"
        with self._send("POST", path, scope=scope) as response:
            if response.status_code != 202:
                raise self._fail(response, f"an upload of blob {digest}")
            location = response.headers.get("location", "")
        if not location:
            raise RegistryError(f"registry {self.ref.registry} gave no upload location")
        if "://" not in location:
            location = self._base + location
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = f"{location}{sep}digest={digest}"
        with self._send("PUT", url, scope=scope, headers=headers, content=content) as response:
            if response.status_code not in (201, 204):
                raise self._fail(response, f"the upload of blob {digest}")

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        headers = {"Content-Type": manifest.media_type}
        with self._send(
            "PUT", path, scope=self._scope("pull,push"), headers=headers, content=manifest.data
        ) as response:
            if response.status_code not in (200, 201, 202):
                raise self._fail(response, f"manifest {reference}")


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_UPLOAD_CHUNK):
        yield chunk


def _declared_type(data: bytes) -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(value, dict):
        return ""
    media = value.get("mediaType")
    if isinstance(media, str):
        return media
    if value.get("schemaVersion") == 1:
        raise InvalidRequestError(
            "the image uses Docker manifest schema 1, which is deprecated and unsupported; "
            "push it again with a current docker or skopeo"
        )
    if "manifests" in value:
        return INDEX_TYPES[0]
    return IMAGE_MANIFEST_TYPES[0] if "layers" in value else ""
