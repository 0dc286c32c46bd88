"""Watched workspaces (workspace/watch.py): a run's checkpoint examines only what inotify
says changed, and records exactly what a snapshot that examines every file records, after
every kind of change, including those the watch cannot see or gives up on."""

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.storage import blob_io
from wtb_ray.workspace import Workspace

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux")


def full_walk(store, root: Path) -> str:
    """The root tree a snapshot examining every file records (no watch, no memo)."""
    return Workspace(root, store).snapshot()


def make_tree(root: Path) -> None:
    for d in range(4):
        for f in range(5):
            path = root / f"d{d}" / "sub" / f"f{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{d}/{f}\n" * 50)
    (root / "top.txt").write_text("top\n")


def check(ws: Workspace, store, root: Path) -> str:
    """A run's checkpoint (its new blobs written, as the checkpoint's commit would), checked
    against a full walk."""
    tree, rows = ws.snapshot_for_commit()
    store.run(blob_io.put, rows, time.time(), write=True)
    assert tree == full_walk(store, root)
    return tree


def watched(store, tmp_path, **kwargs) -> tuple[Path, Workspace]:
    """A workspace of 4 directories of 5 files and a watched Workspace over it, after its
    first checkpoint (which examines everything and starts the watch)."""
    root = tmp_path / "ws"
    make_tree(root)
    ws = Workspace(root, store, watch=True, **kwargs)
    check(ws, store, root)
    return root, ws


def test_a_watched_run_records_what_a_full_walk_records_after_every_kind_of_change(
        store, tmp_path):
    root, ws = watched(store, tmp_path)
    assert ws.last_examined >= 20  # the first checkpoint examines everything

    check(ws, store, root)
    assert ws.last_examined == 0  # nothing happened: not one file stat-ed

    changes = [
        lambda: (root / "d1/sub/f2.txt").write_text("1/2\n" * 50),  # same size, new bytes
        lambda: (root / "d2/sub/f0.txt").open("a").write("more\n"),
        lambda: (root / "d0/new.txt").write_text("new\n"),
        lambda: (root / "d3/sub/f4.txt").unlink(),
        lambda: (root / "n1/n2/n3").mkdir(parents=True),
        lambda: (root / "n1/n2/n3/deep.txt").write_text("deep\n"),  # in a directory made above
        lambda: (root / "n1/n2/n3/deep.txt").write_text("DEEP\n"),
        lambda: os.chmod(root / "d0/sub/f1.txt", 0o600),
        lambda: os.utime(root / "top.txt", ns=(1, 1)),
        lambda: os.symlink("d0/new.txt", root / "link"),
        lambda: (os.unlink(root / "link"), os.symlink("top.txt", root / "link")),
        lambda: os.rename(root / "d0/new.txt", root / "d0/renamed.txt"),
        lambda: os.rename(root / "d0/renamed.txt", root / "d2/moved.txt"),
        lambda: ((root / "d1/sub/f3.txt").unlink(), (root / "d1/sub/f3.txt").mkdir(),
                 (root / "d1/sub/f3.txt/inside").write_text("x")),
        lambda: (shutil.rmtree(root / "d1/sub/f3.txt"), (root / "d1/sub/f3.txt").write_text("y")),
        lambda: os.rename(root / "d2", root / "d2-renamed"),  # the watch gives up here
        lambda: (root / "d2-renamed/sub/f1.txt").write_text("after the rename\n"),
        lambda: shutil.rmtree(root / "d3"),
        lambda: (root / "d3").mkdir(),
        lambda: (root / "d3/again.txt").write_text("again\n"),
    ]
    for change in changes:
        change()
        check(ws, store, root)
    check(ws, store, root)
    assert ws.last_examined == 0  # watching again after it gave up


def test_only_the_changed_paths_are_examined(store, tmp_path):
    root, ws = watched(store, tmp_path)
    (root / "d2/sub/f3.txt").write_text("changed\n")
    check(ws, store, root)
    assert ws.last_examined == 1


def test_a_file_with_another_link_is_always_examined(store, tmp_path):
    """A write through a hard link outside the workspace notifies only that other
    directory: such a file is stat-ed at every checkpoint."""
    root = tmp_path / "ws"
    make_tree(root)
    outside = tmp_path / "outside.txt"
    os.link(root / "d0/sub/f0.txt", outside)
    ws = Workspace(root, store, watch=True)
    before = check(ws, store, root)
    with open(outside, "r+") as f:  # same size, through the other name
        f.write("X")
    after = check(ws, store, root)
    assert after != before
    assert ws.last_examined == 1


def test_after_a_restore_for_a_run_the_first_checkpoint_examines_only_what_changed(
        store, tmp_path):
    root = tmp_path / "ws"
    make_tree(root)
    tree = Workspace(root, store).snapshot()
    (root / "d0/sub/f0.txt").write_text("to be undone\n")
    (root / "stray.txt").write_text("to be removed\n")
    ws = Workspace(root, store, watch=True)
    ws.restore(tree, watch=True)
    assert full_walk(store, root) == tree
    (root / "d3/sub/f1.txt").write_text("the run's change\n")
    check(ws, store, root)
    # the file changed, and the one the restore rewrote (its events came after the watch)
    assert ws.last_examined == 2


def test_a_snapshot_that_fails_loses_no_change_it_had_been_told_of(store, tmp_path):
    """The failed snapshot read the events; the next one examines everything again."""
    root, ws = watched(store, tmp_path, max_file_bytes=10_000)
    (root / "d1/sub/f1.txt").write_text("changed before the failure\n")
    (root / "too-big.bin").write_bytes(b"x" * 20_000)
    with pytest.raises(WorkspaceError, match=r"too-big\.bin"):
        ws.snapshot_for_commit()
    (root / "too-big.bin").unlink()
    check(ws, store, root)
    assert ws.last_examined >= 20


def test_an_overflowing_event_queue_makes_the_next_checkpoint_examine_everything(
        store, tmp_path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    root, ws = watched(store, tmp_path)
    a, b = root / "d0/sub/f0.txt", root / "d1/sub/f1.txt"
    for i in range(limit // 2 + 10):  # alternating: identical events in a row are merged
        os.utime(a, ns=(i, i))
        os.utime(b, ns=(i, i))
    (root / "d2/sub/f2.txt").write_text("lost in the overflow\n")
    check(ws, store, root)
    assert ws.last_examined >= 20


def test_without_inotify_instances_left_every_checkpoint_examines_every_file(store, tmp_path):
    """fs.inotify.max_user_instances reached (by this test, for real): no watch, no harm."""
    from inotify_simple import INotify

    root = tmp_path / "ws"
    make_tree(root)
    held = []
    try:
        while len(held) < 10_000:
            try:
                held.append(INotify())
            except OSError:
                break
        ws = Workspace(root, store, watch=True)
        check(ws, store, root)
        (root / "d0/sub/f0.txt").write_text("changed\n")
        check(ws, store, root)
        assert ws.last_examined >= 20
    finally:
        for fd in held:
            fd.close()
    check(ws, store, root)  # instances free again: the watch starts
    (root / "d0/sub/f0.txt").write_text("changed again\n")
    check(ws, store, root)
    assert ws.last_examined == 1


def test_close_stops_watching(store, tmp_path):
    root, ws = watched(store, tmp_path)
    ws.close()
    (root / "d0/sub/f0.txt").write_text("changed while not watched\n")
    check(ws, store, root)
    assert ws.last_examined >= 20
