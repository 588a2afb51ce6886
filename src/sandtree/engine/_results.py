"""A run's result as the documents operations keep (the API's ``InstanceResult`` shape)."""

from __future__ import annotations

from typing import Any

from sandtree.engine._operations import JobOutcome
from sandtree.engine._streams import encode_stream
from sandtree.engine.types import RunResult, StreamOutput

__all__ = ["result_document", "run_outcome"]


def _stream(output: StreamOutput) -> dict[str, Any]:
    value, encoding = encode_stream(output.data)
    return {"value": value, "encoding": encoding, "truncated": output.truncated}


def result_document(result: RunResult) -> dict[str, Any]:
    """``InstanceResult`` plus ``result_image``, ``filesystem_changed`` and ``limit_hit``."""
    r = result.resources
    return {
        "state": {
            "exit_code": result.state.exit_code,
            "signal": result.state.signal,
            "timed_out": result.state.timed_out,
            "pid": result.state.pid,
            "continued": False,
            "core_dump": False,
            "stopped": False,
        },
        "stdout": _stream(result.stdout),
        "stderr": _stream(result.stderr),
        "resources": {
            "user_cpu_time": r.user_cpu_time,
            "system_cpu_time": r.system_cpu_time,
            "max_rss": r.max_rss_kb,
            "elapsed_time": r.elapsed_time,
            "monotonic_time": r.elapsed_time,
            "block_input": 0,
            "block_output": 0,
            "cost": 0.0,
            "involuntary_switches": 0,
            "voluntary_switches": 0,
            "page_faults": 0,
            "page_faults_io": 0,
            "shared_memory": 0,
            "unshared_memory": 0,
            "signals": 0,
            "swaps": 0,
        },
        "result_image": result.result_image,
        "filesystem_changed": result.filesystem_changed,
        "image_size": result.image_size,
        "limit_hit": result.limit_hit,
    }


def run_outcome(result: RunResult) -> JobOutcome:
    return JobOutcome(
        result=result_document(result),
        result_image=result.result_image,
        image_size=result.image_size,
        consumed_cpu=result.resources.cpu_time,
        consumed_memory=result.resources.max_rss_kb,
    )
