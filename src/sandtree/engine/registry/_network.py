"""Where registry traffic may go, and how long it may take.

Every connection a ``RegistryClient`` opens — to the registry, to a redirect's target, to a
token realm, to an upload location — goes through ``guarded_transport``: the host is resolved
once, every address it resolves to is checked (no loopback, private, link-local, CGNAT,
multicast, reserved or unspecified address, also when wrapped in an IPv6 form), and the
socket connects to a checked address, so DNS rebinding cannot swap it afterwards. TLS still
verifies the certificate against the host name. A registry the operator lists
(``insecure_registries`` or ``allowed_registries``) skips the address check.

Every socket is registered with the transfer's ``Stop``: stopping it (a cancel, a timeout,
a shutdown) shuts the sockets down, so a thread blocked in a read returns at once. Each read,
write, connect and TLS handshake also gets only the time left before the transfer's
deadline, so a registry dripping one byte at a time cannot outlast it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from sandtree.errors import RegistryError

__all__ = [
    "DestinationPolicy",
    "ImportCancelled",
    "Stop",
    "guarded_transport",
    "is_public_address",
]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
#: Settings an operator edits to let a registry through, named in every refusal.
ALLOW_HINT = (
    "add it to SANDTREE_INSECURE_REGISTRIES (plain HTTP) or SANDTREE_ALLOWED_REGISTRIES "
    "(HTTPS) and restart the server"
)


class ImportCancelled(Exception):
    """The transfer was stopped (cancelled or timed out) while it talked to a registry."""


class Stop:
    """Stops a transfer from another thread and bounds its duration.

    ``set()`` shuts down every socket the transfer has open, even one blocked in a read on a
    silent registry. ``deadline`` (``time.monotonic()`` seconds, or None) bounds the whole
    transfer; ``exchange(seconds)`` bounds one request and its body further, in this thread.
    """

    def __init__(self, *, deadline: float | None = None) -> None:
        self.deadline = deadline
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._local = threading.local()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self._event.is_set():  # stopped while connecting: this socket is shut down too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    @contextlib.contextmanager
    def exchange(self, seconds: float | None) -> Iterator[None]:
        """Bound what this thread does inside the block to ``seconds`` more (None: only the
        transfer's deadline)."""
        previous: float | None = getattr(self._local, "deadline", None)
        if seconds is not None:
            end = time.monotonic() + seconds
            self._local.deadline = end if previous is None else min(previous, end)
        try:
            yield
        finally:
            self._local.deadline = previous

    def budget(self, timeout: float | None) -> float | None:
        """``timeout`` cut to the time left; raises once stopped or past the deadline."""
        if self._event.is_set():
            raise httpcore.ReadError("the transfer was stopped")
        ends = [d for d in (self.deadline, getattr(self._local, "deadline", None)) if d]
        if not ends:
            return timeout
        left = min(ends) - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the transfer's deadline passed")
        return left if timeout is None else min(timeout, left)


def _embedded(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """``addr`` and the IPv4 addresses an IPv6 form of it carries (mapped, compatible,
    6to4, Teredo, NAT64): each of them is where a packet may end up."""
    out: list[Any] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        low = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr.ipv4_mapped is not None:
            out.append(addr.ipv4_mapped)
        if addr.sixtofour is not None:
            out.append(addr.sixtofour)
        if addr.teredo is not None:
            out.extend(addr.teredo)
        if addr in _NAT64 or addr in _V4_COMPATIBLE:
            out.append(low)
    return out


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address (not loopback, private,
    link-local, CGNAT, multicast, reserved, unspecified or a cloud metadata address)."""
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    for one in _embedded(addr):
        if not one.is_global or one.is_multicast or one.is_reserved or one.is_unspecified:
            return False
        if one.is_loopback or one.is_link_local or one.is_private:
            return False
    return True


def _split_host(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port or None)."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


def _entries(raw: str | Iterable[str]) -> frozenset[tuple[str, int | None]]:
    items = raw.split(",") if isinstance(raw, str) else raw
    return frozenset(_split_host(item) for item in items if item.strip())


class DestinationPolicy:
    """Which hosts registry traffic may reach, and which registries speak plain HTTP.

    Args:
        insecure: registries (``host`` or ``host:port``) spoken to over plain HTTP; they are
            allowed even on non-public addresses.
        allowed: registries allowed even on non-public addresses, over HTTPS.

    A ``host`` without a port covers every port of that host.
    """

    def __init__(self, *, insecure: str | Iterable[str] = (), allowed: str | Iterable[str] = ()):
        self._insecure = _entries(insecure)
        self._allowed = self._insecure | _entries(allowed)

    @staticmethod
    def _listed(entries: frozenset[tuple[str, int | None]], host: str, port: int | None) -> bool:
        host = host.lower().strip("[]")
        return (host, None) in entries or (port is not None and (host, port) in entries)

    def is_insecure(self, registry: str) -> bool:
        """Whether ``registry`` (``host[:port]`` as written in a reference) is plain HTTP."""
        host, port = _split_host(registry)
        return self._listed(self._insecure, host, port)

    def permits(self, host: str, port: int | None) -> bool:
        """Whether the operator allowed ``host:port`` explicitly."""
        return self._listed(self._allowed, host, port)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host:port``, each checked.

        Raises:
            RegistryError: the host resolves to a non-public address and is not allowed.
            httpcore.ConnectError: the host does not resolve.
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not found:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        if self.permits(host, port):
            return found
        if not all(is_public_address(a) for a in found):
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise RegistryError(
                f"refusing to connect to {shown}: it is a loopback, private, link-local or "
                "otherwise non-public address, which registry imports and pushes may not reach "
                "(this guards the server's internal services). If it is a registry you trust, "
                f"the operator can allow it: {ALLOW_HINT}"
            )
        return found


class _GuardedStream(httpcore.NetworkStream):
    """A connection whose every operation gets only the transfer's remaining time."""

    def __init__(self, inner: httpcore.NetworkStream, stop: Stop, sock: socket.socket) -> None:
        self._inner, self._stop, self._sock = inner, stop, sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._stop.budget(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._stop.budget(timeout))

    def close(self) -> None:
        self._stop.untrack(self._sock)
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._stop.budget(timeout))
        return _GuardedStream(inner, self._stop, self._sock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, policy: DestinationPolicy, stop: Stop) -> None:
        self._policy, self._stop = policy, stop
        self._plain = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        self._stop.budget(timeout)
        error: Exception = httpcore.ConnectError(f"cannot connect to {host}:{port}")
        for address in self._policy.addresses(host, port):
            try:
                # An address, not the name: what was checked is what is connected to.
                inner = self._plain.connect_tcp(
                    address, port, self._stop.budget(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            sock = inner.get_extra_info("socket")
            if not isinstance(sock, socket.socket):  # SyncBackend always has one
                inner.close()
                raise httpcore.ConnectError("the connection has no socket")
            self._stop.track(sock)
            return _GuardedStream(inner, self._stop, sock)
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("registries are reached over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def guarded_transport(policy: DestinationPolicy, stop: Stop) -> httpx.HTTPTransport:
    """An httpx transport that connects only where ``policy`` allows, within ``stop``."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        network_backend=_GuardedBackend(policy, stop),
        max_connections=16,
        max_keepalive_connections=8,
    )
    return transport
