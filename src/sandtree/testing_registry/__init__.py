"""Test kit for registry code: a real OCI registry on loopback (Debian's ``docker-registry``,
anonymous, htpasswd or docker token auth), OCI test images built in Python, ``skopeo``
to push them byte for byte, and ``ScriptedRegistry`` for registries that misbehave on purpose
(stalled, dripping or corrupt blobs, error statuses, redirects, realms and upload locations
anywhere, oversized bodies). The registries listen on 127.0.0.1, which sandtree refuses
unless listed: engines take ``insecure_registries=LOOPBACK_REGISTRIES``, and servers started
inside ``loopback_registries_allowed()`` read it from their environment.

Example::

    tar = layer_tar([Entry(path="etc", kind="dir"), Entry(path="etc/hello", data=b"hi\\n")])
    with LocalRegistry(tmp_path / "registry", auth="token") as registry:
        digest = registry.push_image("test/one:latest", [TestImage(layers=[tar])], tmp_path)
        # pull http://{registry.host}/v2/test/one/manifests/latest, user "tester", "s3cret"
"""

from __future__ import annotations

from sandtree.testing_registry._allow import LOOPBACK_REGISTRIES, loopback_registries_allowed
from sandtree.testing_registry._layout import (
    LAYER_MEDIA_TYPES,
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    Entry,
    TestImage,
    compress,
    layer_tar,
    write_oci_layout,
)
from sandtree.testing_registry._registry import LocalRegistry
from sandtree.testing_registry._scripted import ScriptedRegistry
from sandtree.testing_registry._token import TokenIssuer, TokenServer

__all__ = [
    "LAYER_MEDIA_TYPES",
    "LOOPBACK_REGISTRIES",
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_MANIFEST",
    "Entry",
    "LocalRegistry",
    "ScriptedRegistry",
    "TestImage",
    "TokenIssuer",
    "TokenServer",
    "compress",
    "layer_tar",
    "loopback_registries_allowed",
    "write_oci_layout",
]
