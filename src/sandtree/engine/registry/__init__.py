"""OCI registries: parse references, pull images into the store, push images back."""

from ._client import Credentials, Manifest, RegistryClient
from ._network import DestinationPolicy, ImportCancelled, Stop
from ._pull import Progress, Puller
from ._reference import ImageReference, parse_reference

__all__ = [
    "Credentials",
    "DestinationPolicy",
    "ImageReference",
    "ImportCancelled",
    "Manifest",
    "Progress",
    "Puller",
    "RegistryClient",
    "Stop",
    "parse_reference",
]
