"""A small client for the OCI distribution protocol: manifests and blobs, pull and push.

It speaks to registries the way docker and skopeo do: anonymous first, then whatever the
``WWW-Authenticate`` challenge asks for — HTTP basic, or a bearer token fetched from the
challenge's realm (with the request's credentials, if any). Tokens are cached per scope.

Every connection goes through ``guarded_transport`` (no internal addresses unless the operator
allows the registry; torn down by the transfer's ``Stop``; bounded by its deadline). Every
body read from a registry is bounded (manifests, token answers, error bodies; blobs by the
size their descriptor declares), read raw (a ``Content-Encoding`` is never inflated), and no
remote body is ever quoted back: errors name the status and the registry's error code only.
Redirects are followed here, at most five, without reading their bodies.

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

from ._network import DestinationPolicy, ImportCancelled, Stop, guarded_transport
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
#: Bounds on what is read whole into memory: a manifest (containerd's cap), a token answer,
#: an error body (only its error code is used).
MANIFEST_LIMIT = 4 << 20
TOKEN_LIMIT = 1 << 20
ERROR_LIMIT = 64 << 10
#: How long one small exchange (a manifest, a token, a HEAD) may take, body included; blob
#: transfers are bounded by the transfer's own deadline instead.
EXCHANGE_SECONDS = 60.0
_MAX_REDIRECTS = 5
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
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


def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """``response``'s raw body, refused past ``limit`` bytes (declared or as it streams)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what} is larger than {limit} bytes; refusing it")
    data = bytearray()
    for chunk in response.iter_raw():
        data += chunk
        if len(data) > limit:
            raise RegistryError(f"{what} is larger than {limit} bytes; refusing it")
    return bytes(data)


