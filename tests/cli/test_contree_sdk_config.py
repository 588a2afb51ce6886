"""How contree-sdk 0.3.6 finds a sandtree server, and how it waits for a run that outlives its
timeout: the configurations ``docs/integrations.md`` gives, each proved here on a real
``sandtree serve`` (the plain ``base_url=``/``token=`` one is in ``test_serve.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from contree_sdk import ContreeSync  # type: ignore[import-untyped]
from contree_sdk.auth import JWTAuth  # type: ignore[import-untyped]
from contree_sdk.config import ContreeConfig  # type: ignore[import-untyped]

from sandtree.testing import ServerProcess, real_runtime_missing

_runtime_missing = real_runtime_missing("the contree-sdk tests")
needs_runtime = pytest.mark.skipif(_runtime_missing is not None, reason=_runtime_missing or "")

#: Where contree-sdk 0.3.6 goes when nothing names a server: Nebius's hosted service.
HOSTED = "https://api.tokenfactory.nebius.com/sandboxes/"


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the machine's ``CONTREE_*``/``NEBIUS_*`` variables nor its auth.ini reach the
    SDK: each test sets what it shows."""
    for name in list(os.environ):
        if name.startswith(("CONTREE_", "NEBIUS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONTREE_HOME", str(tmp_path / "contree-home"))


def test_contree_sdk_without_a_config_ignores_contree_base_url_and_aims_at_the_hosted_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONTREE_BASE_URL", "http://127.0.0.1:9450")
    monkeypatch.setenv("CONTREE_TOKEN", "st_anything")

    sdk = ContreeSync()  # IAMAuth: its base_url is the hosted URL, not an env var's name

    assert sdk.config.auth.base_url == HOSTED
    assert sdk.config.auth.token == "NEBIUS_API_KEY"  # the name, as no such variable is set


@pytest.mark.isolation
@needs_runtime
def test_contree_sdk_jwt_auth_reads_contree_base_url_and_contree_token(
    busybox_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTREE_BASE_URL", busybox_server.url)
    monkeypatch.setenv("CONTREE_TOKEN", busybox_server.admin_token)

    sdk = ContreeSync(config=ContreeConfig(auth=JWTAuth()))
    done = sdk.images.use("busybox:latest").run(shell="echo via env").wait()

    assert (done.exit_code, done.stdout) == (0, "via env\n")


@pytest.mark.isolation
@needs_runtime
@pytest.mark.skipif(shutil.which("contree") is None, reason="contree-cli is not installed")
def test_contree_sdk_with_no_arguments_uses_the_server_contree_auth_saved(
    busybox_server: ServerProcess,
) -> None:
    subprocess.run(
        ["contree", "auth", "--token", busybox_server.admin_token, "-u", busybox_server.url,
         "--type", "jwt"],
        env={**os.environ, "CONTREE_NO_UPDATE_CHECK": "1"}, check=True, capture_output=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip

    sdk = ContreeSync()  # the url and token of auth.ini's active profile
    done = sdk.images.use("busybox:latest").run(shell="echo via auth.ini").wait()

    assert sdk.config.auth.base_url == busybox_server.url
    assert (done.exit_code, done.stdout) == (0, "via auth.ini\n")


@pytest.mark.isolation
@needs_runtime
def test_contree_sdk_gets_a_timed_out_runs_result_when_it_looks_again_after_the_kill(
    busybox_server: ServerProcess,
) -> None:
    # The SDK stops at the first poll past the run's timeout. Its first interval is exactly
    # operation_poll_secs_min and the next is longer than what is left, so with a 2 s timeout
    # and 1 s it polls at 0 s, 1 s and last at 3 s: a second for the server to kill the run
    # at 2 s and record it. (With the default 0.1 s the last poll may come at 2.0x s.)
    config = ContreeConfig(
        auth=JWTAuth(base_url=busybox_server.url, token=busybox_server.admin_token),
        operation_poll_secs_min=1.0,
    )
    session = ContreeSync(config=config).images.use("busybox:latest").session()

    session.run(shell="echo started; sleep 60", timeout=2, disposable=False).wait()
    raw = session.result._raw
    assert raw is not None
    assert raw.result is not None
    state = raw.result.state
    timed_out = (session.exit_code, session.stdout, state.timed_out)
    session.run(shell="echo still here").wait()

    assert timed_out == (128 + 9, "started\n", True)
    assert session.stdout == "still here\n"  # a session that saw no error goes on
