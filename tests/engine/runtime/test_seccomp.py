"""The seccomp profile is an allow-list after Docker's, with our deliberate differences."""

from __future__ import annotations

from typing import Any

from sandtree.engine.runtime._seccomp import seccomp_profile


def _rules(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_everything_not_listed_is_refused_with_eperm() -> None:
    profile = seccomp_profile()

    assert (profile["defaultAction"], profile["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    for name in ("io_uring_setup", "io_uring_enter", "modify_ldt", "mount", "bpf", "keyctl",
                 "userfaultfd", "unshare", "setns", "perf_event_open", "kexec_load"):  # fmt: skip
        assert _rules(profile, name) == [], name


def test_socket_personality_and_clone_are_allowed_only_with_safe_arguments() -> None:
    profile = seccomp_profile()
    families = {rule["args"][0]["value"] for rule in _rules(profile, "socket")}
    personas = {rule["args"][0]["value"] for rule in _rules(profile, "personality")}
    (clone,) = _rules(profile, "clone")
    (socketcall,) = _rules(profile, "socketcall")

    assert families == {1, 2, 10, 16}  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK: no AF_VSOCK
    assert 0x0400000 not in personas  # READ_IMPLIES_EXEC
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert socketcall["args"][0] == {"index": 0, "value": 1, "op": "SCMP_CMP_NE"}


def test_clone3_answers_enosys_so_libc_falls_back_except_under_the_sentry() -> None:
    (crun,) = _rules(seccomp_profile(), "clone3")
    (sentry,) = _rules(seccomp_profile(sentry=True), "clone3")

    assert (crun["action"], crun["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    assert sentry["action"] == "SCMP_ACT_ALLOW"
