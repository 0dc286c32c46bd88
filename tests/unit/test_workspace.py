"""Workspace snapshots and restores on the embedded store: the stat index, streaming, ignore
patterns, type changes and symbolic links."""

import os
import time
import tracemalloc

import pytest

from wtb_ray import InvalidInput
from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.storage.store import Store
from wtb_ray.workspace import IgnoreRules, TreeReader, Workspace

OLD = 1_600_000_000 * 10**9  # 2020: long before any clock a snapshot takes


@pytest.fixture
def store(sqlite_url):
    s = Store.open(sqlite_url)
    yield s
    s.close()


def age(*paths):
    """Give files an old mtime, then wait until the file system's clock has moved past their
    ctime (which that change set), so the stat index may trust them."""
    for p in paths:
        os.utime(p, ns=(OLD, OLD), follow_symlinks=False)
    newest = max(os.lstat(p).st_ctime_ns for p in paths)
    probe = paths[0].parent.parent / "clock-probe"
    while True:
        probe.write_bytes(b"")
        if os.lstat(probe).st_mtime_ns > newest:
            break
        time.sleep(0.001)


def test_unchanged_files_are_not_read_again(store, tmp_path):
    ws = Workspace(tmp_path / "ws", store)
    files = [tmp_path / "ws" / f"f{i}.txt" for i in range(5)]
    (tmp_path / "ws").mkdir()
    for i, f in enumerate(files):
        f.write_text(f"file {i}\n")
    age(*files)
    first = ws.snapshot()
    assert ws.last_files_read == 5
    assert ws.snapshot() == first and ws.last_files_read == 0
    files[2].write_text("FILE 2\n")  # same size, new bytes
    age(files[2])
    second = ws.snapshot()
    assert second != first and ws.last_files_read == 1
    again = Workspace(tmp_path / "ws", store)  # a new process: the index is on disk
    again.restore(second)
    assert again.snapshot() == second and again.last_files_read == 0


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(store, tmp_path):
    ws = Workspace(tmp_path / "ws", store)
    (tmp_path / "ws").mkdir()
    f = tmp_path / "ws" / "model.bin"
    f.write_bytes(b"a" * 100)
    age(f)
    first = ws.snapshot()
    f.write_bytes(b"b" * 100)
    age(f)  # mtime put back: the ctime still moves
    assert ws.snapshot() != first and ws.last_files_read == 1


def test_a_patched_file_is_read_again_and_only_its_changed_chunk_hashed(store, tmp_path,
                                                                          monkeypatch):
    from wtb_ray.storage import codec
    from wtb_ray.workspace import snapshot, tree

    root = tmp_path / "ws"
    root.mkdir()
    big = root / "weights.bin"
    data = bytearray(os.urandom(3 * tree.CHUNK_SIZE))
    big.write_bytes(data)
    ws = Workspace(root, store)
    ws.snapshot()
    data[tree.CHUNK_SIZE + 10:tree.CHUNK_SIZE + 20] = b"0123456789"  # the middle chunk only
    big.write_bytes(data)
    hashed = []
    real_digest = codec.chunk_digest
    monkeypatch.setattr(snapshot.codec, "chunk_digest", lambda b: hashed.append(len(b)) or
                        real_digest(b))
    second = ws.snapshot()
    assert ws.last_files_read == 1
    assert hashed == [tree.CHUNK_SIZE]  # the changed chunk, and only it
    # Every chunk hash recorded is the hash of the bytes now there, whatever was reused.
    chunks = [real_digest(bytes(data[i:i + tree.CHUNK_SIZE]))
              for i in range(0, len(data), tree.CHUNK_SIZE)]
    assert [p[1] for p in ws.index.quick["weights.bin"]] == chunks
    copy = Workspace(tmp_path / "copy", store)
    copy.restore(second)
    assert (tmp_path / "copy" / "weights.bin").read_bytes() == bytes(data)


def test_files_too_recent_to_trust_are_read_again(store, tmp_path):
    ws = Workspace(tmp_path / "ws", store)
    (tmp_path / "ws").mkdir()
    f = tmp_path / "ws" / "racy.txt"
    f.write_text("x")
    future = OLD * 2
    os.utime(f, ns=(future, future))
    ws.snapshot()
    ws.snapshot()
    assert ws.last_files_read == 1  # never trusted while its mtime is not in the past


