"""Run a shell script as root on a stock Debian 12 host: a QEMU (TCG) VM with Debian's own
6.1 kernel, systemd as PID 1, cgroup v2 unified, iptables on its nft backend, crun, runc,
runsc and python3.11, and the current checkout installed.

Example::

    result = run_in_vm("uname -r; cp /proc/cmdline $SANDTREE_VM_OUT/", timeout=600)
    assert result.returncode == 0, result.output
    assert result.output.startswith("6.1.")
    cmdline = result.files["cmdline"]

What the script sees:

- it runs under ``bash`` as root in ``/root``, once the guest's boot has settled, with
  ``/opt/sandtree/venv/bin`` first on ``PATH``: ``python3`` there has every dependency of
  sandtree and of its ``test`` and ``mcp`` extras, and ``sandtree`` (also in
  ``/usr/local/bin``) is the current checkout, installed editable from ``/mnt/host/src``;
- ``/mnt/host`` is the checkout, read-only over virtio-9p (run pytest with
  ``-p no:cacheprovider``); the guest reads the byte code the host left in its
  ``__pycache__`` directories and compiles in memory what is stale;
- files it writes under ``$SANDTREE_VM_OUT`` come back in ``VmResult.files``;
- ``/var/cache/sandtree-test/debian-minbase`` is on the guest's disk (a copy of the host's,
  or debootstrapped at build time), so the isolation tests' Debian image needs no mirror;
- the guest has no network unless ``network=True``: then a virtio NIC (``ens16``) on QEMU's
  user-mode network, the guest at 10.0.2.15 and the host's loopback services at 10.0.2.2
  (slirp maps 10.0.2.2 to the host's 127.0.0.1: serve "the internet" there). The isolation
  tests need none: their simulated internet is a network namespace inside the guest.

Every job boots the same image afresh (its writes go to a throw-away qcow2 overlay), so jobs
cannot leak state into each other. The image is built once by ``build-image.sh`` (debootstrap
plus PyPI, the only time the network is needed) into ``/var/cache/sandtree-test/vm/<key>``,
where ``key`` hashes that script and sandtree's dependency lists; a change to either
rebuilds it. Emulation is slow: a boot reaches the job in ~15 s on an idle machine and
40 to 80 s while other VMs share its CPUs, and a Python process starts in seconds, so keep
timeouts generous.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = Path(__file__).with_name("build-image.sh")
CACHE = Path("/var/cache/sandtree-test/vm")
QEMU = "qemu-system-x86_64"
# What a build that failed for want of the network prints (debootstrap, apt, pip).
_UNREACHABLE = (
    "failed getting release file",
    "couldn't download",
    "temporary failure in name resolution",
    "could not resolve",
    "network is unreachable",
    "no route to host",
    "connection refused",
    "no matching distribution found",
)


class VmError(RuntimeError):
    """The VM did not run the job to its end (QEMU failed, or the deadline passed)."""


class VmUnavailable(RuntimeError):
    """The VM cannot be had on this machine; the message says why (tests skip with it)."""


@dataclasses.dataclass(frozen=True)
class VmImage:
    """A built image: the ext4 root disk and the kernel and initrd to boot it with."""

    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


@dataclasses.dataclass(frozen=True)
class VmResult:
    """What a job left: its exit status, its output (stdout and stderr), the files it wrote
    under ``$SANDTREE_VM_OUT`` (by relative path), the guest's serial console, and times:
    ``boot_seconds`` (guest uptime when the job started), ``job_seconds`` and
    ``wall_seconds`` (QEMU start to exit, on the host)."""

    returncode: int
    output: str
    files: dict[str, bytes]
    console: str
    boot_seconds: float
    job_seconds: float
    wall_seconds: float


def requirements() -> list[str]:
    """What the guest's venv holds: sandtree's dependencies and its test and mcp extras."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return sorted({*project["dependencies"], *extras.get("test", []), *extras.get("mcp", [])})


