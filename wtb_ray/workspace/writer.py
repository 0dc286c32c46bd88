"""Writing the files a restore decided on: copies from local sources in lanes
(workspace/lanes.py) while what no source has is written from the store, its chunks fetched
in batches of bounded size. Each file is created new, with its mode; its stat is taken before
it is closed, for the restored directory's index.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from wtb_ray.domain.errors import StorageError
from wtb_ray.storage import blob_io, codec
from wtb_ray.workspace import files, lanes, tree
from wtb_ray.workspace.lanes import Copy, Source, Write
from wtb_ray.workspace.watch import Watch

FETCH_BYTES = 8 << 20  # per query; peak memory is a few times this


class Writer:
    def __init__(self, store: Any) -> None:
        self.store = store
        self.copying: list[Future[list[Write]]] = []  # copy lanes on worker threads
        self.tasks: list[Future[None]] = []  # writes from the store
        self.stopping = False  # set when the restore fails: lanes stop at their next file
        # Files written, with their stat taken before closing them (by the writing thread).
        self.written: list[tuple[str, list[str], os.stat_result]] = []

    def run(self, new_dirs: list[tuple[str, str]], watch: Watch | None,
            local: list[list[Copy]], remote: list[Write]) -> None:
        """Make ``new_dirs`` (path, prefix; parents first), watched if there is a watch;
        then copy what sources have (``local``: a list per directory) in lanes while what no
        source had is written from the store (fetched here, written on the pool's threads;
        copies, decompression and writes release the GIL); then this thread copies too,
        until the queue is empty. Last, what a copy found changed comes from the store too."""
        try:
            for path, prefix in new_dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
                if watch is not None:
                    watch.add(path, prefix)
            pool = lanes.workers()
            queue, count = lanes.plan(local)
            self.copying = [pool.submit(self._copy_lane, queue) for _ in range(count - 1)]
            self._write_from_store(pool, remote)
            missed = self._copy_lane(queue)
            for task in self.copying:
                missed += task.result()
            # Files whose source changed since its index vouched for them come from the store.
            self._write_from_store(pool, missed)
        except BaseException:
            self.stopping = True
            tasks = [*self.copying, *self.tasks]
            for task in tasks:  # none may go on writing once we have given up
                task.cancel()
            wait(tasks)
            raise

    def _copy_lane(self, queue: deque[list[Copy]]) -> list[Write]:
        """Copy batches of files from local sources until none is left (or the restore
        failed); the files no source had after all."""
        missed = []
        while not self.stopping:
            try:
                batch = queue.popleft()  # atomic: lanes share the queue without a lock
            except IndexError:
                break
            for w, found in batch:
                if self.stopping:
                    break
                if not self._copy_local(w, found):
                    missed.append(w)
        return missed

    def _copy_local(self, w: Write, found: list[Source]) -> bool:
        path, rel, entry = w
        for src, key, fingerprints in found:
            try:
                if fingerprints is None:
                    st = files.copy_if_unchanged(src, path, entry[1], key)
                else:
                    st = files.copy_if_same(src, path, entry[1], entry[2], fingerprints,
                                            tree.CHUNK_SIZE)
            except OSError:
                continue
            if st is not None:
                self.written.append((rel, entry[3], st))
                return True
        return False

    def _write_from_store(self, pool: ThreadPoolExecutor,
                          writes: list[Write]) -> None:
        """Fetch chunks in batches while the previous batch is written: at most two
        batches are held at once."""
        batches: list[list[Write]] = [[]]
        size = 0
        for item in writes:
            if item[2][2] > FETCH_BYTES:
                self._write_big(*item)
                continue
            if size >= FETCH_BYTES or len(batches[-1]) >= blob_io.BATCH:
                batches.append([])
                size = 0
            batches[-1].append(item)
            size += item[2][2]
        running: list[Future[None]] = []
        for batch in batches:
            if not batch:
                continue
            data = self._fetch({c for _, _, entry in batch for c in entry[3]})
            for future in running:
                future.result()
            running = [pool.submit(self._write_one, path, rel, entry, data)
                       for path, rel, entry in batch]
            self.tasks.extend(running)
        for future in running:
            future.result()

    def _fetch(self, hashes: set[str]) -> dict[str, tuple[str, bytes]]:
        found = self.store.run(blob_io.fetch_packed, hashes)
        missing = hashes - found.keys()
        if missing:
            raise StorageError(f"workspace chunk(s) missing from the store: "
                               f"{', '.join(sorted(missing)[:3])}")
        return found

    def _write_one(self, path: str, rel: str, entry: list[Any],
                   data: dict[str, tuple[str, bytes]]) -> None:
        fd = files.create(path, entry[1])
        try:
            for c in entry[3]:
                files.write_all(fd, codec.unpack(*data[c]))
            self.written.append((rel, entry[3], files.finish(fd, entry[1])))
        finally:
            os.close(fd)

    def _write_big(self, path: str, rel: str, entry: list[Any]) -> None:
        chunks = entry[3]
        step = max(1, FETCH_BYTES // tree.CHUNK_SIZE)
        fd = files.create(path, entry[1])
        try:
            for i in range(0, len(chunks), step):
                part = chunks[i:i + step]
                data = self._fetch(set(part))
                for c in part:
                    files.write_all(fd, codec.unpack(*data[c]))
            self.written.append((rel, entry[3], files.finish(fd, entry[1])))
        finally:
            os.close(fd)
