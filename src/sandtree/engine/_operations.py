"""Operations: queued, executed by a bounded worker pool, cancellable, waitable.

PENDING → ASSIGNED (a worker slot is taken) → EXECUTING → SUCCESS | FAILED | CANCELLED.
Every transition is written to the metadata store before anyone can observe it, and the
``completion`` event is always the last event of the log.

Slots are shared fairly between namespaces (``_slots``): one namespace holds at most
``namespace_share`` of them, so another tenant's run starts while one tenant floods the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sandtree.engine._clock import now_iso, parse_iso
from sandtree.engine._events import EventHub, EventLog
from sandtree.engine._slots import FairSlots
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import OperationEvent, OperationRecord, OperationStatus
from sandtree.errors import ConflictError, OperationNotFoundError, SandtreeError

__all__ = ["Job", "JobFailed", "JobOutcome", "OperationQueue"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobOutcome:
    result: Mapping[str, Any]
    result_image: str | None = None
    image_size: int | None = None
    consumed_cpu: float | None = None
    consumed_memory: int | None = None


class JobFailed(Exception):
    """A job ended FAILED (or CANCELLED) but still has a result document to keep."""

    def __init__(
        self, message: str, outcome: JobOutcome | None = None, *, cancelled: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.outcome = outcome
        self.cancelled = cancelled


#: What a worker executes: ``job(log, cancel)`` returns the outcome or raises JobFailed.
Job = Callable[[EventLog, asyncio.Event], Awaitable[JobOutcome]]


class OperationQueue:
    """Runs submitted jobs at most ``concurrency`` at a time, and at most ``namespace_share``
    of one namespace (None: all slots but one, see ``_slots``)."""

    def __init__(
        self,
        store: MetadataStore,
        hub: EventHub,
        *,
        concurrency: int,
        namespace_share: int | None = None,
    ) -> None:
        self._store = store
        self._hub = hub
        self._slots = FairSlots(concurrency, share=namespace_share)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._closing = False
        self._started: dict[str, str] = {}

    def submit(self, op: OperationRecord, job: Job) -> None:
        """Start ``job`` for an operation already stored as PENDING."""
        self._cancels[op.uuid] = asyncio.Event()
        self._done[op.uuid] = asyncio.Event()
        self._hub.open(op.uuid)
        self._tasks[op.uuid] = asyncio.get_running_loop().create_task(self._run(op, job))

    async def _run(self, op: OperationRecord, job: Job) -> None:
        cancel = self._cancels[op.uuid]
        log = self._hub_log(op.uuid)
        try:
            if not await self._slots.acquire(op.namespace, cancel):
                if self._closing:
                    await self._finish(op, log, OperationStatus.FAILED, error=_SHUTDOWN)
                else:
                    await self._finish(op, log, OperationStatus.CANCELLED, error=_CANCELLED)
                return
            try:
                self._store.update_operation(op.uuid, status=OperationStatus.ASSIGNED)
                self._started[op.uuid] = now_iso()
                self._store.update_operation(
                    op.uuid, status=OperationStatus.EXECUTING, started_at=self._started[op.uuid]
                )
                try:
                    outcome = await job(log, cancel)
                except JobFailed as failed:
                    status = (
                        OperationStatus.CANCELLED if failed.cancelled else OperationStatus.FAILED
                    )
                    if failed.cancelled and self._closing:
                        status, failed.message = OperationStatus.FAILED, _SHUTDOWN
                    await self._finish(
                        op, log, status, error=failed.message, outcome=failed.outcome
                    )
                except SandtreeError as exc:
                    await self._finish(op, log, OperationStatus.FAILED, error=exc.message)
                except Exception as exc:
                    logger.exception("operation %s crashed", op.uuid)
                    await self._finish(
                        op,
                        log,
                        OperationStatus.FAILED,
                        error=f"internal error: {type(exc).__name__}: {exc}",
                    )
                else:
                    await self._finish(op, log, OperationStatus.SUCCESS, outcome=outcome)
            finally:
                self._slots.release(op.namespace)
        except asyncio.CancelledError:
            # The server is shutting down: record it so nothing stays EXECUTING.
            await self._finish(op, log, OperationStatus.FAILED, error=_SHUTDOWN)
            raise
        finally:
            self._tasks.pop(op.uuid, None)
            self._cancels.pop(op.uuid, None)
            self._started.pop(op.uuid, None)
            done = self._done.pop(op.uuid, None)
            if done is not None:
                done.set()

    def _hub_log(self, op_id: str) -> EventLog:
        log = self._hub.live(op_id)
        if log is None:
            raise RuntimeError(f"operation {op_id} has no open event log")
        return log

    async def _finish(
        self,
        op: OperationRecord,
        log: EventLog,
        status: OperationStatus,
        *,
        error: str | None = None,
        outcome: JobOutcome | None = None,
    ) -> None:
        finished = now_iso()
        started = self._started.get(op.uuid, op.created_at)
        duration = (parse_iso(finished) - parse_iso(started)).total_seconds()
        fields: dict[str, Any] = {
            "status": status,
            "finished_at": finished,
            "error": error,
            "duration": duration,
        }
        if outcome is not None:
            fields.update(
                result=dict(outcome.result),
                result_image=outcome.result_image if status == OperationStatus.SUCCESS else None,
                image_size=outcome.image_size,
                consumed_cpu=outcome.consumed_cpu,
                consumed_memory=outcome.consumed_memory,
            )
        log.emit(
            "completion",
            _completion(
                status,
                error=error,
                result_image=fields.get("result_image"),
                duration=duration,
                image_size=(outcome.image_size or 0) if outcome else 0,
            ),
            spid=None,
        )
        self._store.update_operation(op.uuid, **fields)
        await self._hub.close(op.uuid)

    async def cancel(self, op_id: str) -> OperationRecord:
        """Cancel a pending or running operation; a finished one is a ConflictError."""
        op = self._store.get_operation(op_id)
        if op is None:
            raise OperationNotFoundError(
                f"operation {op_id} does not exist; list_operations shows what does"
            )
        if op.status.terminal:
            raise ConflictError(
                f"operation {op_id} already ended as {op.status}; there is nothing to cancel"
            )
        event = self._cancels.get(op_id)
        if event is not None:
            event.set()
        await self.wait(op_id, timeout=30)
        return self._store.get_operation(op_id) or op

    async def wait(self, op_id: str, *, timeout: float | None) -> OperationRecord:
        """Wait until the operation is terminal or ``timeout`` passes; returns its record."""
        done = self._done.get(op_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        op = self._store.get_operation(op_id)
        if op is None:
            raise OperationNotFoundError(f"operation {op_id} does not exist")
        return op

    def recover(self) -> None:
        """After a restart: every operation that had not ended is FAILED, with a completion
        event. Runs are not resumed: the world they were queued into is gone."""
        for op in self._store.operations_in(
            [OperationStatus.ASSIGNED, OperationStatus.EXECUTING, OperationStatus.PENDING]
        ):
            events = self._store.events(op.uuid)
            error = _UNRESUMABLE if op.status == OperationStatus.PENDING else _RESTARTED
            completion = OperationEvent(
                id=(events[-1].id + 1) if events else 1,
                ts=now_iso(),
                type="completion",
                data=_completion(OperationStatus.FAILED, error=error),
            )
            self._store.append_events(op.uuid, [completion])
            self._store.update_operation(
                op.uuid, status=OperationStatus.FAILED, error=error, finished_at=now_iso()
            )

    async def close(self) -> None:
        """Stop every running operation (their sandboxes are killed) and wait for them."""
        self._closing = True
        for event in self._cancels.values():
            event.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=20)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)


def _completion(
    status: OperationStatus,
    *,
    error: str | None,
    result_image: str | None = None,
    duration: float = 0.0,
    image_size: int = 0,
) -> dict[str, Any]:
    """The spec's ``EventDataCompletion``: always the last event of an operation."""
    return {
        "status": str(status),
        "result_image_uuid": result_image,
        "error": error,
        "duration_ms": int(duration * 1000),
        "image_size_bytes": image_size,
    }


_CANCELLED = "the operation was cancelled before it started"
_SHUTDOWN = "the server shut down while the operation ran; run it again"
_RESTARTED = "the server restarted while the operation ran; its sandbox was stopped; run it again"
_UNRESUMABLE = "the server restarted before the operation started and could not resume it"