def image_key() -> str:
    """The cache key: the build recipe and everything it installs, hashed."""
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes())
    # The whole [project] table: the editable install's console script and metadata too.
    digest.update(json.dumps(project, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def vm_unavailable() -> str | None:
    """Why VM jobs cannot run here (before any build is tried), or None."""
    if os.geteuid() != 0:
        return "the VM tests need root (debootstrap, mkfs, 9p shares)"
    for tool, package in ((QEMU, "qemu-system-x86"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"the VM tests need {tool} (apt-get install {package}; ./scripts/install)"
    return None


def ensure_image() -> VmImage:
    """The image for the current recipe, built now (under a lock, a few minutes) if missing.

    Raises VmUnavailable when it cannot be built for want of the network or tools."""
    reason = vm_unavailable()
    if reason is not None:
        raise VmUnavailable(reason)
    key = image_key()
    image = VmImage(CACHE / key)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.rootfs.is_file() and image.initrd.is_file():
            return image
        staging = CACHE / f"{key}.tmp-{secrets.token_hex(4)}"
        try:
            _build(staging)
            os.rename(staging, image.directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # Older recipes' images are ~1.5 GB each and never used again.
        for old in CACHE.iterdir():
            if old.is_dir() and old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    return image


def _build(staging: Path) -> None:
    staging.mkdir(parents=True)
    reqs = staging / "requirements.txt"
    reqs.write_text("\n".join(requirements()) + "\n")
    log_path = staging / "build.log"
    with open(log_path, "w") as log:
        done = subprocess.run(
            [str(BUILD_SCRIPT), str(staging), str(reqs), str(CHECKOUT)],
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=3600,
            check=False,
        )
    text = log_path.read_text(errors="replace")
    tail = "\n".join(text.strip().splitlines()[-15:])
    if done.returncode != 0:
        if any(marker in text.lower() for marker in _UNREACHABLE):
            raise VmUnavailable(f"the VM image cannot be built without the network:\n{tail}")
        raise RuntimeError(f"build-image.sh failed (exit {done.returncode}):\n{tail}")
    # The log stays with the image, for whoever wonders how it was made.
    shutil.copy(log_path, staging / "build.log.kept")


def run_in_vm(
    script: str,
    *,
    timeout: float = 1200,
    network: bool = False,
    memory_mib: int = 2048,
    cpus: int = 2,
) -> VmResult:
    """Boot a fresh VM, run ``script`` (bash, as root) in it and return what it left.

    ``timeout`` bounds the whole VM (boot, job, power-off) in host seconds; past it QEMU is
    killed and VmError raised with the console's tail."""
    image = ensure_image()
    with tempfile.TemporaryDirectory(prefix="sandtree-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        job = work / "job"
        (job / "out").mkdir(parents=True)
        (job / "job.sh").write_text(script)
        overlay = work / "disk.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(image.rootfs),
                str(overlay),
            ],
            check=True,
        )
        console = work / "console.log"
        argv = _qemu_argv(image, overlay, job, console, network, memory_mib, cpus)
        started = time.monotonic()
        with open(work / "qemu.log", "w") as qemu_log:
            proc = subprocess.Popen(argv, stdout=qemu_log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise VmError(
                    f"the VM did not finish within {timeout:.0f}s; output so far:\n"
                    + _tail(job / "output.log")
                    + "\nconsole:\n"
                    + _tail(console)
                ) from None
            finally:
                # Past the deadline, or the test session interrupted: no VM outlives its job.
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        wall = time.monotonic() - started
        rc_file = job / "rc"
        if not rc_file.is_file():
            raise VmError(
                f"QEMU exited {proc.returncode} before the job finished:\n"
                + _tail(work / "qemu.log")
                + "\nconsole:\n"
                + _tail(console)
            )
        return VmResult(
            returncode=int(rc_file.read_text()),
            output=(job / "output.log").read_text(errors="replace"),
            files={
                str(path.relative_to(job / "out")): path.read_bytes()
                for path in sorted((job / "out").rglob("*"))
                if path.is_file()
            },
            console=console.read_text(errors="replace"),
            boot_seconds=_seconds(job / "uptime-at-start"),
            job_seconds=_seconds(job / "uptime-at-end") - _seconds(job / "uptime-at-start"),
            wall_seconds=wall,
        )


def _qemu_argv(
    image: VmImage,
    overlay: Path,
    job: Path,
    console: Path,
    network: bool,
    memory_mib: int,
    cpus: int,
) -> list[str]:
    argv = [
        QEMU,
        "-accel", "tcg,thread=multi",  # no usable KVM on the hosts we test from
        "-M", "pc",
        "-cpu", "max",
        "-m", str(memory_mib),
        "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4",
        # cache=unsafe: the overlay is thrown away after the job, so flushes buy nothing.
        "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
        "-virtfs", f"local,path={CHECKOUT},mount_tag=host,security_model=none,readonly=on",
        "-virtfs", f"local,path={job},mount_tag=job,security_model=none",
    ]  # fmt: skip
    if network:
        # A fixed PCI slot: the guest names the NIC by it (ens16), whatever else is attached.
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,addr=0x10"]
    return argv


def _seconds(path: Path) -> float:
    with contextlib.suppress(OSError, ValueError):
        return float(path.read_text())
    return float("nan")


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return "(none)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str]) -> int:
    """``python3 tests/vm/kit.py build``: build the image now (scripts/install does), so the
    tests themselves never need the network."""
    if argv != ["build"]:
        print("usage: kit.py build", file=sys.stderr)
        return 2
    reason = vm_unavailable()
    if reason is not None:
        print(f"not building the stock-host VM image: {reason}")
        return 0
    started = time.monotonic()
    image = ensure_image()
    print(f"stock-host VM image: {image.directory} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
