"""Escape attempts, for real: a sandbox must not read, see, reach, mount, load or write anything
of the host, and neither its root nor its image's symlinks may reach host files."""

from __future__ import annotations

import functools
import os
import secrets
import select
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine import Engine, ImageRecord
from sandtree.errors import SandtreeError

from .kit import (
    TIERS,
    Sandboxes,
    SandboxesFactory,
    real_engine,
    shell_results,
    stderr,
    stdout,
)

pytestmark = [pytest.mark.isolation, pytest.mark.anyio]

# Capabilities that would matter on the host: CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_ADMIN.
_DANGEROUS_CAPS = {16: "CAP_SYS_MODULE", 19: "CAP_SYS_PTRACE", 21: "CAP_SYS_ADMIN"}
#: A host file the sandbox must not see (this checkout is not in any image).
_THIS_FILE = Path(__file__).resolve()
#: Docker's default set, as the sandbox's CapEff under crun.
_DOCKER_CAPS = 0x00000000A80425FB


@pytest.fixture
def host_secret(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A host file with content no sandbox may ever print."""
    secret = f"host-secret-{secrets.token_hex(16)}"
    path = tmp_path / "host-only" / "secret"
    path.parent.mkdir()
    path.write_text(secret + "\n")
    yield path, secret
    assert path.read_text() == secret + "\n"


@pytest.fixture
def loopback_server() -> Iterator[tuple[socket.socket, int]]:
    """A TCP server on the host's 127.0.0.1 that nothing should connect to."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server, server.getsockname()[1]


def _no_connection_arrived(server: socket.socket) -> bool:
    return select.select([server], [], [], 0) == ([], [], [])


@pytest.mark.parametrize("tier", TIERS)
async def test_host_files_are_unreadable_by_path_and_through_proc(
    sandboxes: Sandboxes, host_secret: tuple[Path, str], tier: str
) -> None:
    path, secret = host_secret
    op = await sandboxes.run(
        f"cat {path}; cat /proc/1/root{path}; cat /proc/self/root{path};"
        f" cat /proc/1/cwd{path}; ls {path.parent}; find / -xdev -name secret 2>/dev/null;"
        " cat /proc/1/mountinfo",
        tier=tier,
    )
    assert op.status == "SUCCESS"
    assert secret not in stdout(op) + stderr(op)
    assert stderr(op).count("can't open") == 4  # ENOENT under crun, EACCES for some in gVisor
    # The sandbox's mount table names no host path of ours.
    assert str(path.parent) not in stdout(op)


@pytest.mark.parametrize("tier", TIERS)
async def test_only_the_sandbox_s_own_processes_are_visible(
    sandboxes: Sandboxes, tier: str
) -> None:
    me = os.getpid()
    out = await sandboxes.ok(
        "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo;"
        f" cat /proc/{me}/cmdline; echo cmdline=$?; kill -0 {me}; echo kill=$?; ps -o pid,args",
        tier=tier,
    )
    pids = [int(p) for p in out.splitlines()[0].split()]
    assert pids, out
    assert max(pids) < 100, pids  # a fresh pid namespace: a handful of small pids
    assert me not in pids
    probes = shell_results(out)
    assert probes["cmdline"] != "0"
    assert probes["kill"] != "0"
    assert "pytest" not in out
    assert "python" not in out


@pytest.mark.parametrize(
    ("tier", "network"),
    [
        pytest.param("container", False, id="container-offline"),
        pytest.param("container", True, id="container-online"),
        pytest.param("gvisor", False, id="gvisor-offline", marks=pytest.mark.gvisor),
    ],
)
async def test_a_service_on_the_host_loopback_is_unreachable(
    make_sandboxes: SandboxesFactory,
    loopback_server: tuple[socket.socket, int],
    request: pytest.FixtureRequest,
    tier: str,
    network: bool,
) -> None:
    server, port = loopback_server
    pool = request.getfixturevalue("pool") if network else None
    async with make_sandboxes(network=pool) as sb:
        out = await sb.ok(
            f"nc -w 2 127.0.0.1 {port} </dev/null; echo nc=$?;"
            f" wget -T 2 -q -O- http://127.0.0.1:{port}/; echo wget=$?;"
            f" nc -w 2 localhost {port} </dev/null; echo localhost=$?",
            tier=tier,
            network=network,
        )
    probes = shell_results(out)
    assert [probes[k] != "0" for k in ("nc", "wget", "localhost")] == [True] * 3, out
    assert _no_connection_arrived(server)


@pytest.mark.parametrize("tier", TIERS)
async def test_mounting_any_filesystem_is_refused(sandboxes: Sandboxes, tier: str) -> None:
    out = await sandboxes.ok(
        "mkdir -p /mnt/a; mount -t tmpfs none /mnt/a; echo tmpfs=$?;"
        " mount -t proc proc /mnt/a; echo proc=$?; mount --bind /bin /mnt/a; echo bind=$?;"
        " mount -o remount,rw /sys; echo remount=$?; umount /proc; echo umount=$?;"
        " grep -c ' /mnt/a ' /proc/self/mounts; true",
        tier=tier,
    )
    probes = shell_results(out)
    assert {k: v for k, v in probes.items() if v == "0"} == {}, out
    assert out.splitlines()[-1] == "0"


@pytest.mark.parametrize("tier", TIERS)
async def test_loading_a_kernel_module_is_refused(sandboxes: Sandboxes, tier: str) -> None:
    op = await sandboxes.run(
        "printf '\\177ELF-not-really-a-module' > /tmp/m.ko; insmod /tmp/m.ko; echo insmod=$?;"
        " rmmod loop; echo rmmod=$?",
        tier=tier,
    )
    probes = shell_results(stdout(op))
    assert probes["insmod"] != "0"
    assert probes["rmmod"] != "0"
    assert "Operation not permitted" in stderr(op)


@pytest.mark.parametrize("tier", TIERS)
async def test_proc_and_sys_cannot_be_written(sandboxes: Sandboxes, tier: str) -> None:
    # Each write, were it to succeed, is harmless: "h" prints sysrq help, the others write back
    # the value already there.
    out = await sandboxes.ok(
        "echo h > /proc/sysrq-trigger; echo sysrq=$?;"
        " v=$(cat /proc/sys/vm/swappiness) && echo $v > /proc/sys/vm/swappiness; echo procsys=$?;"
        " v=$(cat /sys/kernel/mm/ksm/run) && echo $v > /sys/kernel/mm/ksm/run; echo ksm=$?;"
        " touch /sys/kernel/x; echo systouch=$?; mkdir /sys/fs/cgroup/x; echo cgroup=$?;"
        " echo 1 > /proc/sys/kernel/core_pattern; echo core=$?",
        tier=tier,
    )
    probes = shell_results(out)
    assert len(probes) == 6
    assert {k: v for k, v in probes.items() if v == "0"} == {}, out


async def test_new_namespaces_and_setns_are_refused_under_crun(sandboxes: Sandboxes) -> None:
    out = await sandboxes.ok(
        "unshare -U true; echo user=$?; unshare -m true; echo mount=$?; unshare -n true;"
        " echo net=$?; unshare -p -f true; echo pid=$?; nsenter -t 1 -m true; echo setns=$?",
        tier="container",
    )
    probes = shell_results(out)
    assert len(probes) == 5
    assert {k: v for k, v in probes.items() if v == "0"} == {}, out


@pytest.mark.parametrize("tier", TIERS)
async def test_the_sandbox_lacks_dangerous_capabilities(sandboxes: Sandboxes, tier: str) -> None:
    out = await sandboxes.ok(
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status", tier=tier
    )
    status = dict(line.split(":\t") for line in out.splitlines())
    for field in ("CapEff", "CapBnd"):
        caps = int(status[field], 16)
        assert [name for bit, name in _DANGEROUS_CAPS.items() if caps >> bit & 1] == []
    if tier == "container":
        assert int(status["CapEff"], 16) == _DOCKER_CAPS
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"  # a filter is installed


@pytest.mark.parametrize("tier", TIERS)
async def test_root_inside_is_an_unprivileged_uid_outside(sandboxes: Sandboxes, tier: str) -> None:
    engine = sandboxes.engine
    child = await sandboxes.commit(
        "touch /made-by-root; mkdir /dir-by-root; touch /home/by-user;"
        " chown 1000:1000 /home/by-user; chown 70000 /made-by-root; echo chown=$?",
        tier=tier,
    )
    layer = engine.layers.path(child.layers[-1])
    assert (os.lstat(layer / "made-by-root").st_uid, os.lstat(layer / "made-by-root").st_gid) == (
        100000,
        100000,
    )
    assert os.lstat(layer / "dir-by-root").st_uid == 100000
    assert (
        os.lstat(layer / "home" / "by-user").st_uid,
        os.lstat(layer / "home" / "by-user").st_gid,
    ) == (101000, 101000)
    if tier == "container":
        # gVisor shows its own kernel's identity map; the host-side ids above are what count.
        uid_map = await sandboxes.ok("cat /proc/self/uid_map /proc/self/gid_map", tier=tier)
        assert [line.split() for line in uid_map.splitlines()] == [["0", "100000", "65536"]] * 2


@pytest.mark.parametrize("tier", TIERS)
async def test_an_id_outside_the_mapped_range_cannot_be_used(
    sandboxes: Sandboxes, tier: str
) -> None:
    op = await sandboxes.run("touch /f; chown 70000 /f", tier=tier)
    assert op.status == "SUCCESS"
    assert op.result is not None
    assert op.result["state"]["exit_code"] != 0


def _evil_rootfs(busybox_rootfs: Path, dest: Path, host_dir: Path, missing: Path) -> Path:
    """busybox plus symlinks to a host directory and a host file by absolute path.

    The image also has a directory of its own at ``host_dir``'s path (where those symlinks
    lead inside the image), while ``missing`` exists on the host only.
    """
    shutil.copytree(busybox_rootfs, dest, symlinks=True)
    (dest / "escape").symlink_to(host_dir)
    (dest / "escape-missing").symlink_to(missing)
    (dest / "etc" / "secret-link").symlink_to(host_dir / "secret")
    (dest / "etc" / "dotdot-link").symlink_to("../../../../../../../.." + str(host_dir))
    inside = dest / str(host_dir).lstrip("/")
    inside.mkdir(parents=True)
    (inside / "decoy").write_text("image's own file\n")
    return dest


@pytest.fixture
def host_dir_elsewhere(tmp_path: Path) -> Path:
    """A host directory that the evil image has no directory for."""
    path = tmp_path / "host-only-2"
    path.mkdir()
    return path


@pytest.fixture
async def evil_image(
    sandboxes: Sandboxes,
    busybox_rootfs: Path,
    tmp_path: Path,
    host_secret: tuple[Path, str],
    host_dir_elsewhere: Path,
) -> ImageRecord:
    path, _ = host_secret
    rootfs = _evil_rootfs(busybox_rootfs, tmp_path / "evil-rootfs", path.parent, host_dir_elsewhere)
    return await sandboxes.engine.import_local(rootfs, tag="evil")


@pytest.mark.parametrize("tier", TIERS)
async def test_a_placed_file_lands_inside_the_image_even_through_a_symlink_to_the_host(
    sandboxes: Sandboxes, evil_image: ImageRecord, host_secret: tuple[Path, str], tier: str
) -> None:
    path, secret = host_secret
    engine = sandboxes.engine
    placed = (
        await sandboxes.place(b"pwned-1\n", "/escape/pwned"),
        await sandboxes.place(b"pwned-2\n", "/etc/dotdot-link/pwned2"),
        await sandboxes.place(b"pwned-3\n", "/etc/secret-link"),
    )
    child = await sandboxes.commit("ls /escape/", tier=tier, image=evil_image.uuid, files=placed)
    assert os.listdir(path.parent) == ["secret"]
    assert path.read_text() == secret + "\n"
    # Resolved in the image: /escape -> <host dir> names the image's own <host dir>.
    with engine.open_file(child, f"{path.parent}/pwned") as f:
        assert f.read() == b"pwned-1\n"
    with engine.open_file(child, "/escape/pwned2") as f:
        assert f.read() == b"pwned-2\n"
    with engine.open_file(child, "/etc/secret-link") as f:  # the symlink itself was replaced
        assert f.read() == b"pwned-3\n"
    assert (await sandboxes.ok("ls /escape/", tier=tier, image=child.uuid)).split() == [
        "decoy",
        "pwned",
        "pwned2",
    ]


async def test_a_placed_file_through_a_symlink_to_a_missing_directory_is_refused(
    sandboxes: Sandboxes, evil_image: ImageRecord, host_dir_elsewhere: Path
) -> None:
    placed = await sandboxes.place(b"pwned\n", "/escape-missing/pwned")
    op = await sandboxes.run("true", image=evil_image.uuid, files=(placed,))
    assert op.status == "FAILED"
    assert op.error is not None
    assert "symlink to a missing directory" in op.error
    assert os.listdir(host_dir_elsewhere) == []
    await sandboxes.healthy()


def _never_host(call: Callable[[], Any], secret: str) -> None:
    """``call`` either fails with a sandtree/OS error or returns nothing of the host."""
    try:
        value = call()
    except (SandtreeError, OSError):
        return
    if hasattr(value, "read"):
        with value:
            value = value.read()
    assert secret not in repr(value), value
    assert "secret" not in repr(value), value


async def test_inspecting_an_image_never_follows_a_symlink_onto_the_host(
    sandboxes: Sandboxes, evil_image: ImageRecord, host_secret: tuple[Path, str]
) -> None:
    path, secret = host_secret
    engine: Engine = sandboxes.engine
    for target in (
        "/escape/secret",
        "/etc/secret-link",
        "/etc/dotdot-link/secret",
        f"/../../../../..{path}",
        str(path),
    ):
        _never_host(functools.partial(engine.open_file, evil_image, target), secret)
        _never_host(functools.partial(engine.stat_path, evil_image, target), secret)
    for target in ("/escape", "/etc/dotdot-link", str(path.parent)):
        _never_host(functools.partial(engine.list_dir, evil_image, target), secret)
    # A symlink itself is listed as one, not as what it points to.
    items = {Path(i.path).name: i for i in engine.list_dir(evil_image, "/")}
    assert items["escape"].is_symlink
    assert items["escape"].symlink_to == str(path.parent)


@pytest.mark.parametrize("tier", TIERS)
async def test_a_chroot_breakout_ends_at_the_sandbox_root(
    tmp_path: Path, debian_rootfs: Path, host_secret: tuple[Path, str], tier: str
) -> None:
    path, secret = host_secret
    # The classic escape: chroot into a subdirectory without entering it, walk up, chroot(".").
    script = (
        'mkdir "/tmp/jail"; chroot "/tmp/jail" or die "chroot: $!"; chdir ".." for 1..64;'
        ' chroot "." or die "chroot back: $!"; opendir D, "/";'
        ' print join(" ", sort grep !/^\\./, readdir D), "\\n";'
        ' print -e "/proc/1/root/etc/debian_version" ? "own-root\\n" : "no-proc\\n";'
        ' print -e $ARGV[1] ? "host-visible\\n" : "host-hidden\\n";'
        ' if (open F, "<", $ARGV[0]) { print <F> } else { print "secret: $!\\n" }'
    )
    async with real_engine(tmp_path / "data") as engine:
        await engine.import_local(debian_rootfs, tag="debian")
        sb = Sandboxes(engine, engine.resolve_image("tag:debian"))
        out = await sb.ok(f"perl -e '{script}' {path} {_THIS_FILE}", tier=tier, image="tag:debian")
    listing, *rest = out.splitlines()
    assert {"bin", "etc", "usr", "var"} <= set(listing.split())
    assert "host-only" not in listing
    assert "work" not in listing.split()
    assert rest[1:] == ["host-hidden", "secret: No such file or directory"]
    assert secret not in out


@pytest.mark.parametrize("tier", TIERS)
async def test_a_setuid_root_binary_gives_no_privilege(
    tmp_path: Path, debian_rootfs: Path, tier: str
) -> None:
    async with real_engine(tmp_path / "data") as engine:
        await engine.import_local(debian_rootfs, tag="debian")
        sb = Sandboxes(engine, engine.resolve_image("tag:debian"))
        armed = await sb.commit(
            "cat /usr/bin/cat > /usr/local/bin/scat && chmod 4755 /usr/local/bin/scat"
            " && echo root-only-data > /root-only && chmod 600 /root-only",
            tier=tier,
            image="tag:debian",
        )
        op = await sb.run(
            "ls -ln /usr/local/bin/scat 2>/dev/null | cut -c1-10; "
            "/usr/local/bin/scat /proc/self/status | grep -E '^(Uid|Gid):';"
            " /usr/local/bin/scat /root-only; echo read=$?",
            tier=tier,
            image=armed.uuid,
            uid=1000,
            gid=1000,
        )
    assert op.status == "SUCCESS", op.error
    out = stdout(op)
    assert "root-only-data" not in out
    uid_line = next(line for line in out.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["1000"] * 4  # real, effective, saved, fs: no setuid
    assert shell_results(out)["read"] != "0"
    assert "Permission denied" in stderr(op)
