"""OCI registries: parse references, pull images into the store, push images back."""

from ._client import Credentials, Manifest, RegistryClient
from ._pull import ImportCancelled, Progress, Puller, Stop
from ._reference import ImageReference, parse_reference

__all__ = [
    "Credentials",
    "ImageReference",
    "ImportCancelled",
    "Manifest",
    "Progress",
    "Puller",
    "RegistryClient",
    "Stop",
    "parse_reference",
]
