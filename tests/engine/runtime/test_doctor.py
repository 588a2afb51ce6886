"""The host checks of ``sandtree doctor`` and ``sandtree serve``'s preflight: each finding on
fake hosts (a fake /proc and /sys tree, a PATH of scripted tools), the data dir probes on real
filesystems (ext4, a small tmpfs, ramfs), and a run on this very host."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandtree.config import Settings
from sandtree.engine import Finding, HostView, blocking, host_checks
from sandtree.engine.runtime import _doctor, _doctor_fs, _doctor_tools

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts filesystems (needs root)")

_libc = ctypes.CDLL(None, use_errno=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tool(bin_dir: Path, name: str, output: str, status: int = 0) -> None:
    """A scripted ``name`` on the fake PATH: prints ``output``, exits ``status``."""
    script = bin_dir / name
    _write(script, f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {status}\n")
    script.chmod(0o755)


@pytest.fixture
def stock(tmp_path: Path) -> HostView:
    """A fake stock Debian 12 host: Linux 6.1, cgroup v2 with the service's cgroup delegated,
    crun 1.8.1, runc, runsc, iptables on nf_tables, iproute2 6.1."""
    proc, sys_, bin_dir = tmp_path / "proc", tmp_path / "sys", tmp_path / "bin"
    _write(proc / "sys/kernel/osrelease", "6.1.0-28-amd64\n")
    _write(proc / "filesystems", "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n")
    _write(proc / "modules", "overlay 151552 0 - Live 0x0\n")
    _write(proc / "sys/user/max_user_namespaces", "63429\n")
    _write(proc / "self/ns/user", "")
    _write(proc / "sys/kernel/seccomp/actions_avail", "kill_process kill_thread trap errno "
           "user_notif trace log allow\n")  # fmt: skip
    _write(proc / "self/status", "Name:\tpython3\nSeccomp:\t0\nSeccomp_filters:\t0\n")
    _write(proc / "self/cgroup", "0::/system.slice/sandtree.service\n")
    cg = sys_ / "fs/cgroup"
    _write(cg / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    _write(cg / "system.slice/sandtree.service/cgroup.controllers", "cpu memory pids\n")
    bin_dir.mkdir()
    _tool(bin_dir, "crun", "crun version 1.8.1\ncommit: f8a096be\nspec: 1.0.0\n+SYSTEMD +SECCOMP")
    _tool(bin_dir, "runc", "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2")
    _tool(bin_dir, "runsc", "runsc version 0.0~20221219.0\nspec: 1.0.2-dev")
    _tool(bin_dir, "iptables", "iptables v1.8.9 (nf_tables)")
    _tool(bin_dir, "ip", "ip utility, iproute2-6.1.0, libbpf 1.1.0")
    return HostView(proc=proc, sys=sys_, path=str(bin_dir), euid=0)


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def _by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


def _host_level(host: HostView, settings: Settings) -> dict[str, Finding]:
    """Every check that reads only the (fake) host, not the data dir's filesystem."""
    return _by_name([
        _doctor.check_root(host),
        _doctor.check_kernel(host),
        _doctor.check_overlayfs(host),
        _doctor.check_cgroups(host, settings),
        _doctor.check_user_namespaces(host, settings),
        _doctor.check_seccomp(host),
        *_doctor_tools.runtime_checks(host, settings),
        *_doctor_tools.network_checks(host),
    ])  # fmt: skip


def test_a_stock_debian_12_host_passes_every_host_check_and_each_names_what_it_found(
    stock: HostView, tmp_path: Path
) -> None:
    found = _host_level(stock, _settings(tmp_path))

    assert {f.status for f in found.values()} == {"ok"}
    assert found["kernel"].detail == "Linux 6.1.0-28-amd64"
    assert found["cgroups"].detail.startswith("cgroup v2 (unified), controllers memory pids cpu")
    assert "sandtree runs in /system.slice/sandtree.service" in found["cgroups"].detail
    assert found["user-namespaces"].detail == "user.max_user_namespaces = 63429"
    assert found["crun"].detail == f"crun 1.8.1 ({stock.path}/crun)"
    assert found["runc"].detail.startswith("runc 1.1.5+ds1 ")
    assert found["runsc"].detail.startswith("runsc 0.0~20221219.0 ")
    assert found["iptables"].detail.startswith("iptables 1.8.9, nf_tables backend ")
    assert found["iproute2"].detail.startswith("iproute2 6.1.0 ")


