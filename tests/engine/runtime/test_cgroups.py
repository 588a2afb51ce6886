"""cgroup detection and the v2 code against a fake cgroup tree: a temporary directory laid
out like /sys/fs/cgroup (the kernel's control files as regular files). What the kernel itself
does on v2 (moving tasks, counting) is proved in the Debian 12 VM; here: which mode is
detected, where sandboxes go, what is written where, how counters are read, what is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandtree.engine.runtime._cgroup_v2 import V2Cgroup, V2Tree
from sandtree.engine.runtime._cgroups import detect, read_kv, wait_unpopulated

ALL = "cpuset cpu io memory hugetlb pids rdma misc"
SERVICE = "system.slice/sandtree.service"


def _cgroup(path: Path, *, controllers: str = ALL, enabled: str = "", procs: str = "") -> Path:
    """A cgroup directory with the files the kernel would give it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled + ("\n" if enabled else ""))
    (path / "cgroup.procs").write_text(procs)
    return path


def _v2(tmp_path: Path, *, controllers: str = ALL) -> Path:
    root = _cgroup(tmp_path / "cgroup", controllers=controllers, enabled="cpu memory pids")
    _cgroup(root / "system.slice", enabled="cpu memory pids")
    return root


def _tree(tmp_path: Path, root: Path, own: str) -> V2Tree:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return V2Tree(root, proc)


def _delegate(path: Path) -> None:
    os.setxattr(path, "trusted.delegate", b"1")


# -- detection ---------------------------------------------------------------------------------


def test_a_unified_hierarchy_is_detected_as_v2_with_its_controllers(tmp_path: Path) -> None:
    found = detect(_v2(tmp_path))

    assert (found.mode, found.controllers, found.missing) == ("v2", ("memory", "pids", "cpu"), ())
    assert found.unified == tmp_path / "cgroup"


