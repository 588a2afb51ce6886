"""Sandbox runtimes behind one Protocol: real OCI runtimes and a fake for tests.

``OciRuntime`` drives ``crun``/``runc`` (the ``container`` tier) and ``runsc`` (the ``gvisor``
tier) from the same generated bundle; ``FakeRuntime`` interprets a tiny command language in
process so engine behaviour can be tested fast and deterministically.
"""

from sandtree.engine.runtime._base import (
    Limits,
    ProcessSpec,
    Runtime,
    Sandbox,
    SandboxExit,
    SandboxProcess,
    SandboxSpec,
)
from sandtree.engine.runtime._cgroups import CgroupHost
from sandtree.engine.runtime._fake import FakeRuntime
from sandtree.engine.runtime._host import enter_private_mount_namespace, host_cgroups
from sandtree.engine.runtime._oci import OciRuntime

__all__ = [
    "CgroupHost",
    "FakeRuntime",
    "Limits",
    "OciRuntime",
    "ProcessSpec",
    "Runtime",
    "Sandbox",
    "SandboxExit",
    "SandboxProcess",
    "SandboxSpec",
    "enter_private_mount_namespace",
    "host_cgroups",
]
