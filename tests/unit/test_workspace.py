"""Workspace snapshots on the embedded store: the stat index, fingerprints, streaming, the
tree memo, ignore patterns and size limits. Restores: test_workspace_restore.py."""

import os
import shutil
import time
import tracemalloc

import pytest

from tests.unit.aging import OLD, age
from wtb_ray import InvalidInput
from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.workspace import IgnoreRules, Workspace


def test_unchanged_files_are_not_read_again(store, tmp_path, monkeypatch):
    from wtb_ray.workspace import index as index_module

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
    # A new process: the index is on disk, and none has been parsed here.
    monkeypatch.setattr(index_module, "_parsed", index_module._Parsed(4))
    again = Workspace(tmp_path / "ws", store)
    again.restore(second)
    assert again.snapshot() == second and again.last_files_read == 0


def test_checkpoints_save_the_stat_index_every_few_seconds(store, tmp_path, monkeypatch):
    """Not only when a run stops: a process killed mid-run leaves a recent index."""
    import wtb_ray.workspace as workspace
    from wtb_ray.workspace.index import StatIndex

    monkeypatch.setattr(workspace, "INDEX_SAVE_S", 1.0)
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.txt").write_text("a")
    age(root / "a.txt")
    ws = Workspace(root, store)
    ws.snapshot_for_commit()
    assert StatIndex.load(root).entries == {}  # within the interval: not written yet
    time.sleep(1.0)
    ws.snapshot_for_commit()
    assert set(StatIndex.load(root).entries) == {"a.txt"}  # what a kill now would leave


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
    from wtb_ray.workspace import chunker, tree

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
    monkeypatch.setattr(chunker.codec, "chunk_digest", lambda b: hashed.append(len(b)) or
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
    (["*.log", "!keep.log"], "a/keep.log", False, False),  # the last match decides
    (["*.log", "!keep.log"], "a/run.log", False, True),
    (["!keep.log", "*.log"], "a/keep.log", False, True),
    (["*.ckpt", "!/best.ckpt"], "best.ckpt", False, False),
    (["*.ckpt", "!/best.ckpt"], "old/best.ckpt", False, True),
    (["out/", "!out/"], "out", True, False),
    (["out/", "!out/"], "out", False, False),
    (["\\!bang"], "!bang", False, True),  # a backslash makes "!" part of the name
    (["\\#hash"], "#hash", False, True),
])
def test_ignore_patterns(pattern, path, is_dir, ignored):
    name = path.rsplit("/", 1)[-1]
    patterns = pattern if isinstance(pattern, list) else [pattern]
    assert IgnoreRules(patterns).ignored(path, name, is_dir) is ignored


def test_the_wtb_directory_is_always_ignored_and_bad_patterns_refused():
    assert IgnoreRules([]).ignored(".wtb", ".wtb", True)
    assert not IgnoreRules([]).ignored("sub/.wtb", ".wtb", True)
    assert IgnoreRules(["!.wtb"]).ignored(".wtb", ".wtb", True)  # not even by a negation
    for bad in ("!", "/", "!/"):
        with pytest.raises(InvalidInput, match=f"ignore pattern '{bad}' matches nothing"):
            IgnoreRules([bad])


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


def test_entries_kept_from_the_last_snapshot_follow_mode_changes_and_type_swaps(store,
                                                                                tmp_path):
    """An unchanged file keeps the last snapshot's entry; a mode change, or a path that was
    a link or a directory, gets a new one (the hashes are those of a snapshot from scratch)."""
    root = tmp_path / "ws"
    root.mkdir()
    for name in ("keep.txt", "mode.txt", "swap"):
        (root / name).write_text(f"{name}\n")
    (root / "link").symlink_to("keep.txt")
    age(*[p for p in root.iterdir() if not p.is_symlink()])
    ws = Workspace(root, store)
    ws.snapshot()
    first = ws.snapshot()  # the index vouches for every file now
    mode = (root / "mode.txt").stat().st_mode & 0o777
    (root / "mode.txt").chmod(0o600)
    (root / "swap").unlink()
    (root / "swap").mkdir()
    (root / "swap" / "inner.txt").write_text("inner\n")
    (root / "link").unlink()
    (root / "link").write_text("now a file\n")
    age(root / "mode.txt", root / "swap" / "inner.txt", root / "link")
    second = ws.snapshot()
    entries = ws.reader.get(second)
    assert entries["mode.txt"][1] == 0o600 and entries["swap"][0] == "d"
    assert entries["link"][0] == "f" and entries["keep.txt"] == ws.reader.get(first)["keep.txt"]
    (root / ".wtb" / "index").unlink()
    assert Workspace(root, store).snapshot() == second
    shutil.rmtree(root / "swap")
    (root / "swap").write_text("swap\n")
    (root / "mode.txt").chmod(mode)
    (root / "link").unlink()
    (root / "link").symlink_to("keep.txt")
    assert ws.snapshot() == first


