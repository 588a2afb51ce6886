"""Layer stream decompression: gzip, zstd or none, named or sniffed from magic bytes.

zstd goes through the ``zstandard`` module when installed, else through the ``zstd`` binary.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from sandtree.errors import InvalidRequestError

__all__ = ["CHUNK", "DECOMPRESSION_ERRORS", "open_decompressed", "sniff_compression"]

CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

try:  # optional: faster than piping through the zstd binary
    _zstandard: Any = importlib.import_module("zstandard")
except ImportError:
    _zstandard = None


#: What a corrupt compressed stream raises while it is read.
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error,
    gzip.BadGzipFile,
    *((_zstandard.ZstdError,) if _zstandard is not None else ()),
)


def sniff_compression(head: bytes) -> str:
    """``"gzip"`` or ``"zstd"`` from the first (up to 4) bytes of a stream, else ``""``."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "zstd" if head == _ZSTD_MAGIC else ""


class _Prefixed(io.RawIOBase):
    """A stream with bytes already read (for magic sniffing) put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_upto(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := stream.read(size - len(data))):
        data += chunk
    return data


@contextlib.contextmanager
def open_decompressed(stream: BinaryIO, compression: str | None = None) -> Iterator[BinaryIO]:
    """Yield ``stream`` decompressed; ``compression`` is gzip, zstd, none or None (sniff).

    Raises:
        InvalidRequestError: unknown compression, or zstd with no decoder on the host.
    """
    if compression is None:
        head = _read_upto(stream, 4)
        stream = io.BufferedReader(_Prefixed(head, stream), CHUNK)
        compression = sniff_compression(head) or "none"
    if compression in ("none", "tar", ""):
        yield stream
    elif compression == "gzip":
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            yield cast(BinaryIO, gz)
    elif compression == "zstd" and _zstandard is not None:
        reader = _zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        with reader:
            yield cast(BinaryIO, reader)
    elif compression == "zstd":
        with _zstd_process(stream) as out:
            yield out
    else:
        raise InvalidRequestError(f"unknown layer compression {compression!r}; use gzip or zstd")


@contextlib.contextmanager
def _zstd_process(stream: BinaryIO) -> Iterator[BinaryIO]:
    """Decompress through the ``zstd`` binary; a thread feeds stdin so neither pipe stalls."""
    exe = shutil.which("zstd")
    if exe is None:
        raise InvalidRequestError(
            "the layer is zstd-compressed but this host has neither the zstandard module nor "
            "the zstd binary; install zstd or import a gzip image"
        )
    proc = subprocess.Popen(
        [exe, "-d", "-c", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, failure = proc.stdin, list[BaseException]()

    def feed() -> None:
        try:
            while chunk := stream.read(CHUNK):
                stdin.write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # we stopped reading (end of archive or an error): zstd was killed
        except BaseException as exc:
            failure.append(exc)
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    feeder = threading.Thread(target=feed, name="zstd-feed", daemon=True)
    feeder.start()
    try:
        yield cast(BinaryIO, proc.stdout)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        feeder.join()
        with contextlib.suppress(OSError):
            stdin.close()
    if failure:
        raise failure[0]
