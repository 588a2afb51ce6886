"""Where the OCI runtimes are told to put a sandbox's processes, per cgroup mode: crun on v2
starts the container inside a child of the sandbox's limited cgroup (no join after fork);
elsewhere the runtime process joins our cgroup and crun's own cgroup handling is off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sandtree.engine.runtime import Limits, OciRuntime, SandboxSpec
from sandtree.engine.runtime._cgroup_v1 import V1Cgroup
from sandtree.engine.runtime._cgroup_v2 import V2Cgroup
from sandtree.engine.runtime._cgroups import SandboxCgroup

pytestmark = pytest.mark.skipif(
    shutil.which("crun") is None or shutil.which("runsc") is None,
    reason="crun and runsc must be installed (./scripts/install)",
)


def _spec(tmp_path: Path) -> SandboxSpec:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "bundle").mkdir()
    return SandboxSpec(
        id="st-1",
        rootfs=tmp_path / "rootfs",
        workdir=tmp_path / "bundle",
        args=["true"],
        env={},
        cwd="/",
        uid=0,
        gid=0,
        hostname="sandbox",
        limits=Limits(memory_bytes=128 << 20, pids=64, cpus=0.5),
    )


def _bundle(
    tmp_path: Path, kind: str, cgroup: SandboxCgroup, *, start_inside: bool
) -> tuple[dict[str, Any], list[str]]:
    runtime = OciRuntime(kind=kind, binary=kind, state_dir=tmp_path / "state", uid_shift=100000)
    runtime.start_inside = start_inside
    spec = _spec(tmp_path)
    runtime.write_bundle(spec, cgroup)
    config = json.loads((spec.workdir / "config.json").read_text())
    return config, list(runtime.command(spec))


def _v2_cgroup(tmp_path: Path) -> V2Cgroup:
    return V2Cgroup(
        "st-1", base=tmp_path / "cg" / "system.slice" / "x.service", root=tmp_path / "cg"
    )


def test_crun_on_v2_starts_the_container_in_a_child_of_the_limited_cgroup(tmp_path: Path) -> None:
    config, argv = _bundle(tmp_path, "crun", _v2_cgroup(tmp_path), start_inside=True)

    assert config["linux"]["cgroupsPath"] == "/system.slice/x.service/st-1/sandbox"
    # The limits are ours, one level up: crun is given none to write.
    assert "resources" not in config["linux"]
    assert "--cgroup-manager=cgroupfs" in argv


def test_crun_joined_to_its_cgroup_keeps_its_own_cgroup_handling_off(tmp_path: Path) -> None:
    config, argv = _bundle(tmp_path, "crun", V1Cgroup("st-1"), start_inside=False)

    assert "cgroupsPath" not in config["linux"]
    assert "--cgroup-manager=disabled" in argv


def test_runsc_on_v2_is_pointed_at_the_sandbox_cgroup_with_the_limits(tmp_path: Path) -> None:
    config, _ = _bundle(tmp_path, "runsc", _v2_cgroup(tmp_path), start_inside=False)

    assert config["linux"]["cgroupsPath"] == "/system.slice/x.service/st-1"
    resources = config["linux"]["resources"]
    assert resources["memory"] == {"limit": 128 << 20}
    assert resources["cpu"] == {"quota": 50000, "period": 100000}