def test_after_a_restore_the_next_snapshot_encodes_only_the_trees_it_changed(store, tmp_path,
                                                                            monkeypatch):
    """A resume opens the workspace afresh and restores the head's files: the trees it read
    serve as the next snapshot's memo."""
    from wtb_ray.workspace import snapshot

    root = tmp_path / "ws"
    for d in ("a", "b", "b/c"):
        (root / d).mkdir(parents=True)
        (root / d / "f.txt").write_text(f"{d}\n")
    age(*[p for p in root.rglob("*") if p.is_file()])
    head = Workspace(root, store).snapshot()
    resumed = Workspace(root, store)
    resumed.restore(head)
    encoded = []
    real = snapshot.tree.encode
    monkeypatch.setattr(snapshot.tree, "encode", lambda e: encoded.append(sorted(e)) or real(e))
    (root / "b" / "c" / "f.txt").write_text("changed\n")
    resumed.snapshot()
    assert encoded == [["f.txt"], ["c", "f.txt"], ["a", "b", "clock-probe"]]


def test_a_directory_emptied_by_a_restore_to_no_files_is_recorded_with_its_empty_tree(
        store, tmp_path):
    from wtb_ray.storage import blob_io
    from wtb_ray.workspace import EMPTY_TREE

    root = tmp_path / "ws"
    root.mkdir()
    (root / "f.txt").write_text("x")
    ws = Workspace(root, store)
    ws.restore(None)  # as a rollback to a checkpoint from before the workspace had files
    assert [p.name for p in root.iterdir()] == [".wtb"]
    assert ws.snapshot() == EMPTY_TREE
    assert store.run(blob_io.existing, [EMPTY_TREE]) == {EMPTY_TREE}


def test_a_stat_index_that_cannot_be_saved_costs_a_warning_not_the_snapshot(store, tmp_path,
                                                                            caplog):
    """The index is a cache: when its file cannot be replaced (here a directory stands where
    it goes), the snapshot still records the files, and the next process reads them again."""
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.txt").write_text("first\n")
    ws = Workspace(root, store)
    ws.snapshot()
    (root / ".wtb" / "index").unlink()
    (root / ".wtb" / "index" / "in-the-way").mkdir(parents=True)
    (root / "a.txt").write_text("second\n")
    tree = ws.snapshot()
    assert "could not save the workspace's stat index" in caplog.text
    assert sorted(p.name for p in (root / ".wtb").iterdir()) == ["index"]  # no temporary left
    shutil.rmtree(root / ".wtb")
    again = Workspace(root, store)
    assert again.snapshot() == tree and again.last_files_read == 1


def test_an_index_is_parsed_again_only_when_its_file_changed(store, tmp_path, monkeypatch):
    """A fork loads its origin's index right after the origin's run wrote it: while the file
    is the one this process wrote or read (same inode, size and times), its entries are
    reused; a file another process replaced is parsed again."""
    from wtb_ray.workspace import index as index_module
    from wtb_ray.workspace.index import StatIndex

    root = tmp_path / "ws"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.txt").write_text(f"file {i}\n")
    age(*root.iterdir())
    ws = Workspace(root, store)
    ws.snapshot()
    parsed = []
    real = index_module._parse
    monkeypatch.setattr(index_module, "_parse", lambda data: parsed.append(1) or real(data))
    first = StatIndex.load(root)
    assert parsed == [] and first.entries == ws.index.entries and len(first.entries) == 3
    path = root / ".wtb" / "index"
    replacement = root / ".wtb" / "other-process.tmp"
    replacement.write_bytes(path.read_bytes())
    os.replace(replacement, path)  # the same bytes in a new file: parsed again, once
    assert StatIndex.load(root).entries == first.entries and parsed == [1]
    assert StatIndex.load(root).entries == first.entries and parsed == [1]
    path.write_bytes(b"not json")
    assert StatIndex.load(root).entries == {} and parsed == [1, 1]