def test_v1_controllers_beside_a_unified_mount_are_detected_as_hybrid(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpu", "cpuacct", "blkio"):
        _cgroup(root / controller)
    _cgroup(root / "unified", controllers="hugetlb")

    found = detect(root)

    assert (found.mode, found.unified) == ("hybrid", root / "unified")
    assert found.controllers == ("memory", "pids", "cpu", "cpuacct")
    assert "hybrid" in found.describe()


def test_v1_hierarchies_alone_are_detected_as_v1_naming_a_missing_controller(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "cpu", "cpuacct"):
        _cgroup(root / controller)

    found = detect(root)

    assert (found.mode, found.unified, found.controllers) == (
        "v1",
        None,
        ("memory", "cpu", "cpuacct"),
    )
    assert found.missing == (f"pids: no v1 hierarchy mounted at {root / 'pids'}",)


def test_a_hybrid_host_whose_v2_mount_is_hidden_from_this_process_is_still_hybrid(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids", "cpu", "cpuacct"):
        _cgroup(root / controller)
    hybrid = tmp_path / "hybrid-self-cgroup"
    hybrid.write_text("4:memory:/\n1:name=systemd:/\n0::/\n")
    legacy = tmp_path / "legacy-self-cgroup"
    legacy.write_text("4:memory:/\n1:name=systemd:/\n")

    assert detect(root, hybrid).mode == "hybrid"
    assert detect(root, legacy).mode == "v1"


def test_a_v2_root_without_the_pids_controller_reports_it_missing(tmp_path: Path) -> None:
    found = detect(_v2(tmp_path, controllers="cpu memory io"))

    assert found.controllers == ("memory", "cpu")
    (line,) = found.missing
    assert line.startswith("pids: not in ")
    assert "cgroup.controllers" in line
    assert "missing: pids" in found.describe()


# -- where sandboxes live ----------------------------------------------------------------------


def test_a_server_in_the_root_cgroup_makes_a_sandtree_subtree_and_stays_put(
    tmp_path: Path,
) -> None:
    root = _cgroup(tmp_path / "cgroup", procs="1\n77\n")
    tree = _tree(tmp_path, root, "/")

    assert tree.prepare() == ("memory", "pids", "cpu")

    assert tree.base == root / "sandtree"
    assert tree.base.is_dir()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    # The root may hold processes (v2 exempts it): nobody is moved.
    assert (root / "cgroup.procs").read_text() == "1\n77\n"
    assert tree.missing == ()


def test_a_server_in_a_delegated_cgroup_moves_into_a_leaf_and_hands_controllers_down(
    tmp_path: Path,
) -> None:
    root = _v2(tmp_path)
    service = _cgroup(root / SERVICE, controllers="cpu memory pids", procs="4242\n")
    _delegate(service)
    tree = _tree(tmp_path, root, f"/{SERVICE}")

    assert tree.prepare() == ("memory", "pids", "cpu")

    assert tree.base == service
    assert (service / "server" / "cgroup.procs").read_text() == "4242"
    assert (service / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    # Levels above that already hand the controllers down are left as they are.
    assert (root / "system.slice" / "cgroup.subtree_control").read_text() == "cpu memory pids\n"


def test_a_server_that_cannot_leave_its_cgroup_enables_no_controller_there(
    tmp_path: Path,
) -> None:
    root = _v2(tmp_path)
    service = _cgroup(root / SERVICE, controllers="cpu memory pids", procs="4242\n")
    _delegate(service)
    (service / "server" / "cgroup.procs").mkdir(parents=True)  # writing it fails
    tree = _tree(tmp_path, root, f"/{SERVICE}")

    with pytest.raises(IsADirectoryError):
        tree.prepare()

    assert (service / "cgroup.subtree_control").read_text() == ""


def test_a_service_cgroup_not_delegated_to_sandtree_is_left_to_systemd(tmp_path: Path) -> None:
    root = _v2(tmp_path)
    service = _cgroup(root / "system.slice/other.service", procs="4242\n")
    tree = _tree(tmp_path, root, "/system.slice/other.service")

    tree.prepare()

    assert tree.base == root / "sandtree"
    assert not (service / "server").exists()
    assert (service / "cgroup.subtree_control").read_text() == ""


def test_a_process_started_from_the_server_leaf_shares_the_server_s_subtree(
    tmp_path: Path,
) -> None:
    root = _v2(tmp_path)
    service = _cgroup(root / SERVICE, controllers="cpu memory pids")
    _delegate(service)
    leaf = _cgroup(service / "server", controllers="cpu memory pids", procs="4242\n")
    tree = _tree(tmp_path, root, f"/{SERVICE}/server")

    tree.prepare()

    assert tree.base == service
    assert not (leaf / "server").exists()


def test_a_controller_the_root_does_not_offer_is_reported_naming_it(tmp_path: Path) -> None:
    root = _cgroup(tmp_path / "cgroup", controllers="io memory pids", enabled="memory pids")
    _cgroup(root / "system.slice", controllers="memory pids", enabled="memory pids")
    service = _cgroup(root / SERVICE, controllers="memory pids")
    _delegate(service)
    tree = _tree(tmp_path, root, f"/{SERVICE}")

    assert tree.prepare() == ("memory", "pids")

    assert tree.missing == (f"cpu: {root} does not offer it (its cgroup.controllers)",)
    assert (service / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_controllers_the_kernel_refuses_are_reported_each_with_the_file_and_the_error(
    tmp_path: Path,
) -> None:
    root = _v2(tmp_path)
    service = _cgroup(root / SERVICE, controllers="cpu memory pids")
    _delegate(service)
    (service / "cgroup.subtree_control").unlink()
    (service / "cgroup.subtree_control").mkdir()  # every write to it fails
    tree = _tree(tmp_path, root, f"/{SERVICE}")

    assert tree.prepare() == ()

    control = service / "cgroup.subtree_control"
    assert tree.missing == tuple(
        f"{c}: writing +{c} to {control}: Is a directory" for c in ("memory", "pids", "cpu")
    )


# -- one sandbox's cgroup ----------------------------------------------------------------------


def _sandbox(tmp_path: Path, *, swap: bool = True) -> V2Cgroup:
    root = _v2(tmp_path)
    base = _cgroup(root / "sandtree")
    cgroup = V2Cgroup("st-1", base=base, root=root)
    if swap:  # the kernel makes memory.swap.max with the directory when it accounts swap
        cgroup.dir.mkdir()
        (cgroup.dir / "memory.swap.max").write_text("max\n")
    return cgroup


def test_a_sandbox_cgroup_gets_its_memory_swap_pids_and_cpu_limits(tmp_path: Path) -> None:
    cgroup = _sandbox(tmp_path)

    cgroup.create(memory_bytes=128 << 20, pids=64, cpus=0.5)

    files = {name: (cgroup.dir / name).read_text() for name in os.listdir(cgroup.dir)}
    assert files == {
        "memory.max": str(128 << 20),
        "memory.swap.max": "0",
        "pids.max": "64",
        "cpu.max": "50000 100000",
    }
    assert cgroup.runtime_path == "/sandtree/st-1"


def test_without_swap_accounting_or_a_cpu_quota_those_files_are_not_written(
    tmp_path: Path,
) -> None:
    cgroup = _sandbox(tmp_path, swap=False)

    cgroup.create(memory_bytes=1 << 30, pids=10, cpus=0)

    assert sorted(os.listdir(cgroup.dir)) == ["memory.max", "pids.max"]


def test_a_sandbox_started_by_the_runtime_in_a_child_hands_its_controllers_down(
    tmp_path: Path,
) -> None:
    cgroup = _sandbox(tmp_path)

    cgroup.create(memory_bytes=1 << 30, pids=10, cpus=1.0, nested=True)

    assert (cgroup.dir / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert cgroup.container_path == "/sandtree/st-1/sandbox"


def _counters(cgroup: V2Cgroup, *, peak: bool, oom_kill: int) -> None:
    d = cgroup.dir
    d.mkdir(exist_ok=True)
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 12\noom 1\noom_kill {oom_kill}\n")
    (d / "memory.max").write_text(f"{128 << 20}\n")
    (d / "memory.current").write_text("1048576\n")
    if peak:
        (d / "memory.peak").write_text("99999744\n")
    (d / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (d / "pids.events").write_text("max 3\n")


def test_stats_read_oom_kills_peak_cpu_time_and_pids_limit_hits(tmp_path: Path) -> None:
    cgroup = _sandbox(tmp_path)
    _counters(cgroup, peak=True, oom_kill=1)

    stats = cgroup.stats()

    assert (stats.oom_killed, stats.pids_limit_hit) == (True, True)
    assert (stats.user_cpu_time, stats.system_cpu_time) == (2.0, 0.5)
    assert stats.max_memory_bytes == 99999744


def test_without_memory_peak_an_oom_killed_run_reports_its_limit_and_another_what_is_charged(
    tmp_path: Path,
) -> None:
    killed = _sandbox(tmp_path / "a")
    _counters(killed, peak=False, oom_kill=1)
    calm = _sandbox(tmp_path / "b")
    _counters(calm, peak=False, oom_kill=0)

    assert killed.stats().max_memory_bytes == 128 << 20
    assert calm.stats().max_memory_bytes == 1048576
    assert calm.stats().oom_killed is False


def test_killing_a_sandbox_uses_cgroup_kill_when_the_kernel_has_it(tmp_path: Path) -> None:
    cgroup = _sandbox(tmp_path)
    (cgroup.dir / "cgroup.kill").write_text("")

    cgroup.kill_all()

    assert (cgroup.dir / "cgroup.kill").read_text() == "1"


def test_without_cgroup_kill_every_process_of_the_subtree_gets_sigkill(tmp_path: Path) -> None:
    cgroup = _sandbox(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (cgroup.dir / "sandbox").mkdir()
        (cgroup.dir / "sandbox" / "cgroup.procs").write_text(f"{child.pid}\n")

        cgroup.kill_all()

        assert child.wait(timeout=10) == -9
    finally:
        child.kill()
        child.wait()


def test_removing_a_sandbox_cgroup_removes_its_children_first(tmp_path: Path) -> None:
    cgroup = _sandbox(tmp_path, swap=False)
    (cgroup.dir / "sandbox" / "inner").mkdir(parents=True)

    cgroup.remove()

    assert not cgroup.dir.exists()
    assert cgroup.dir.parent.is_dir()


def test_waiting_for_an_empty_cgroup_ends_when_events_say_unpopulated_or_at_the_deadline(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    busy = tmp_path / "busy"
    for d, populated in ((empty, 0), (busy, 1)):
        d.mkdir()
        (d / "cgroup.events").write_text(f"populated {populated}\nfrozen 0\n")

    assert wait_unpopulated(empty, within=5.0) is True
    assert wait_unpopulated(busy, within=0.05) is False
    assert read_kv(busy / "cgroup.events") == {"populated": 1, "frozen": 0}


def _mountinfo(tmp_path: Path, root: Path, options: str) -> Path:
    info = tmp_path / "mountinfo"
    mount = f"30 23 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4"
    info.write_text(f"{mount} - cgroup2 cgroup2 {options}\n")
    return info


def test_refused_forks_count_in_our_cgroup_only_where_the_kernel_counts_them_hierarchically(
    tmp_path: Path,
) -> None:
    root = _v2(tmp_path)
    tree = _tree(tmp_path, root, "/")
    tree.prepare()
    plain = _mountinfo(tmp_path, root, "rw,nsdelegate,memory_recursiveprot")

    # Linux 6.1: pids.events counts in the forking process's own cgroup, no .local file.
    assert tree.counts_pids_hierarchically(plain) is False

    (tree.base / "pids.events.local").write_text("max 0\n")
    assert tree.counts_pids_hierarchically(plain) is True
    local = _mountinfo(tmp_path, root, "rw,nsdelegate,pids_localevents")
    assert tree.counts_pids_hierarchically(local) is False
