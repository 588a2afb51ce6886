"""Helpers shared by the run tests: ``test_runs.py``, ``test_run_spec.py``,
``test_run_exits.py`` and ``test_placed_files.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sandtree.engine import OperationRecord


def stdout(op: OperationRecord) -> str:
    """The run's captured stdout (the run must have a result)."""
    assert op.result is not None, op.error
    value: str = op.result["stdout"]["value"]
    return value


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """``parts`` as the byte stream ``Engine.upload_file`` reads."""
    for part in parts:
        yield part
