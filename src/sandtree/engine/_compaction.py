"""Keeping layer stacks short while lineages grow deep.

Every committed run adds a layer, and the kernel mounts at most 500. When an image's stack
passes ``max_stack_layers``, the top of it is merged into one layer (hard links: the cost is
the number of entries merged, not their bytes). Which layers: each layer records the number
of runs it stands for (its *span*); the top two merge, and walking down, a layer joins while
its span is no larger than what has been gathered so far. Like a binary counter's carries,
that keeps the work O(depth log depth): a 2,000-run chain with a 24-layer threshold merges
~3,900 layer-runs, against ~86,000 when each compaction merges everything above the base.

Compaction rewrites physical stacks only; lineage (parent, depth) never changes. Images
committed while a compaction ran still carry the old stack as their prefix, so they are
rebased onto the new one when it lands.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Sequence

from sandtree.engine._imports import IMPORTED_SPAN
from sandtree.engine.layers._merge import merge_layers
from sandtree.engine.layers._store import LayerStore
from sandtree.engine.store import MetadataStore
from sandtree.engine.types import ImageRecord

__all__ = ["Compactor", "merge_point"]


def merge_point(spans: Sequence[int]) -> int:
    """Index of the first layer to merge (the rest above it merge too); ``len`` for none.

    The top two layers always merge; below them a layer joins while its span is no larger
    than what has been gathered. The bottom layer and imported layers (span
    ``IMPORTED_SPAN``) are never merged.
    """
    k = len(spans) - 2
    if k < 1 or max(spans[k], spans[k + 1]) >= IMPORTED_SPAN:
        return len(spans)
    total = spans[k] + spans[k + 1]
    while k > 1 and spans[k - 1] <= total:
        k -= 1
        total += spans[k]
    return k


class Compactor:
    """Runs compactions one at a time on a thread of their own."""

    def __init__(self, store: MetadataStore, layers: LayerStore, *, max_stack: int) -> None:
        self._store = store
        self._layers = layers
        self._max_stack = max_stack
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sandtree-compact"
        )
        #: image uuid → the compaction under way (or waiting its turn) for it.
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        # One at a time, each reading the stack only when its turn comes: an earlier one may
        # have rebased it, and a merge planned on a stale stack would be wasted work.
        self._turn = asyncio.Lock()

    @property
    def max_stack(self) -> int:
        """The stack length past which an image is compacted."""
        return self._max_stack

    async def compact(
        self, image: ImageRecord, *, force: bool = False, fit: int | None = None
    ) -> None:
        """Shorten ``image``'s stack (when longer than the limit, or always with ``force``);
        waits for a compaction of the same image that is already under way. With ``fit``, the
        stack ends no longer than that even where spans would merge less (imported layers
        included): the stack must mount."""
        task = self.in_flight.get(image.uuid)
        if task is None:
            job = self._run(image.uuid, force=force or fit is not None, fit=fit)
            task = asyncio.get_running_loop().create_task(job)
            self.in_flight[image.uuid] = task
            task.add_done_callback(lambda _: self.in_flight.pop(image.uuid, None))
        await asyncio.shield(task)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run(self, uuid: str, *, force: bool, fit: int | None) -> None:
        async with self._turn:
            await self._merge(uuid, force=force, fit=fit)

    async def _merge(self, uuid: str, *, force: bool, fit: int | None) -> None:
        image = self._store.get_image(uuid)
        if image is None or (not force and len(image.layers) <= self._max_stack):
            return
        old = image.layers
        spans = self._store.layer_spans(old)
        k = merge_point([spans.get(layer, 1) for layer in old])
        if fit is not None and len(old) > fit:
            k = min(k, max(fit - 1, 1))
        if k >= len(old):
            return
        loop = asyncio.get_running_loop()
        staging = self._layers.new_staging_dir()
        await loop.run_in_executor(
            self._executor, merge_layers, self._layers.paths(old[k:]), staging
        )
        layer_id, size = await loop.run_in_executor(
            self._executor, functools.partial(self._layers.adopt, staging, linked=True)
        )
        self._store.add_layer(layer_id, size=size, span=sum(spans.get(x, 1) for x in old[k:]))
        new = (*old[:k], layer_id)
        self._store.replace_layers(uuid, new)
        self._rebase_descendants(uuid, old, new)

    def _rebase_descendants(self, uuid: str, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        pending = self._store.children(uuid)
        while pending:
            child = pending.pop()
            if child.layers[: len(old)] == old:
                self._store.replace_layers(child.uuid, (*new, *child.layers[len(old) :]))
                pending.extend(self._store.children(child.uuid))
