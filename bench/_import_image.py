"""The image ``import.py`` imports, and how it checks an unpacked copy of it.

The Debian minbase rootfs (or synthesised files of about the same shape) split by directory
into gzip layers, written as an OCI layout with a second image ``v2`` that shares all but
the top layer, and pushed to a loopback registry; then the entries and a few files' bytes
that every unpack must reproduce."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import _common
from _common import BenchError, log

_common.ensure_importable()

from sandtree.testing_registry import LocalRegistry, TestImage, write_oci_layout  # noqa: E402

DEBIAN_MINBASE = Path("/var/cache/sandtree-test/debian-minbase")
REPO_NAME = "bench/debian"
#: Layers bottom first: a path goes to the first prefix it is under; "" takes the rest.
LAYER_PREFIXES = ("usr/lib", "usr/share", "usr", "")
VARIANT_FILE = "etc/sandtree-bench-variant"
SPOT_CHECKS = 6


# -- the image -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """The rootfs the image is made of, and what the bench expects an unpack to produce."""

    root: Path
    name: str
    #: Relative paths of every entry the layers carry (device nodes are left out).
    entries: set[str]
    #: Regular files whose bytes are compared after each unpack, with their sha256.
    spot: dict[str, str]


@dataclasses.dataclass
class BenchImage:
    source: Source
    host: str
    layers: int
    compressed: int
    uncompressed: int
    #: Compressed bytes of the one layer v2 does not share with v1.
    v2_new_compressed: int
    digests: dict[str, str]

    def ref(self, tag: str) -> str:
        return f"{self.host}/{REPO_NAME}:{tag}"


def _synthesise(dest: Path) -> Path:
    """A rootfs-shaped tree of ~6,000 files, ~120 MB, that gzips to roughly 50 MB."""
    rng = random.Random(1234)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 12)))
             for _ in range(800)]  # fmt: skip
    plan = {"usr/lib": 1900, "usr/share": 2600, "usr/bin": 500, "usr/sbin": 150,
            "etc": 350, "var/lib": 300}  # fmt: skip
    for top, count in plan.items():
        for i in range(count):
            d = dest / top / f"d{i % 40:02d}"
            d.mkdir(parents=True, exist_ok=True)
            size = int(min(rng.lognormvariate(8.9, 1.4), 4 << 20))
            # The text gzips ~4:1, random bytes not at all: a fifth random gives ~2.4:1.
            noise = rng.randbytes(size // 5)
            text = b" ".join(rng.choices(words, k=size // 7 + 1))[: size - len(noise)]
            (d / f"f{i:05d}").write_bytes(text + noise)
    for name in ("bin", "sbin", "lib"):
        (dest / name).symlink_to(f"usr/{name}")
    (dest / "tmp").mkdir()
    return dest


def _walk_entries(root: Path) -> list[str]:
    """Every entry under ``root`` as a relative path, parents before children, sorted."""
    out: list[str] = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(top, root)
        base = "" if rel == "." else rel + "/"
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue  # the engine skips device nodes; images do not ship them
            out.append(base + name)
    return out


def _group(path: str) -> int:
    for i, prefix in enumerate(LAYER_PREFIXES):
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return i
    raise AssertionError(path)


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)  # whole seconds, as most image builders write them
    return info


def _layer_tar(root: Path, paths: Sequence[str], extra: tuple[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            tar.add(root / rel, arcname=rel, recursive=False, filter=_clean)
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size, info.mode, info.mtime = len(extra[1]), 0o644, 946684800
            tar.addfile(info, io.BytesIO(extra[1]))
    return out.getvalue()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_image(registry: LocalRegistry, work: Path, synthetic: bool) -> BenchImage:
    """Split the rootfs into layers, write v1 and v2 as one OCI layout, push both."""
    if not synthetic and (DEBIAN_MINBASE / "usr" / "bin").is_dir():
        root, name = DEBIAN_MINBASE, "debian minbase"
    else:
        root, name = _synthesise(work / "synthetic"), "synthetic files"
    entries = _walk_entries(root)
    groups: list[list[str]] = [[] for _ in LAYER_PREFIXES]
    for rel in entries:
        groups[_group(rel)].append(rel)
    for i, prefix in enumerate(LAYER_PREFIXES):
        # Each layer carries the directories above its own, as image builders write them.
        parts = prefix.split("/")[:-1] if prefix else []
        parents = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        groups[i] = [p for p in parents if p not in groups[i]] + groups[i]
    log(f"building {len(groups)} layers of {name} ({len(entries)} entries)")
    tars = [_layer_tar(root, paths) for paths in groups]
    top_v2 = _layer_tar(root, groups[-1], extra=(VARIANT_FILE, b"v2\n"))
    layout = work / "layout"
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    write_oci_layout(layout, [TestImage(layers=tars, env=env)], tag="v1")
    write_oci_layout(layout, [TestImage(layers=[*tars[:-1], top_v2], env=env)], tag="v2")
    digests: dict[str, str] = {}
    for tag in ("v1", "v2"):
        registry.push(layout, f"{REPO_NAME}:{tag}")
        digests[tag] = _tagged_digest(layout, tag)
    sizes = _layer_sizes(layout)
    v1, v2 = sizes["v1"], sizes["v2"]
    regular = [e for e in entries if stat.S_ISREG(os.lstat(root / e).st_mode)]
    largest = max(regular, key=lambda e: os.lstat(root / e).st_size)
    picks = {largest, *random.Random(7).sample(regular, SPOT_CHECKS - 1)}
    spot = {rel: _sha256_file(root / rel) for rel in sorted(picks)}
    shutil.rmtree(layout)
    return BenchImage(
        source=Source(root=root, name=name, entries=set(entries), spot=spot),
        host=registry.host,
        layers=len(tars),
        compressed=sum(v1),
        uncompressed=sum(len(t) for t in tars),
        v2_new_compressed=sum(s for s in v2 if s not in v1),
        digests=digests,
    )


def _tagged_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(m["digest"])
    raise BenchError(f"tag {tag} is not in the layout")


def _layer_sizes(layout: Path) -> dict[str, list[int]]:
    blobs = layout / "blobs" / "sha256"
    out: dict[str, list[int]] = {}
    for tag in ("v1", "v2"):
        digest = _tagged_digest(layout, tag).removeprefix("sha256:")
        manifest = json.loads((blobs / digest).read_text(encoding="utf-8"))
        out[tag] = [int(layer["size"]) for layer in manifest["layers"]]
    return out


# -- checks ----------------------------------------------------------------------------------------


def tree_entries(root: Path) -> set[str]:
    found: set[str] = set()
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        base = "" if rel == "." else rel + "/"
        found.update(base + n for n in dirs + files)
    return found


def disk_bytes(*roots: Path) -> int:
    total, seen = 0, set()
    for root in roots:
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(os.path.join(top, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def check_tree(side: str, found: set[str], locate: Callable[[str], Path | None],
               source: Source, *, variant: bool = False) -> int:  # fmt: skip
    """Compare an unpacked image with the source tree; returns the entries found."""
    expected = source.entries | ({VARIANT_FILE} if variant else set())
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise BenchError(
            f"{side}: {len(found)} entries, expected {len(expected)}; missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for rel, digest in source.spot.items():
        path = locate(rel)
        if path is None or _sha256_file(path) != digest:
            raise BenchError(f"{side}: {rel} differs from the source")
    if variant:
        path = locate(VARIANT_FILE)
        if path is None or path.read_bytes() != b"v2\n":
            raise BenchError(f"{side}: {VARIANT_FILE} is missing or wrong")
    return len(found)