def test_big_files_are_streamed_not_loaded_whole(store, tmp_path):
    (tmp_path / "ws").mkdir()
    big = tmp_path / "ws" / "weights.bin"
    size = 64 << 20
    with open(big, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    ws = Workspace(tmp_path / "ws", store)
    tracemalloc.start()
    try:
        tree = ws.snapshot()
        _, peak_snapshot = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        Workspace(tmp_path / "copy", store).restore(tree)
        _, peak_restore = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_snapshot < size / 2 and peak_restore < size / 2
    assert (tmp_path / "copy" / "weights.bin").read_bytes() == big.read_bytes()


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


def test_special_files_and_size_limits_name_the_file(store, tmp_path):
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    os.mkfifo(root / "d" / "pipe")
    with pytest.raises(WorkspaceError, match="'d/pipe': not a regular file"):
        Workspace(root, store).snapshot()
    os.unlink(root / "d" / "pipe")
    (root / "d" / "large").write_bytes(b"x" * 2000)
    with pytest.raises(WorkspaceError, match="'d/large': 2000 bytes is over the size limit"):
        Workspace(root, store, max_file_bytes=1000).snapshot()


@pytest.mark.parametrize("pattern, path, is_dir, ignored", [
    ("*.log", "a/b/run.log", False, True),
    ("*.log", "a/b/run.txt", False, False),
    ("build/", "src/build", True, True),
    ("build/", "src/build", False, False),
    ("/build", "build", True, True),
    ("/build", "src/build", True, False),
    ("data/raw", "data/raw", True, True),
    ("data/raw", "x/data/raw", True, False),
    ("__pycache__", "pkg/__pycache__", True, True),
])
def test_ignore_patterns(pattern, path, is_dir, ignored):
    name = path.rsplit("/", 1)[-1]
    assert IgnoreRules([pattern]).ignored(path, name, is_dir) is ignored


def test_the_wtb_directory_is_always_ignored_and_bad_patterns_refused():
    assert IgnoreRules([]).ignored(".wtb", ".wtb", True)
    assert not IgnoreRules([]).ignored("sub/.wtb", ".wtb", True)
    with pytest.raises(InvalidInput, match="negation"):
        IgnoreRules(["!keep.log"])


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


def test_an_unchanged_directory_keeps_its_tree_without_encoding_it_again(store, tmp_path,
                                                                         monkeypatch):
    from wtb_ray.workspace import snapshot

    root = tmp_path / "ws"
    for d in ("a", "b", "b/c"):
        (root / d).mkdir(parents=True)
        (root / d / "f.txt").write_text(f"{d}\n")
    age(*[p for p in root.rglob("*") if p.is_file()])
    ws = Workspace(root, store)
    ws.snapshot()
    encoded = []
    real = snapshot.tree.encode
    monkeypatch.setattr(snapshot.tree, "encode", lambda e: encoded.append(sorted(e)) or real(e))
    (root / "b" / "c" / "f.txt").write_text("changed\n")
    second = ws.snapshot()
    # Only the trees on the changed file's path: b/c, b and the root (not a). (age() left
    # its clock probe in the root.)
    assert encoded == [["f.txt"], ["c", "f.txt"], ["a", "b", "clock-probe"]]
    # The hashes are those a snapshot with no memory of earlier ones gives.
    monkeypatch.setattr(snapshot.tree, "encode", real)
    fresh = Workspace(root, store)
    (root / ".wtb" / "index").unlink()
    assert fresh.snapshot() == second


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
    from wtb_ray.workspace import restore

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
    real_fetch = restore.Restore._fetch
    monkeypatch.setattr(restore.Restore, "_fetch",
                        lambda self, hashes: fetched.append(set(hashes)) or
                        real_fetch(self, hashes))
    fork = Workspace(tmp_path / "fork", store)
    fork.restore(tree, sources=[str(origin)])
    for name, data in checkpoint.items():
        assert (tmp_path / "fork" / name).read_bytes() == data
    # kept.bin was copied; only edited.bin's chunks came from the store.
    edited = {c for e in [fork.reader.get(tree)["edited.bin"]] for c in e[3]}
    assert fetched and set().union(*fetched) == edited


def test_a_restore_that_fails_midway_stops_its_copies_before_raising(store, tmp_path,
                                                                      monkeypatch):
    import sqlalchemy as sa

    from wtb_ray.domain.errors import StorageError
    from wtb_ray.storage.schema import blobs
    from wtb_ray.workspace import restore

    origin = tmp_path / "origin"
    for d in ("a", "b", "c"):
        (origin / d).mkdir(parents=True)
        for i in range(20):
            (origin / d / f"{i}.txt").write_text(f"{d}{i}\n" * 100)
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    ws.snapshot()
    lost = ws.reader.get(tree)["c"][1]  # the last directory's tree is gone from the store
    store.run(lambda conn: conn.execute(sa.delete(blobs).where(blobs.c.hash == lost)),
              write=True)
    job = restore.Restore(str(tmp_path / "fork"), ws.rules, Workspace(tmp_path / "fork",
                                                                      store).index,
                          TreeReader(store), store, sources=[str(origin)])
    real_copy = restore.files.copy_if_unchanged
    monkeypatch.setattr(restore.files, "copy_if_unchanged",
                        lambda *a: time.sleep(0.01) or real_copy(*a))  # slow copies
    with pytest.raises(StorageError, match=lost):
        job.run(tree)
    assert job.copying and all(task.done() for task in job.copying)


def test_a_restore_from_the_store_that_fails_midway_stops_its_writes_before_raising(
        store, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from wtb_ray.domain.errors import StorageError
    from wtb_ray.storage.schema import blobs
    from wtb_ray.workspace import restore

    origin = tmp_path / "origin"
    origin.mkdir()
    for i in range(6):
        (origin / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    ws = Workspace(origin, store)
    tree = ws.snapshot()
    lost = ws.reader.get(tree)["4.bin"][3][0]  # a chunk of a file in the third batch
    store.run(lambda conn: conn.execute(sa.delete(blobs).where(blobs.c.hash == lost)),
              write=True)
    monkeypatch.setattr(restore.blob_io, "BATCH", 2)  # two files per fetch
    real_write = restore.Restore._write_one
    monkeypatch.setattr(restore.Restore, "_write_one",
                        lambda self, *a: time.sleep(0.05) or real_write(self, *a))
    job = restore.Restore(str(tmp_path / "copy"), ws.rules,
                          Workspace(tmp_path / "copy", store).index, TreeReader(store), store)
    with pytest.raises(StorageError, match=lost):
        job.run(tree)
    assert job.tasks and all(task.done() for task in job.tasks)