def test_a_kernel_older_than_5_10_fails_and_says_which_kernel_to_boot(
    stock: HostView, tmp_path: Path
) -> None:
    _write(stock.proc / "sys/kernel/osrelease", "4.19.0-27-amd64\n")

    kernel = _doctor.check_kernel(stock)

    assert (kernel.status, kernel.required) == ("fail", True)
    assert "4.19.0-27-amd64 is older than 5.10" in kernel.detail
    assert "boot a Linux 5.10 or newer kernel" in kernel.fix


def test_without_overlay_in_proc_filesystems_it_fails_with_the_modprobe_to_run(
    stock: HostView,
) -> None:
    _write(stock.proc / "filesystems", "nodev\tsysfs\n\text4\n")
    _write(stock.proc / "modules", "")

    overlay = _doctor.check_overlayfs(stock)

    assert overlay.status == "fail"
    assert overlay.detail == "overlay is not in /proc/filesystems and its module is not loaded"
    assert overlay.fix.startswith("modprobe overlay")


def test_a_v1_host_missing_the_pids_hierarchy_fails_with_the_mount_command(
    stock: HostView, tmp_path: Path
) -> None:
    cg = stock.sys / "fs/cgroup"
    shutil.rmtree(cg)
    for controller in ("memory", "cpu", "cpuacct"):
        _write(cg / controller / "cgroup.procs", "")
    # A pure v1 host: no v2 hierarchy is mounted anywhere, so the kernel lists no "0::" line.
    _write(stock.proc / "self/cgroup", "4:memory:/\n3:cpu,cpuacct:/\n1:name=systemd:/init.scope\n")

    found = _doctor.check_cgroups(stock, _settings(tmp_path))

    assert found.status == "fail"
    assert found.detail.startswith("cgroup v1, controllers memory cpu cpuacct; missing: pids")
    assert found.fix == "mkdir -p /sys/fs/cgroup/pids && mount -t cgroup -o pids cgroup " \
        "/sys/fs/cgroup/pids"  # fmt: skip


def test_a_hybrid_host_is_named_hybrid_and_its_limits_go_through_v1(
    stock: HostView, tmp_path: Path
) -> None:
    cg = stock.sys / "fs/cgroup"
    shutil.rmtree(cg)
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        _write(cg / controller / "cgroup.procs", "")
    _write(cg / "unified/cgroup.controllers", "hugetlb\n")

    found = _doctor.check_cgroups(stock, _settings(tmp_path))

    assert found.status == "ok"
    assert found.detail == (
        "cgroup hybrid (limits through the v1 controllers), controllers memory pids cpu cpuacct"
    )


def test_a_v2_host_without_the_memory_controller_fails_with_the_boot_setting(
    stock: HostView, tmp_path: Path
) -> None:
    _write(stock.sys / "fs/cgroup/cgroup.controllers", "cpu io pids\n")

    found = _doctor.check_cgroups(stock, _settings(tmp_path))

    assert (found.status, found.required) == ("fail", True)
    assert "missing: memory" in found.detail
    assert "systemd.unified_cgroup_hierarchy=1" in found.fix


def test_a_v2_host_without_cpu_passes_when_no_cpu_limit_is_set(
    stock: HostView, tmp_path: Path
) -> None:
    _write(stock.sys / "fs/cgroup/cgroup.controllers", "io memory pids\n")

    limited = _doctor.check_cgroups(stock, _settings(tmp_path))
    unlimited = _doctor.check_cgroups(stock, _settings(tmp_path, cpu_limit=0.0))

    assert limited.status == "fail"
    assert unlimited.status == "ok"


@pytest.mark.parametrize("value", ["0\n", "4\n"])
def test_too_few_user_namespaces_fail_with_the_sysctl_to_set(
    stock: HostView, tmp_path: Path, value: str
) -> None:
    _write(stock.proc / "sys/user/max_user_namespaces", value)

    found = _doctor.check_user_namespaces(stock, _settings(tmp_path, max_concurrency=8))

    assert found.status == "fail"
    assert f"user.max_user_namespaces is {value.strip()}" in found.detail
    assert found.fix.startswith("sysctl -w user.max_user_namespaces=15000")


def test_a_kernel_without_user_namespaces_fails(stock: HostView, tmp_path: Path) -> None:
    (stock.proc / "sys/user/max_user_namespaces").unlink()

    found = _doctor.check_user_namespaces(stock, _settings(tmp_path))

    assert found.status == "fail"
    assert "CONFIG_USER_NS=y" in found.fix