class RegistryClient:
    """Talks to one registry for one repository reference.

    Args:
        ref: the image reference (its registry picks the host).
        credentials: sent only when the registry asks for them.
        policy: where connections may go and which registries are plain HTTP; by default
            only public addresses, over HTTPS.
        stop: stops the transfer (shutting its sockets down) and carries its deadline.
        timeout: per-request connect and read timeout in seconds.
    """

    def __init__(
        self,
        ref: ImageReference,
        *,
        credentials: Credentials | None = None,
        policy: DestinationPolicy | None = None,
        stop: Stop | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.ref = ref
        self._policy = policy if policy is not None else DestinationPolicy()
        self.stop = stop if stop is not None else Stop()
        insecure = self._policy.is_insecure(ref.api_host)
        self._base = f"{'http' if insecure else 'https'}://{ref.api_host}"
        self._credentials = credentials
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would bypass the destination checks
            transport=guarded_transport(self._policy, self.stop),
            # Bodies are read raw: never let a registry make us inflate a compressed body.
            headers={"Accept-Encoding": "identity"},
        )
        self._lock = threading.Lock()
        self._auth: dict[str, str] = {}  # scope -> Authorization header value

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests and auth ---------------------------------------------------------------------

    def _scope(self, actions: str) -> str:
        return f"repository:{self.ref.repository}:{actions}"

    def _headers(self, scope: str, extra: dict[str, str] | None, url: str) -> dict[str, str]:
        headers = dict(extra or {})
        if not url.startswith(self._base + "/"):
            return headers  # the registry's tokens go to the registry only
        with self._lock:
            value = self._auth.get(scope) or self._auth.get("*")
        if value:
            headers["Authorization"] = value
        return headers

    def _unreachable(self, exc: httpx.TransportError, what: str | None) -> Exception:
        if self.stop.is_set():
            return ImportCancelled()
        where = f"registry {self.ref.registry}"
        if what:
            where = f"{what} of {where}"
        if isinstance(exc, httpx.TimeoutException):
            return RegistryError(
                f"{where} did not answer in time; it is too slow or stalled, retry later or "
                "with a larger timeout"
            )
        return RegistryError(
            f"cannot reach {where} ({type(exc).__name__}); check the host name and port and "
            "that the registry is up"
        )

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        content: Any = None,
        params: dict[str, str] | None = None,
        what: str | None = None,
    ) -> httpx.Response:
        """One request, following redirects (their bodies unread); every hop goes through
        the guarded transport, so a redirect to an internal address is refused too."""
        request = self._client.build_request(
            method, url, headers=headers, content=content, params=params
        )
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                response = self._client.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._unreachable(exc, what) from exc
            if response.next_request is None:
                return response
            response.close()
            if content is not None:
                raise RegistryError(
                    f"registry {self.ref.registry} redirected an upload, which is not "
                    "supported; push to the registry's own address"
                )
            request = response.next_request
            if request.url.scheme not in ("http", "https"):
                raise RegistryError(f"registry {self.ref.registry} redirected to a non-HTTP URL")
        raise RegistryError(
            f"registry {self.ref.registry} redirected more than {_MAX_REDIRECTS} times"
        )

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
        seconds: float | None = EXCHANGE_SECONDS,
    ) -> Iterator[httpx.Response]:
        """Send a request, answering one auth challenge; yields the (streamed) response.

        The exchange, the body read inside the block included, is bounded by ``seconds``
        (None: by the transfer's deadline only)."""
        url = path_or_url if "://" in path_or_url else self._base + path_or_url
        with self.stop.exchange(seconds):
            for attempt in range(2):
                response = self._request(
                    method,
                    url,
                    headers=self._headers(scope, headers, url),
                    content=content,
                    params=params,
                )
                try:
                    if response.status_code == 401 and attempt == 0:
                        challenge = response.headers.get("www-authenticate", "")
                        self._answer(challenge, scope)
                        continue
                    if response.status_code == 401:
                        raise self._refused()
                    try:
                        yield response
                    except httpx.TransportError as exc:  # the body broke off, or was stopped
                        raise self._unreachable(exc, None) from exc
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

    @staticmethod
    def _basic(credentials: Credentials) -> str:
        """The ready "Basic …" header value of ``credentials``."""
        return httpx.BasicAuth(credentials.username, credentials.password)._auth_header

    def _answer(self, challenge: str, scope: str) -> None:
        kind, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        if kind.lower() == "basic":
            if self._credentials is None:
                raise self._refused()
            value = self._basic(self._credentials)
            with self._lock:
                self._auth["*"] = value
            return
        realm = params.get("realm", "")
        if kind.lower() != "bearer" or not realm.startswith(("https://", "http://")):
            raise RegistryError(
                f"registry {self.ref.registry} asked for an unsupported authentication; only "
                "basic and bearer tokens (with an http(s) realm) are supported"
            )
        query = {"service": params["service"]} if "service" in params else {}
        query["scope"] = scope
        headers = {}
        if self._credentials is not None:
            headers["Authorization"] = self._basic(self._credentials)
        # The realm is reached through the same guarded transport: a realm on an internal
        # address is refused like a registry there would be.
        answer = self._request(
            "GET", realm, headers=headers, params=query, what="the token service"
        )
        try:
            if answer.status_code in (401, 403):
                raise self._refused()
            if answer.status_code != 200:
                raise RegistryError(
                    f"the token service of {self.ref.registry} answered {answer.status_code}; "
                    "retry later, or check the registry's authentication setup"
                )
            data = read_capped(answer, TOKEN_LIMIT, f"the token answer of {self.ref.registry}")
        finally:
            answer.close()
        try:
            body = json.loads(data)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service of {self.ref.registry} returned no token")
        with self._lock:
            self._auth[scope] = f"Bearer {token}"

    def _fail(self, response: httpx.Response, what: str) -> RegistryError:
        """An error naming the status and the registry's error code; never the body itself
        (a response may come from anything, and a tenant reads this message)."""
        code = ""
        with contextlib.suppress(RegistryError, httpx.HTTPError):
            data = read_capped(response, ERROR_LIMIT, "an error body")
            with contextlib.suppress(ValueError, AttributeError, KeyError, IndexError, TypeError):
                first = json.loads(data)["errors"][0]["code"]
                if isinstance(first, str) and _ERROR_CODE.fullmatch(first):
                    code = first
        detail = f"HTTP {response.status_code}" + (f", {code}" if code else "")
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
        return RegistryError(f"registry {self.ref.registry} answered {detail} for {what}")

    # -- pull ----------------------------------------------------------------------------------

    def get_manifest(self, reference: str) -> Manifest:
        """Fetch a manifest or index by tag or digest; a digest is checked against the bytes."""
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        accept = ", ".join(MANIFEST_TYPES)
        what = f"{self.ref.repository}:{reference}" if ":" not in reference else reference
        with self._send("GET", path, scope=self._scope("pull"), headers={"Accept": accept}) as r:
            if r.status_code != 200:
                raise self._fail(r, f"image {what}")
            data = read_capped(r, MANIFEST_LIMIT, f"the manifest of {what}")
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
                shown = re.sub(r"[^A-Za-z0-9.+/_-]", "?", media_type or declared)[:100]
                raise RegistryError(
                    f"image {what} has manifest type {shown!r}, which is not "
                    "supported; push it as an OCI or Docker v2 schema 2 image"
                )
        return Manifest(media_type=media_type, data=data, digest=digest)

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[httpx.Response]:
        """Stream a blob; the caller reads ``iter_raw`` and checks its size and digest.
        The transfer's deadline bounds it (not the small exchanges' one)."""
        path = f"/v2/{self.ref.repository}/blobs/{digest}"
        with self._send("GET", path, scope=self._scope("pull"), seconds=None) as response:
            if response.status_code != 200:
                raise self._fail(response, f"blob {digest}")
            yield response

    def read_blob(self, digest: str, size: int, what: str) -> bytes:
        """A small blob (a config) read whole: exactly ``size`` bytes with ``digest``."""
        with self.open_blob(digest) as response:
            data = read_capped(response, size, what)
        if len(data) != size or digest_of(data) != digest:
            raise RegistryError(
                f"{what} arrived as {len(data)} bytes that do not match its descriptor "
                f"({size} bytes, {digest}); the registry or image is corrupt"
            )
        return data

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
        # An absolute location is reached through the guarded transport like everything
        # else: one on an internal address is refused, so no layer bytes go there.
        if not location.startswith(("https://", "http://")):
            raise RegistryError(f"registry {self.ref.registry} gave a non-HTTP upload location")
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = f"{location}{sep}digest={digest}"
        with self._send(
            "PUT", url, scope=scope, headers=headers, content=content, seconds=None
        ) as response:
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
