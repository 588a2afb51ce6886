"""The systemd unit ``sandtree install-service`` writes, its ``--dry-run``, and its refusal on a
host whose PID 1 is not systemd (this one). The unit running for real is
``tests/vm/test_service.py``, on a stock Debian 12 with systemd."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sandtree.cli._service import UNIT_PATH, systemd_running, unit_file
from sandtree.config import Settings

DEADLINE = 60.0


def _parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (a key may repeat, as Environment= does)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


def _sandtree(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandtree", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=DEADLINE,
        check=False,
    )


def test_the_unit_serves_on_var_lib_sandtree_delegated_restarting_and_stopping_cleanly() -> None:
    timeout = Settings().shutdown_timeout
    unit = _parse_unit(unit_file(command=["/usr/local/bin/sandtree"], shutdown_timeout=timeout))
    service = unit["Service"]

    assert service["ExecStart"] == ["/usr/local/bin/sandtree serve --data-dir /var/lib/sandtree"]
    assert service["Delegate"] == ["yes"]
    assert service["Restart"] == ["on-failure"]
    assert service["StateDirectory"] == ["sandtree"]
    assert service["StateDirectoryMode"] == ["0700"]
    # SIGTERM to the server alone: it ends its sandboxes itself; SIGKILL only after that.
    assert service["KillMode"] == ["mixed"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert float(service["TimeoutStopSec"][0]) >= timeout + 10
    assert f"SANDTREE_SHUTDOWN_TIMEOUT={timeout:g}" in service["Environment"]
    assert service["TasksMax"] == ["infinity"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_keeps_a_longer_shutdown_inside_systemds_stop_timeout_and_quotes_paths() -> None:
    unit = _parse_unit(
        unit_file(
            command=["/opt/my tools/bin/python3", "-m", "sandtree"],
            data_dir=Path("/srv/sandtree data"),
            port=9999,
            shutdown_timeout=120.5,
        )
    )
    service = unit["Service"]

    assert shlex.split(service["ExecStart"][0]) == [
        "/opt/my tools/bin/python3", "-m", "sandtree", "serve",
        "--data-dir", "/srv/sandtree data", "--port", "9999",
    ]  # fmt: skip
    assert float(service["TimeoutStopSec"][0]) > 120.5
    assert "SANDTREE_SHUTDOWN_TIMEOUT=120.5" in service["Environment"]
    assert "StateDirectory" not in service  # systemd makes only /var/lib/<name> dirs


def test_install_service_dry_run_prints_the_unit_and_the_commands_and_writes_nothing() -> None:
    existed = UNIT_PATH.exists()

    done = _sandtree("install-service", "--dry-run", "--port", "9460")

    assert done.returncode == 0, done.stderr
    body = done.stdout.split("\n# then:\n")
    assert body[0].startswith(f"# {UNIT_PATH}\n[Unit]\n")
    service = _parse_unit(body[0])["Service"]
    command = shlex.split(service["ExecStart"][0])
    assert command[-5:] == ["serve", "--data-dir", "/var/lib/sandtree", "--port", "9460"]
    assert Path(command[0]).is_absolute()
    assert os.access(command[0], os.X_OK)
    assert [line.strip("# ") for line in body[1].splitlines()] == [
        f"write {UNIT_PATH}",
        "systemctl daemon-reload",
        "systemctl enable --now sandtree",
    ]
    assert UNIT_PATH.exists() == existed


def test_the_dry_run_unit_carries_the_configured_shutdown_timeout() -> None:
    done = _sandtree("install-service", "--dry-run", env={"SANDTREE_SHUTDOWN_TIMEOUT": "50"})
    service = _parse_unit(done.stdout.split("\n# then:\n")[0])["Service"]

    assert service["Environment"][0] == "SANDTREE_SHUTDOWN_TIMEOUT=50"
    assert float(service["TimeoutStopSec"][0]) > 50


@pytest.mark.skipif(systemd_running(), reason="this host runs systemd: it would really install")
def test_install_service_refuses_without_systemd_and_says_what_to_run_instead() -> None:
    pid1 = Path("/proc/1/comm").read_text(encoding="utf-8").strip()

    done = _sandtree("install-service")

    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: systemd is not running on this host (PID 1 is {pid1}, no /run/systemd/system); "
        "run `sandtree serve --data-dir /var/lib/sandtree` under your own supervisor instead "
        "(`sandtree install-service --dry-run` prints the unit to adapt)"
    )
    assert not UNIT_PATH.exists()
