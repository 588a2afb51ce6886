"""Letting servers reach the test registries.

The test registries listen on 127.0.0.1, an address sandtree refuses unless the operator lists
the registry (``SANDTREE_INSECURE_REGISTRIES``). A ``sandtree serve`` child process reads the
setting from its environment when it starts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["LOOPBACK_REGISTRIES", "loopback_registries_allowed"]

#: What test engines and servers list as insecure: 127.0.0.1, every port (a host without a
#: port covers all of them), so registries and token servers on any free port are reachable.
LOOPBACK_REGISTRIES = "127.0.0.1"

_VARIABLE = "SANDTREE_INSECURE_REGISTRIES"


@contextlib.contextmanager
def loopback_registries_allowed(registries: str = LOOPBACK_REGISTRIES) -> Iterator[None]:
    """Within the block, servers started as child processes allow ``registries`` (over plain
    HTTP); the environment is restored afterwards."""
    saved = os.environ.get(_VARIABLE)
    os.environ[_VARIABLE] = registries
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_VARIABLE, None)
        else:
            os.environ[_VARIABLE] = saved
