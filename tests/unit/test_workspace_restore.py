"""Workspace restores on the embedded store: type changes and links, untracked paths, local
copies (by stat or by fingerprints), older chunk names, new directories, modes, and
failures midway."""

import os
import time

import pytest

from tests.unit.aging import age
from wtb_ray.workspace import TreeReader, Workspace, lanes


def files_of(root) -> dict:
    """Each file under ``root`` (but WTB's .wtb) with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".wtb" not in p.relative_to(root).parts}


def test_restore_replaces_types_and_never_writes_through_links(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("in sub")
    (root / "thing").write_text("a file")
    os.symlink("sub/f.txt", root / "link")
    ws = Workspace(root, store)
    tree = ws.snapshot()
    import shutil

    shutil.rmtree(root / "sub")
    os.symlink(str(outside), root / "sub")  # a link where a directory was
    (root / "thing").unlink()
    (root / "thing").mkdir()  # a directory where a file was
    (root / "thing" / "inner").write_text("x")
    (root / "link").unlink()
    (root / "link").write_text("a file where a link was")
    ws.restore(tree)
    assert list(outside.iterdir()) == []  # nothing was written through the link
    assert (root / "sub").is_dir() and not (root / "sub").is_symlink()
    assert (root / "sub" / "f.txt").read_text() == "in sub"
    assert (root / "thing").read_text() == "a file"
    assert os.readlink(root / "link") == "sub/f.txt"


def test_restore_removes_untracked_paths_but_keeps_ignored_ones(store, tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "keep.txt").write_text("k")
    ws = Workspace(root, store, ignore=["cache/", "*.tmp"])
    tree = ws.snapshot()
    (root / "extra").mkdir()
    (root / "extra" / "note.tmp").write_text("ignored, inside an untracked directory")
    (root / "extra" / "gone.txt").write_text("untracked")
    (root / "cache").mkdir()
    (root / "cache" / "blob").write_text("ignored directory")
    (root / "new.txt").write_text("untracked")
    ws.restore(tree)
    assert sorted(p.name for p in root.iterdir()) == [".wtb", "cache", "extra", "keep.txt"]
    assert [p.name for p in (root / "extra").iterdir()] == ["note.tmp"]


@pytest.mark.parametrize("watch", [True, False], ids=["watched", "unwatched"])
def test_a_negated_pattern_tracks_again_what_an_earlier_one_ignored(store, tmp_path, watch):
    """``*.log`` then ``!keep.log``: keep.log is recorded and restored, the other logs are
    neither; inside an ignored directory nothing is looked at, as in git."""
    root = tmp_path / "ws"
    (root / "logs").mkdir(parents=True)
    (root / "cache").mkdir()
    ws = Workspace(root, store, ignore=["*.log", "!keep.log", "cache/", "!cache/keep.log"],
                   watch=watch)
    (root / "logs" / "keep.log").write_text("kept at the checkpoint\n")
    (root / "logs" / "run.log").write_text("ignored\n")
    (root / "cache" / "keep.log").write_text("inside an ignored directory\n")
    tree = ws.snapshot()
    for name in ("keep.log", "run.log"):
        (root / "logs" / name).write_text("changed after\n")
    (root / "logs" / "new.log").write_text("ignored, made after\n")
    ws.snapshot()
    ws.restore(tree)
    assert (root / "logs" / "keep.log").read_text() == "kept at the checkpoint\n"
    assert (root / "logs" / "run.log").read_text() == "changed after\n"  # left alone
    assert (root / "logs" / "new.log").exists()
    assert (root / "cache" / "keep.log").exists()
    recorded = {path for path, entry in TreeReader(store).walk(tree) if entry[0] == "f"}
    assert recorded == {"logs/keep.log"}
    ws.close()


def test_a_restore_copies_from_a_source_only_what_its_index_vouches_for(store, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    for name in ("same.txt", "edited.txt", "gone.txt"):
        (origin / name).write_text(f"{name} at the checkpoint\n")
    age(*origin.iterdir())
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    ws.snapshot()  # the index now vouches for all three
    (origin / "edited.txt").write_text("edited.txt after the fork\n")  # same size
    age(origin / "edited.txt")
    (origin / "gone.txt").unlink()
    fork = Workspace(tmp_path / "fork", store)
    fork.restore(tree, sources=[str(origin)])
    for name in ("same.txt", "edited.txt", "gone.txt"):
        assert (tmp_path / "fork" / name).read_text() == f"{name} at the checkpoint\n"


def test_a_tree_with_blake2b_chunk_names_restores_and_is_recognised(store, tmp_path,
                                                                     monkeypatch):
    """Stores written before chunks were named by BLAKE3: their trees still restore, and a
    directory already holding their files (unknown to its index) is left alone."""
    from wtb_ray.storage import codec

    root = tmp_path / "old"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(300_000))
    (root / "b.txt").write_text("text\n")
    monkeypatch.setattr(codec, "chunk_digest", codec.digest)
    old_tree = Workspace(root, store).snapshot()
    monkeypatch.undo()
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("a.bin", "b.txt"):
        (copy / name).write_bytes((root / name).read_bytes())
    inodes = {p.name: p.stat().st_ino for p in copy.iterdir()}
    Workspace(copy, store).restore(old_tree)
    assert {p.name: p.stat().st_ino for p in copy.iterdir() if p.is_file()} == inodes
    empty = Workspace(tmp_path / "fresh", store)
    empty.restore(old_tree)
    for name in ("a.bin", "b.txt"):
        assert (tmp_path / "fresh" / name).read_bytes() == (root / name).read_bytes()


def test_a_restore_into_a_new_directory_makes_nested_empty_and_linked_directories(
        store, tmp_path):
    origin = tmp_path / "origin"
    (origin / "x" / "y" / "z").mkdir(parents=True)
    (origin / "empty" / "inner").mkdir(parents=True)
    (origin / "links").mkdir()
    (origin / "x" / "y" / "z" / "deep.txt").write_text("deep\n")
    (origin / "x" / "top.txt").write_text("top\n")
    os.symlink("../x/top.txt", origin / "links" / "to-top")
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    ws.snapshot()
    for sources in (None, [str(origin)]):
        dest = tmp_path / f"fork-{bool(sources)}"
        Workspace(dest, store).restore(tree, sources=sources)
        assert (dest / "x" / "y" / "z" / "deep.txt").read_text() == "deep\n"
        assert (dest / "empty" / "inner").is_dir()
        assert os.readlink(dest / "links" / "to-top") == "../x/top.txt"
        assert (dest / "links" / "to-top").read_text() == "top\n"
        assert Workspace(dest, store).snapshot() == tree


def test_restored_files_get_their_modes_whatever_the_umask(store, tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    modes = {"run.sh": 0o755, "notes.txt": 0o644, "secret": 0o600, "tool": 0o4711}
    for name, mode in modes.items():
        (origin / name).write_bytes(name.encode() * 1000)
        os.chmod(origin / name, mode)
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    ws.snapshot()
    old = os.umask(0o077)
    try:
        for sources in (None, [str(origin)]):  # written from the store, copied locally
            dest = tmp_path / f"restored-{bool(sources)}"
            Workspace(dest, store).restore(tree, sources=sources)
            got = {p.name: p.stat().st_mode & 0o7777 for p in dest.iterdir() if p.is_file()}
            assert got == modes
    finally:
        os.umask(old)


def test_a_file_too_recent_to_vouch_for_is_copied_if_its_copy_has_its_fingerprints(
        store, tmp_path, monkeypatch):
    from wtb_ray.workspace import writer

    origin = tmp_path / "origin"
    origin.mkdir()
    future = time.time_ns() + 3600 * 10**9  # later than any clock: never vouched for by stat
    for name in ("kept.bin", "edited.bin"):
        (origin / name).write_bytes(os.urandom(300_000))
        os.utime(origin / name, ns=(future, future))
    checkpoint = {name: (origin / name).read_bytes() for name in ("kept.bin", "edited.bin")}
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    assert not ws.index.entries and set(ws.index.quick) == {"kept.bin", "edited.bin"}
    with open(origin / "edited.bin", "r+b") as f:  # same size, same mtime, other bytes
        f.seek(200_000)
        f.write(b"changed after the checkpoint")
    os.utime(origin / "edited.bin", ns=(future, future))
    fetched = []
    real_fetch = writer.Writer._fetch
    monkeypatch.setattr(writer.Writer, "_fetch",
                        lambda self, hashes: fetched.append(set(hashes)) or
                        real_fetch(self, hashes))
    fork = Workspace(tmp_path / "fork", store)
    fork.restore(tree, sources=[str(origin)])
    for name, data in checkpoint.items():
        assert (tmp_path / "fork" / name).read_bytes() == data
    # kept.bin was copied; only edited.bin's chunks came from the store.
    edited = {c for e in [fork.reader.get(tree)["edited.bin"]] for c in e[3]}
    assert fetched and set().union(*fetched) == edited


def test_a_restore_that_fails_midway_stops_its_copy_lanes_before_raising(store, tmp_path,
                                                                         monkeypatch):
    import sqlalchemy as sa

    from wtb_ray.domain.errors import StorageError
    from wtb_ray.storage.schema import blobs
    from wtb_ray.workspace import restore, writer

    origin = tmp_path / "origin"
    for d in ("a", "b", "c"):
        (origin / d).mkdir(parents=True)
        for i in range(20):
            (origin / d / f"{i}.txt").write_text(f"{d}{i}\n" * 100)
    (origin / "edited.bin").write_bytes(b"at the checkpoint")
    age(*origin.rglob("*"))
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    (origin / "edited.bin").write_bytes(b"after the checkpoint: no source has the old bytes")
    age(origin / "edited.bin")
    ws.snapshot()
    lost = ws.reader.get(tree)["edited.bin"][3][0]  # so the write from the store fails
    store.run(lambda conn: conn.execute(sa.delete(blobs).where(blobs.c.hash == lost)),
              write=True)
    monkeypatch.setattr(lanes, "TWO_LANES", 0)  # two lanes, however small the files
    real_copy = writer.files.copy_if_unchanged
    monkeypatch.setattr(writer.files, "copy_if_unchanged",
                        lambda *a: time.sleep(0.01) or real_copy(*a))  # slow copies
    dest = tmp_path / "fork"
    job = restore.Restore(str(dest), ws.rules, Workspace(dest, store).index,
                          TreeReader(store), store, sources=[str(origin)])
    with pytest.raises(StorageError, match=lost):
        job.run(tree)
    lanes_started = job.writer.copying
    assert len(lanes_started) == 1 and lanes_started[0].done()  # the other lane stopped too
    copied = sorted(dest.rglob("*.txt"))
    time.sleep(0.05)
    assert sorted(dest.rglob("*.txt")) == copied and len(copied) < 10  # of 60: it stopped early


def test_a_restore_from_the_store_that_fails_midway_stops_its_writes_before_raising(
        store, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from wtb_ray.domain.errors import StorageError
    from wtb_ray.storage.schema import blobs
    from wtb_ray.workspace import restore, writer

    origin = tmp_path / "origin"
    origin.mkdir()
    for i in range(6):
        (origin / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    lost = ws.reader.get(tree)["4.bin"][3][0]  # a chunk of a file in the third batch
    store.run(lambda conn: conn.execute(sa.delete(blobs).where(blobs.c.hash == lost)),
              write=True)
    monkeypatch.setattr(writer.blob_io, "BATCH", 2)  # two files per fetch
    real_write = writer.Writer._write_one
    monkeypatch.setattr(writer.Writer, "_write_one",
                        lambda self, *a: time.sleep(0.05) or real_write(self, *a))
    job = restore.Restore(str(tmp_path / "copy"), ws.rules,
                          Workspace(tmp_path / "copy", store).index, TreeReader(store), store)
    with pytest.raises(StorageError, match=lost):
        job.run(tree)
    assert job.writer.tasks and all(task.done() for task in job.writer.tasks)


def test_consecutive_copy_batches_come_from_different_directories(monkeypatch):
    """Lanes take batches one after another: two lanes creating files in one directory at
    once wait on its lock. Same-size files, listed directory by directory, are the worst
    case for an order by size alone."""
    monkeypatch.setattr(lanes, "BATCH_BYTES", 3 * (lanes.FILE_BYTES + 1000))
    groups = [[((f"/fork/{d}/{i}.bin", f"{d}/{i}.bin", ["f", 0o644, 1000, []]), [])
               for i in range(9)] for d in ("a", "b", "c")]
    copies = [c for group in groups for c in group]
    queue, _ = lanes.plan(groups)
    parents = [{os.path.dirname(c[0][0]) for c in batch} for batch in queue]
    assert all(len(p) == 1 for p in parents)  # a batch is one directory's
    order = [p.pop() for p in parents]
    assert order == ["/fork/a", "/fork/b", "/fork/c"] * 3
    assert sorted(c for batch in queue for c in batch) == sorted(copies)


def test_trees_this_process_has_seen_are_not_read_from_the_store_again(store, sqlite_url,
                                                                       tmp_path, monkeypatch):
    """A snapshot's trees, and a restore's, are kept decoded per store: a later restore,
    rollback or fork here reads from the database only the trees it has not seen, while
    another store (another process) still reads them, and a tree the store lacks is an error
    whatever was cached."""
    from wtb_ray.domain.errors import StorageError
    from wtb_ray.storage import blob_io
    from wtb_ray.storage.store import Store

    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top\n")
    (src / "a" / "mid.txt").write_text("mid\n")
    (src / "a" / "b" / "deep.txt").write_text("deep\n")
    root = Workspace(src, store).snapshot()
    trees = {root} | {e[1] for _, e in TreeReader(store).walk(root) if e[0] == "d"}
    assert len(trees) == 3
    asked: list[set[str]] = []
    real = blob_io.fetch

    def fetch(conn, hashes):
        asked.append(set(hashes))
        return real(conn, hashes)

    monkeypatch.setattr(blob_io, "fetch", fetch)
    Workspace(tmp_path / "here", store).restore(root)
    assert not any(trees & hashes for hashes in asked)
    assert files_of(tmp_path / "here") == files_of(src)

    other = Store.open(sqlite_url)
    try:
        asked.clear()
        Workspace(tmp_path / "there", other).restore(root)
        assert set().union(*asked) >= trees  # a level of the tree per query
        assert files_of(tmp_path / "there") == files_of(src)
        with pytest.raises(StorageError, match="missing from the store"):
            TreeReader(other).get("0" * 32)
    finally:
        other.close()


def test_the_tree_cache_keeps_the_most_recently_used_within_its_bytes():
    from wtb_ray.workspace.tree import EMPTY_TREE, TreeCache

    cache = TreeCache(max_bytes=100)
    cache.put("a", {"x": ["l", "1"]}, 40)
    cache.put("b", {"y": ["l", "2"]}, 40)
    assert cache.get("a") == {"x": ["l", "1"]}  # now the most recently used
    cache.put("c", {}, 40)
    assert "b" not in cache and "a" in cache and "c" in cache
    cache.put("huge", {}, 101)  # over the whole budget: not kept, nothing evicted for it
    assert "huge" not in cache and "a" in cache
    assert cache.get("nothing") is None and EMPTY_TREE not in cache  # evicted by now


@pytest.mark.parametrize("seed", range(3))
def test_random_forks_copy_from_their_origin_only_what_is_right(store, tmp_path, seed):
    """An origin changed at random (every kind of change), checkpointed as a watched run
    does; every third step a fork restores a random earlier checkpoint into a new directory,
    copying from the origin what its index vouches for: each fork holds exactly that
    checkpoint's files (a full walk of it records the same tree), whatever the origin holds
    now."""
    import random

    from tests.unit.test_workspace_watch import _random_change, check, full_walk, watched

    rng = random.Random(seed)
    root, ws = watched(store, tmp_path)
    trees = [check(ws, store, root)]
    forks = 0
    for step in range(30):
        for _ in range(rng.randint(1, 4)):
            _random_change(rng, root)
        trees.append(check(ws, store, root))
        if step % 3 == 2:
            for _ in range(rng.randint(0, 2)):  # changes after the checkpoint, not recorded
                _random_change(rng, root)
            target = rng.choice(trees)
            fork = tmp_path / f"fork-{step}"
            Workspace(fork, store).restore(target, sources=[str(root)])
            assert full_walk(store, fork) == target
            forks += 1
            trees.append(check(ws, store, root))  # the origin's run goes on
    assert forks == 10
    ws.close()
