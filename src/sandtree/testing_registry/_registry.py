"""Debian's ``docker-registry`` (distribution 2.8) on loopback, and ``skopeo`` to push to it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from sandtree.testing_registry._layout import TestImage, write_oci_layout
from sandtree.testing_registry._token import TokenIssuer, TokenServer

REGISTRY_BINARY = "/usr/bin/docker-registry"
BASE_CONFIG = Path("/etc/docker/registry/config.yml")
SERVICE = "sandtree-test-registry"
ISSUER = "sandtree-test-issuer"
START_DEADLINE = 20.0
_ADDRESS_IN_USE = "address already in use"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _split_ref(ref: str) -> tuple[str, str]:
    name, _, tag = ref.rpartition(":")
    return (name, tag) if name and "/" not in tag else (ref, "latest")


def _base_config() -> dict[str, Any]:
    if not BASE_CONFIG.exists():
        return {"version": 0.1}
    import yaml  # the test extra's; only needed to read Debian's packaged config

    config: dict[str, Any] = yaml.safe_load(BASE_CONFIG.read_text(encoding="utf-8")) or {}
    return config


class LocalRegistry:
    """A real OCI registry on ``127.0.0.1:<free port>``, storing blobs under ``workdir``.

    ``auth`` is None (anonymous), ``"basic"`` (htpasswd with ``username``/``password``) or
    ``"token"`` (docker token auth: a token server in a thread checks ``username``/``password``
    with HTTP basic auth and signs JWTs the registry trusts). Use it as a context manager::

        with LocalRegistry(tmp_path / "registry", auth="token") as registry:
            digest = registry.push_image("test/one:latest", [TestImage(layers=[tar])], tmp_path)
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: str | None = None,
        username: str = "tester",
        password: str = "s3cret",
    ) -> None:
        if auth not in (None, "basic", "token"):
            raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
        self.workdir = workdir
        self.auth = auth
        self.username = username
        self.password = password
        #: "127.0.0.1:<port>", set when the registry starts.
        self.host = ""
        #: The token server's URL (auth="token" only), set when the registry starts.
        self.realm: str | None = None
        self.token_server: TokenServer | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"

    @property
    def url(self) -> str:
        """``http://<host>``."""
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) when the registry wants them, else None."""
        return None if self.auth is None else (self.username, self.password)

    def __enter__(self) -> LocalRegistry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.auth == "token":
                issuer = TokenIssuer(issuer=ISSUER, service=SERVICE)
                issuer.write_bundle(self.workdir / "token-root.pem")
                self.token_server = TokenServer(
                    issuer, username=self.username, password=self.password
                )
                self.realm = self.token_server.realm
            for _ in range(5):  # another process may take the free port before the registry
                if self._start():
                    return self
            raise RuntimeError(f"docker-registry found no free port:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        """What the registry has printed so far."""
        with contextlib.suppress(FileNotFoundError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        return ""

    def _config(self) -> dict[str, Any]:
        config = _base_config()
        config["storage"] = {
            **{k: v for k, v in config.get("storage", {}).items() if k != "filesystem"},
            "filesystem": {"rootdirectory": str(self.workdir / "storage")},
        }
        http = {k: v for k, v in config.get("http", {}).items() if k not in ("tls", "debug")}
        config["http"] = {**http, "addr": self.host, "secret": secrets.token_hex(16)}
        config["log"] = {**config.get("log", {}), "level": "info"}
        config.pop("auth", None)
        if self.auth == "basic":
            import bcrypt  # the test extra's

            hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a"))
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(f"{self.username}:{hashed.decode()}\n", encoding="utf-8")
            config["auth"] = {"htpasswd": {"realm": "sandtree-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            bundle = self.workdir / "token-root.pem"
            config["auth"] = {
                "token": {
                    "realm": self.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(bundle),
                }
            }
        return config

    def _start(self) -> bool:
        """Start the registry on a fresh port; False when that port was taken meanwhile."""
        self.host = f"127.0.0.1:{_free_port()}"
        config_path = self.workdir / "config.yml"
        config_path.write_text(json.dumps(self._config(), indent=2) + "\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_DEADLINE
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if _ADDRESS_IN_USE in self.log():
                        return False
                    raise RuntimeError(f"docker-registry exited early:\n{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/v2/").status_code in (200, 401):
                        return True
                time.sleep(0.02)
        raise TimeoutError(f"docker-registry not ready after {START_DEADLINE}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the registry (SIGTERM, then SIGKILL) and the token server; idempotent."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self.token_server is not None:
            self.token_server.close()
            self.token_server = None

    def push(self, layout: Path, ref: str, *, all_platforms: bool = True) -> None:
        """``skopeo copy`` the layout's image tagged like ``ref`` ("name:tag"; tag "latest"
        when absent) to ``<host>/<ref>``, blobs and manifests byte for byte."""
        name, tag = _split_ref(ref)
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests"]
        argv += ["--all"] if all_platforms else []
        argv += ["--dest-tls-verify=false"]
        if self.credentials is not None:
            argv += ["--dest-creds", ":".join(self.credentials)]
        argv += [f"oci:{layout}:{tag}", f"docker://{self.host}/{name}:{tag}"]
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"skopeo copy to {self.host}/{ref} failed:\n{done.stderr}")

    def push_image(self, ref: str, images: Sequence[TestImage], tmp: Path) -> str:
        """Write ``images`` as an OCI layout in a new folder under ``tmp`` and push it as
        ``ref``; return the digest of the pushed manifest (one image) or index (several)."""
        layout = tmp / f"oci-{secrets.token_hex(4)}"
        digest = write_oci_layout(layout, images, tag=_split_ref(ref)[1])
        self.push(layout, ref)
        return digest
