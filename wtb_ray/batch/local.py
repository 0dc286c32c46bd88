"""Run a batch in this process, chunk by chunk (no Ray): the reference the Ray run is
compared with, and the way to run a batch where no cluster is at hand."""

from __future__ import annotations

from collections.abc import Callable

from wtb_ray.batch.service import BatchService
from wtb_ray.domain.batch import Batch

Progress = Callable[[Batch], None]


def run_local(service: BatchService, batch_id: str, on_progress: Progress | None = None
              ) -> Batch:
    batch = service.start(service.batches.get(batch_id))
    takeover = True  # nothing else runs this batch: cells left "running" were orphaned
    while not batch.finished:
        if service.cancel_requested(batch):
            service.cancel_rest(batch)
        else:
            todo = service.runnable(batch, takeover=takeover)
            size = service.spec(batch).chunk_size
            for start in range(0, len(todo), size):
                service.run_chunk(batch.id, [c["id"] for c in todo[start:start + size]],
                                  takeover=takeover)
                service.refresh(batch)
                if on_progress:
                    on_progress(batch)
                if service.cancel_requested(batch):
                    break
            takeover = False
        batch = service.refresh(batch)
    if on_progress:
        on_progress(batch)
    return batch
