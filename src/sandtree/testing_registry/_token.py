"""A docker token server (https://distribution.github.io/distribution/spec/auth/token/) on
loopback, in a thread: it checks HTTP basic credentials and grants whatever scope is asked."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

TOKEN_LIFETIME = 300


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenIssuer:
    """An ES256 key and its self-signed certificate; the certificate is the registry's whole
    ``rootcertbundle``, and every token carries it in its ``x5c`` header."""

    def __init__(self, *, issuer: str, service: str) -> None:
        self.issuer = issuer
        self.service = service
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def write_bundle(self, path: Path) -> None:
        """Write the certificate as PEM: the registry's ``auth.token.rootcertbundle``."""
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, subject: str, scopes: list[str]) -> str:
        """A signed JWT for ``subject`` granting every action of every ``scopes`` item
        ("type:name:action,action"; the name may itself hold colons)."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if sep and sep2:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode("ascii")]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = ".".join(_b64url(json.dumps(p).encode()) for p in (header, claims))
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class TokenServer:
    """Serves ``GET /token`` (HTTP basic credentials; ``scope`` and ``service`` in the query)
    and the OAuth2 password grant ``POST /token`` on 127.0.0.1, in a daemon thread."""

    def __init__(self, issuer: TokenIssuer, *, username: str, password: str) -> None:
        self.issuer = issuer
        self.username = username
        self.password = password
        self.tokens_issued = 0
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.token_server = self
        self.realm = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def grant(self, username: str, password: str, scopes: list[str]) -> dict[str, Any] | None:
        """The token response for these credentials, or None when they are wrong."""
        if not (
            secrets.compare_digest(username.encode(), self.username.encode())
            and secrets.compare_digest(password.encode(), self.password.encode())
        ):
            return None
        token = self.issuer.issue(username, scopes)
        self.tokens_issued += 1
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_LIFETIME,
            "issued_at": issued,
        }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    token_server: TokenServer


class _Handler(BaseHTTPRequestHandler):
    @property
    def _tokens(self) -> TokenServer:
        assert isinstance(self.server, _HTTPServer)
        return self.server.token_server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _answer(self, status: int, body: dict[str, Any], *headers: tuple[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _reply(self, granted: dict[str, Any] | None) -> None:
        if granted is None:
            challenge = ("WWW-Authenticate", 'Basic realm="sandtree-test-token"')
            self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]}, challenge)
        else:
            self._answer(200, granted)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        scopes = urllib.parse.parse_qs(url.query).get("scope", [])
        username, password = "", None
        kind, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if kind.lower() == "basic":
            try:
                username, _, password = base64.b64decode(encoded).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                password = None
        self._reply(None if password is None else self._tokens.grant(username, password, scopes))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
            return
        if form.get("grant_type") != ["password"]:
            self._answer(400, {"error": "unsupported_grant_type"})
            return
        scopes = " ".join(form.get("scope", [])).split()
        username, password = form.get("username", [""])[0], form.get("password", [""])[0]
        self._reply(self._tokens.grant(username, password, scopes))