def test_a_kernel_without_seccomp_filters_fails(stock: HostView) -> None:
    (stock.proc / "sys/kernel/seccomp/actions_avail").unlink()
    _write(stock.proc / "self/status", "Name:\tpython3\n")

    found = _doctor.check_seccomp(stock)

    assert (found.status, found.detail) == ("fail", "this kernel has no seccomp")
    assert "CONFIG_SECCOMP_FILTER=y" in found.fix


def test_crun_missing_with_runc_present_warns_and_the_container_tier_uses_runc(
    stock: HostView, tmp_path: Path
) -> None:
    Path(str(stock.path), "crun").unlink()

    found = _by_name(_doctor_tools.runtime_checks(stock, _settings(tmp_path)))

    assert (found["crun"].status, found["crun"].required) == ("warn", False)
    assert "the container tier uses runc" in found["crun"].detail
    assert found["crun"].fix == "apt-get install crun"
    assert found["runc"].status == "ok"
    assert blocking(list(found.values())) == []


def test_no_container_runtime_at_all_blocks_the_server(stock: HostView, tmp_path: Path) -> None:
    Path(str(stock.path), "crun").unlink()
    Path(str(stock.path), "runc").unlink()

    found = _doctor_tools.runtime_checks(stock, _settings(tmp_path))

    assert [f.name for f in blocking(found)] == ["crun", "runc"]


def test_a_runtime_whose_version_command_fails_is_reported_with_its_error(
    stock: HostView, tmp_path: Path
) -> None:
    _tool(Path(str(stock.path)), "crun", "crun: error while loading shared libraries", 127)

    crun = _by_name(_doctor_tools.runtime_checks(stock, _settings(tmp_path)))["crun"]

    assert crun.status == "fail"
    assert "`crun --version` failed (exit status 127: crun: error while loading" in crun.detail
    assert crun.fix == "apt-get install --reinstall crun"


def test_a_version_line_of_an_unknown_shape_is_ok_and_says_so(
    stock: HostView, tmp_path: Path
) -> None:
    _tool(Path(str(stock.path)), "crun", "crun (experimental build)")

    crun = _by_name(_doctor_tools.runtime_checks(stock, _settings(tmp_path)))["crun"]

    assert (crun.status, crun.detail) == ("ok", f"crun of an unknown version ({stock.path}/crun)")


def test_runsc_missing_warns_unless_gvisor_is_the_default_tier(
    stock: HostView, tmp_path: Path
) -> None:
    Path(str(stock.path), "runsc").unlink()

    default = _by_name(_doctor_tools.runtime_checks(stock, _settings(tmp_path)))["runsc"]
    gvisor = _doctor_tools.runtime_checks(stock, _settings(tmp_path, default_isolation="gvisor"))

    assert (default.status, default.required) == ("warn", False)
    assert default.fix == "apt-get install runsc"
    assert [f.name for f in blocking(gvisor)] == ["runsc"]


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("ip utility, iproute2-6.1.0, libbpf 1.1.0", "6.1.0"),
        ("ip utility, iproute2-ss200127", "ss200127"),
        ("ip utility, iproute2-6.18.0", "6.18.0"),
    ],
)
def test_both_iproute2_version_formats_parse(output: str, version: str) -> None:
    assert _doctor_tools.parse_iproute2_version(output) == version


def test_missing_networking_tools_warn_with_the_package_but_do_not_block(
    stock: HostView,
) -> None:
    Path(str(stock.path), "iptables").unlink()
    Path(str(stock.path), "ip").unlink()

    found = _by_name(_doctor_tools.network_checks(stock))

    assert {f.status for f in found.values()} == {"warn"}
    assert found["iptables"].fix == "apt-get install iptables"
    assert found["iproute2"].fix == "apt-get install iproute2"
    assert "runs with networking.enabled are refused" in found["iptables"].detail
    assert blocking(list(found.values())) == []


def test_not_being_root_fails_and_the_root_only_probes_say_they_did_not_run(
    stock: HostView, tmp_path: Path
) -> None:
    user = HostView(proc=stock.proc, sys=stock.sys, path=stock.path, euid=1000)

    found = _by_name(host_checks(_settings(tmp_path), user))

    assert found["root"].status == "fail"
    assert found["root"].fix == "run it as root: sudo sandtree …"
    for name in ("overlay-layers", "xattrs", "overlay-upper"):
        assert (found[name].status, found[name].detail.split(":")[0]) == ("warn", "not checked")


