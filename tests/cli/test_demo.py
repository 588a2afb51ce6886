"""``sandtree demo`` runs the engine end to end with real sandboxes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandtree.cli import cli

pytestmark = pytest.mark.isolation


@pytest.mark.skipif(shutil.which("crun") is None, reason="crun is not installed")
def test_demo_runs_branches_and_prints_the_lineage_tree(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--data-dir", str(tmp_path / "data")])

    assert result.exit_code == 0, result.output
    assert "0     100000      65536" in result.output  # root inside is uid 100000 outside
    assert "v2" in result.output
    assert "deleted=['/etc/hostname']" in result.output
    assert "mkdir -p /srv" in result.output
