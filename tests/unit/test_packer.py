"""Chunks committed raw with a checkpoint, compressed afterwards by the store's packer."""

import os
import time

from sqlalchemy import select

from wtb_ray import END, Workflow
from wtb_ray.domain.events import Event
from wtb_ray.domain.execution import Execution
from wtb_ray.engine.bench import Bench
from wtb_ray.engine.state import TrackedState
from wtb_ray.storage import blob_io, codec, packer
from wtb_ray.storage.schema import blobs
from wtb_ray.storage.store import Change, Store
from wtb_ray.workspace import TreeReader

LOG = b"step 12 loss 0.2531 grad_norm 1.04 lr 3e-4 tokens 4096\n" * 3000


def codecs(store, hashes):
    return dict(store.run(lambda c: c.execute(
        select(blobs.c.hash, blobs.c.codec).where(blobs.c.hash.in_(hashes))).all()))


def write_log(state, ctx):
    (ctx.workspace / "train.log").write_bytes(state["tag"].encode() + LOG)


flow = Workflow("log", nodes={"write": write_log}, edges={"write": END}, entry="write")


def test_a_checkpoints_new_chunks_are_compressed_after_it_and_read_back_the_same(
        sqlite_url, tmp_path):
    bench = Bench.open(database_url=sqlite_url)
    try:
        ex = bench.run(flow, {"tag": os.urandom(8).hex()}, workspace=str(tmp_path / "ws"))
        data = (tmp_path / "ws" / "train.log").read_bytes()
        tree = bench.store.checkpoint(ex.head_checkpoint_id).workspace_tree
        entry = TreeReader(bench.store).get(tree)["train.log"]
        assert bench.store.packer.drain(10)
        assert set(codecs(bench.store, entry[3]).values()) == {"s"}
        chunks = bench.store.run(blob_io.fetch, entry[3])
        assert b"".join(chunks[h] for h in entry[3]) == data
    finally:
        bench.close()


def test_closing_the_store_compresses_what_is_queued(sqlite_url, monkeypatch):
    real_pack = codec.pack_chunk
    monkeypatch.setattr(codec, "pack_chunk", lambda d: time.sleep(0.05) or real_pack(d))
    store = Store.open(sqlite_url)
    chunks = dict(_commit_raw(store, os.urandom(8).hex().encode() + LOG) for _ in range(8))
    assert sum(map(len, chunks.values())) > 1.2 * packer.BATCH_BYTES  # more than one batch
    store.close()  # while the packer is still at its first batch
    reopened = Store.open(sqlite_url)
    try:
        assert set(codecs(reopened, chunks).values()) == {"s"}
        assert reopened.run(blob_io.fetch, chunks) == chunks
    finally:
        reopened.close()


def test_a_full_queue_or_a_failed_rewrite_leaves_chunks_raw_and_readable(store, monkeypatch,
                                                                        caplog):
    monkeypatch.setattr(packer, "MAX_QUEUED_BYTES", 0)
    h1, d1 = _commit_raw(store, os.urandom(8).hex().encode() + LOG)
    assert store.packer.drain(10) and store.packer.left_raw == 1
    monkeypatch.setattr(packer, "MAX_QUEUED_BYTES", 64 << 20)
    real = store.packer._rewrite

    def broken(rows):
        raise OSError("disk full")

    store.packer._rewrite = broken
    h2, d2 = _commit_raw(store, os.urandom(8).hex().encode() + LOG)
    assert store.packer.drain(10) and store.packer.left_raw == 2
    assert "disk full" in caplog.text
    store.packer._rewrite = real  # the thread goes on with later chunks
    h3, d3 = _commit_raw(store, os.urandom(8).hex().encode() + LOG)
    assert store.packer.drain(10)
    assert codecs(store, [h1, h2, h3]) == {h1: "r", h2: "r", h3: "s"}
    assert store.run(blob_io.fetch, [h1, h2, h3]) == {h1: d1, h2: d2, h3: d3}


def _commit_raw(store, data):
    """Commit a new execution whose start checkpoint carries one chunk raw, as a small
    workspace change's checkpoint does."""
    ex = Execution(workflow_name="w", workflow_ref="tests.workflows:chain")
    write = TrackedState.empty().checkpoint({"q": 1}, node="input", parent_id=None, step=0,
                                            kind="start", next_node="a")
    h = codec.chunk_digest(data)
    write.blobs.append((h, codec.RAW_LATER, len(data), data))
    store.commit(Change(ex.id, [Event("execution.created", ex.id)], checkpoint=write,
                        new_execution=ex))
    return h, data


def test_a_small_changes_chunks_ride_in_the_checkpoint_raw(store, tmp_path):
    from wtb_ray.workspace import Workspace

    root = tmp_path / "ws"
    root.mkdir()
    ws = Workspace(root, store)
    ws.snapshot()
    (root / "train.log").write_bytes(LOG[:100_000])  # one chunk
    (root / "tiny").write_bytes(b"x")
    _, rows = ws.snapshot_for_commit()
    by_size = {size: blob_codec for _, blob_codec, size, _ in rows}
    assert by_size[100_000] == "r" and by_size[1] == "j"  # too small to be worth it
