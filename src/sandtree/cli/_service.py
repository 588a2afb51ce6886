"""``sandtree install-service``: run ``sandtree serve`` as a systemd service.

The unit is generated (``unit_file``) so that ``ExecStart`` names the ``sandtree`` of the
Python environment this command runs from. What each setting is for:

* ``Delegate=yes``: the service's cgroup is sandtree's own to divide, so on cgroup v2 each
  sandbox's cgroup (with its memory, pids and CPU limits) is made inside it;
* ``KillMode=mixed`` and ``TimeoutStopSec``: ``systemctl stop`` sends SIGTERM to the server
  alone, which ends its sandboxes, unmounts their layers and finishes or fails its running
  operations within ``shutdown_timeout``; only then (``TimeoutStopSec`` is longer) does systemd
  SIGKILL whatever is left in the cgroup. The default ``control-group`` mode would SIGTERM
  every sandbox process at the same moment as the server, racing its orderly stop;
* ``Restart=on-failure``: a crash restarts it, and the restart's recovery removes what the
  crash left (stale sandboxes, mounts, half-written layers) before it serves again;
* ``StateDirectory=sandtree``: systemd makes ``/var/lib/sandtree`` (0700, root's).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from sandtree.config import Settings
from sandtree.errors import SandtreeError

__all__ = ["UNIT_PATH", "install_service", "systemd_running", "unit_file"]

UNIT_PATH = Path("/etc/systemd/system/sandtree.service")
DATA_DIR = Path("/var/lib/sandtree")
#: systemd's own test for "booted with systemd" (sd_booted(3)).
_SYSTEMD_RUN_DIR = Path("/run/systemd/system")
#: What systemd waits beyond the server's own shutdown deadline before it SIGKILLs.
_STOP_MARGIN = 15


def sandtree_command() -> list[str]:
    """How the unit starts sandtree: the ``sandtree`` script of this Python environment,
    else the one on PATH, else this interpreter with ``-m sandtree``."""
    beside = Path(sys.executable).parent / "sandtree"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("sandtree")
    if found is not None:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "sandtree"]


def _quote(arg: str) -> str:
    # systemd splits ExecStart like a shell without expansion; quote what would split.
    if arg and not any(c.isspace() or c in "\"'\\;$%" for c in arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    # % starts a specifier and $ a variable in ExecStart, quoted or not.
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def unit_file(
    *,
    command: list[str],
    data_dir: Path = DATA_DIR,
    host: str | None = None,
    port: int | None = None,
    shutdown_timeout: float,
) -> str:
    """The text of ``sandtree.service`` for ``command`` (see ``sandtree_command``)."""
    argv = [*command, "serve", "--data-dir", str(data_dir)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    stop = math.ceil(shutdown_timeout) + _STOP_MARGIN
    state = (
        f"StateDirectory={data_dir.name}\nStateDirectoryMode=0700\n"
        if data_dir.parent == Path("/var/lib")
        else ""
    )
    return f"""\
[Unit]
Description=sandtree: sandboxes for AI agents whose images branch like git
After=network.target

[Service]
Type=exec
ExecStart={" ".join(_quote(a) for a in argv)}
# The server's stop deadline; TimeoutStopSec is {_STOP_MARGIN} s longer.
Environment=SANDTREE_SHUTDOWN_TIMEOUT={shutdown_timeout:g}
Environment=PYTHONUNBUFFERED=1
{state}Delegate=yes
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={stop}
Restart=on-failure
RestartSec=5
# Each sandbox has its own pids limit; the unit's default TasksMax would cap them all.
TasksMax=infinity
# Connections (up to SANDTREE_MAX_CONNECTIONS) and layer descriptors.
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def systemd_running(run_dir: Path = _SYSTEMD_RUN_DIR) -> bool:
    """Whether this host was booted with systemd as PID 1 (what sd_booted(3) checks)."""
    return run_dir.is_dir()


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def _write_unit(path: Path, text: str) -> None:
    """Write the unit in one step (a reader never sees half of it), 0644."""
    fd, tmp = tempfile.mkstemp(prefix=".sandtree-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise click.ClickException(
            f"systemctl {' '.join(args)} failed ({why}); see journalctl -u sandtree"
        )


@click.command("install-service")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=DATA_DIR,
    show_default=True,
    help="The service's data dir.",
)
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: 9450].")
@click.option("--dry-run", is_flag=True, help="Print the unit and the commands; change nothing.")
def install_service(data_dir: Path, host: str | None, port: int | None, dry_run: bool) -> None:
    """Run `sandtree serve` as the systemd service `sandtree`, started now and at boot.

    Writes /etc/systemd/system/sandtree.service (Delegate=yes, data in /var/lib/sandtree,
    restart on failure, a clean stop), then runs `systemctl daemon-reload` and `systemctl
    enable --now sandtree`. Refuses on a host whose PID 1 is not systemd, and when `sandtree
    doctor` finds a required check failing. The admin token is in <data-dir>/admin-token.

    \b
    Example:
      sudo sandtree install-service --dry-run     # show what it would do
      sudo sandtree install-service --port 9450
    """
    from sandtree.cli._doctor import preflight  # the doctor's checks, as serve runs them

    try:
        settings = Settings.from_env(data_dir=data_dir)
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    data_dir = data_dir.absolute()
    text = unit_file(
        command=sandtree_command(),
        data_dir=data_dir,
        host=host,
        port=port,
        shutdown_timeout=settings.shutdown_timeout,
    )
    steps = [
        f"write {UNIT_PATH}",
        "systemctl daemon-reload",
        "systemctl enable --now sandtree",
    ]
    if dry_run:
        click.echo(f"# {UNIT_PATH}")
        click.echo(text, nl=False)
        click.echo("\n# then:")
        for step in steps:
            click.echo(f"#   {step}")
        if not systemd_running():
            click.echo(
                f"note: systemd is not PID 1 here (PID 1 is {_pid1()}); install-service "
                "would refuse on this host",
                err=True,
            )
        return
    if not systemd_running():
        raise click.ClickException(
            f"systemd is not running on this host (PID 1 is {_pid1()}, no "
            f"{_SYSTEMD_RUN_DIR}); run `sandtree serve --data-dir {shlex.quote(str(data_dir))}` "
            "under your own supervisor instead (`sandtree install-service --dry-run` prints "
            "the unit to adapt)"
        )
    if os.geteuid() != 0:
        raise click.ClickException("install-service writes /etc/systemd/system: run it as root")
    preflight(settings)
    _write_unit(UNIT_PATH, text)
    click.echo(f"wrote {UNIT_PATH}")
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", "sandtree")
    click.echo(
        f"sandtree is running and starts at boot; admin token in {data_dir}/admin-token; "
        "status: systemctl status sandtree; logs: journalctl -u sandtree"
    )
