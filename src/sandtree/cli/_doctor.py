"""``sandtree doctor``: check this host for what sandtree needs, each finding with its fix;
and the same checks as ``sandtree serve``'s preflight."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sandtree.config import Settings
from sandtree.engine import Finding, blocking, host_checks
from sandtree.errors import SandtreeError

__all__ = ["doctor", "format_finding", "preflight"]

_LABELS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


def format_finding(finding: Finding) -> list[str]:
    """``ok|warn|FAIL  name  detail``, then ``fix: …`` on its own line when there is one."""
    lines = [f"{_LABELS[finding.status]:<5} {finding.name:<16} {finding.detail}"]
    if finding.fix and finding.status != "ok":
        lines.append(f"{'':<5} {'':<16} fix: {finding.fix}")
    return lines


def preflight(settings: Settings) -> None:
    """What ``sandtree serve`` runs before it starts: warnings go to stderr; the first failed
    required check raises, in one line with its fix, and the server does not start."""
    findings = host_checks(settings)
    for finding in findings:
        if finding.status == "warn" or (finding.status == "fail" and not finding.required):
            fix = f" (fix: {finding.fix})" if finding.fix else ""
            click.echo(f"warning: {finding.name}: {finding.detail}{fix}", err=True)
    failed = blocking(findings)
    if failed:
        first = failed[0]
        more = f" ({len(failed) - 1} more: sandtree doctor)" if len(failed) > 1 else ""
        raise click.ClickException(
            f"host check {first.name} failed: {first.detail}; fix: {first.fix}{more}"
        )


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The data dir whose filesystem to check [default: ~/.local/share/sandtree].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(data_dir: Path | None, as_json: bool) -> None:
    """Check this host for what sandtree needs and print each finding with its fix.

    Kernel and overlayfs features, cgroup mode and controllers, user namespaces, seccomp,
    crun/runc/runsc, iptables and iproute2, free space and the data dir's filesystem (d_type,
    xattrs, a real overlay). Exits 1 when a required check fails: `sandtree serve` would
    refuse to start for the same reason.

    \b
    Example:
      sudo sandtree doctor --data-dir /var/lib/sandtree
      sudo sandtree doctor --json | jq '.findings[] | select(.status != "ok")'
    """
    try:
        settings = Settings.from_env(data_dir=data_dir)
    except SandtreeError as exc:
        raise click.ClickException(str(exc)) from exc
    findings = host_checks(settings)
    failed = blocking(findings)
    if as_json:
        report = {
            "ready": not failed,
            "data_dir": str(settings.data_dir),
            "findings": [f.as_dict() for f in findings],
        }
        click.echo(json.dumps(report, indent=2))
    else:
        for finding in findings:
            for line in format_finding(finding):
                click.echo(line)
        if failed:
            names = ", ".join(f.name for f in failed)
            click.echo(f"\nsandtree cannot serve on this host: {names} failed", err=True)
        else:
            click.echo(f"\nready: sandtree serve can run here (data in {settings.data_dir})")
    if failed:
        raise SystemExit(1)