@contextlib.contextmanager
def _mounted(fstype: str, target: Path, options: str = "") -> Iterator[Path]:
    target.mkdir(parents=True)
    data = options.encode() if options else None
    if _libc.mount(fstype.encode(), os.fsencode(target), fstype.encode(), 0, data) != 0:
        pytest.fail(f"mount -t {fstype}: {os.strerror(ctypes.get_errno())}")
    try:
        yield target
    finally:
        _libc.umount2(os.fsencode(target), 2)  # MNT_DETACH


@needs_root
def test_a_data_dir_on_ramfs_fails_because_it_keeps_no_xattrs(tmp_path: Path) -> None:
    with _mounted("ramfs", tmp_path / "ramfs") as ramfs:
        found = _by_name(_doctor_fs.data_dir_checks(HostView(), Settings(data_dir=ramfs / "data")))
        left = sorted(p.name for p in ramfs.iterdir())

    assert found["filesystem"].detail == f"{ramfs} is on ramfs, with d_type"
    assert (found["xattrs"].status, found["xattrs"].required) == ("fail", True)
    assert "ramfs at" in found["xattrs"].detail
    assert "keeps no trusted.* xattrs (Operation not supported)" in found["xattrs"].detail
    assert found["xattrs"].fix.startswith("put the data dir on ext4, xfs (ftype=1) or btrfs")
    assert left == []  # the probe is gone, and the data dir was never made


@needs_root
def test_a_small_tmpfs_data_dir_works_for_overlay_but_warns_about_free_space(
    tmp_path: Path,
) -> None:
    with _mounted("tmpfs", tmp_path / "small", "size=64m") as small:
        found = _by_name(_doctor_fs.data_dir_checks(HostView(), Settings(data_dir=small)))

    assert (found["disk"].status, found["disk"].required) == ("warn", False)
    assert found["disk"].detail.startswith(f"0.1 GiB free under {small}, under 5 GiB")
    assert found["filesystem"].status == "ok"
    assert found["xattrs"].status == "ok"
    assert found["overlay-upper"].status == "ok"


@needs_root
def test_the_probes_of_an_existing_data_dir_leave_it_as_it_was(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "kept").write_text("x", encoding="utf-8")

    found = _by_name(_doctor_fs.data_dir_checks(HostView(), Settings(data_dir=data)))

    assert found["overlay-upper"].status == "ok"
    assert sorted(p.name for p in data.iterdir()) == ["kept"]
    assert _doctor_fs.probe_base(tmp_path / "a" / "b") == tmp_path


def _cgroup_mode_from_mountinfo() -> str:
    """How the host's cgroup filesystems are mounted, read from PID 1's mountinfo (not the
    code under test; this process may be in a namespace where a hybrid v2 mount is hidden)."""
    mounts = Path("/proc/1/mountinfo").read_text(encoding="utf-8").splitlines()
    v2 = {line.split()[4] for line in mounts if line.split(" - ")[1].startswith("cgroup2 ")}
    if "/sys/fs/cgroup" in v2:
        return "v2"
    return "hybrid" if "/sys/fs/cgroup/unified" in v2 else "v1"


@needs_root
@pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed")
def test_on_this_host_the_findings_name_its_real_kernel_cgroups_and_crun(tmp_path: Path) -> None:
    found = _by_name(host_checks(Settings(data_dir=tmp_path / "data")))
    crun_says = subprocess.run(["crun", "--version"], capture_output=True, text=True, check=True)
    crun_version = crun_says.stdout.splitlines()[0].split()[-1]
    release = os.uname().release
    major, minor = map(int, re.findall(r"\d+", release)[:2])

    assert blocking(list(found.values())) == []
    assert found["kernel"].detail == f"Linux {release}"
    assert found["cgroups"].detail.startswith(f"cgroup {_cgroup_mode_from_mountinfo()}")
    assert found["crun"].detail == f"crun {crun_version} ({shutil.which('crun')})"
    lowerdir_plus = "lowerdir+" if (major, minor) >= (6, 8) else "legacy mount(2) path"
    assert found["overlay-layers"].detail.startswith(lowerdir_plus)
    assert found["filesystem"].detail.startswith(f"{tmp_path} is on ")
