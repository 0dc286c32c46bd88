"""Watched workspaces (workspace/watch.py): a run's checkpoint examines only what inotify
says changed, and records exactly what a snapshot that examines every file records, after
every kind of change, including those the watch cannot see or gives up on."""

import contextlib
import os
import random
import shutil
import sys
import time
from pathlib import Path

import pytest

from wtb_ray.domain.errors import WorkspaceError
from wtb_ray.storage import blob_io
from wtb_ray.workspace import TreeReader, Workspace

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux")


def full_walk(store, root: Path, ignore: list[str] | None = None) -> str:
    """The root tree a snapshot examining every file records (no watch, no memo)."""
    return Workspace(root, store, ignore=ignore).snapshot()


def not_dirs(store, tree: str) -> dict[str, list]:
    """A tree's files and links, by path."""
    return {path: entry for path, entry in TreeReader(store).walk(tree) if entry[0] != "d"}


def is_tracked(ws: Workspace, rel: str) -> bool:
    """Neither the path nor a directory above it is ignored."""
    parts = rel.split("/")
    return not any(ws.rules.ignored("/".join(parts[:i + 1]), parts[i], i < len(parts) - 1)
                   for i in range(len(parts)))


def make_tree(root: Path) -> None:
    for d in range(4):
        for f in range(5):
            path = root / f"d{d}" / "sub" / f"f{f}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{d}/{f}\n" * 50)
    (root / "top.txt").write_text("top\n")


def check(ws: Workspace, store, root: Path, restored: bool = False) -> str:
    """A run's checkpoint (its new blobs written, as the checkpoint's commit would), checked
    against a full walk. ``restored``: the run has had a rollback, whose restore records no
    fingerprints for the files it writes (the next read of each does)."""
    tree, rows = ws.snapshot_for_commit()
    store.run(blob_io.put, rows, time.time(), write=True)
    assert tree == full_walk(store, root, ws.rules.patterns)
    # The stat index, updated in place, holds each file there is and nothing else: its
    # chunks' fingerprints for every one, a stat entry for those old enough to vouch for.
    files = {rel for p in root.rglob("*")
             if p.is_file() and not p.is_symlink() and is_tracked(ws, rel := p.relative_to(
                 root).as_posix())}
    assert set(ws.index.quick) <= files and set(ws.index.entries) <= files
    if not restored:
        assert set(ws.index.quick) == files
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
    check(ws, store, root, restored=True)
    # the file changed, and the one the restore rewrote (its events came after the watch)
    assert ws.last_examined == 2


def test_a_rollback_in_a_watched_run_leaves_no_index_entry_for_what_it_removed(
        store, tmp_path):
    """The run's checkpoints update the stat index in place: what a restore removes (a file,
    a directory of files) leaves it, and the checkpoints after it record what a full walk
    does."""
    root, ws = watched(store, tmp_path)
    (root / "later.txt").write_text("made after the first checkpoint\n")
    (root / "d0/sub/f0.txt").write_text("changed\n")
    (root / "newdir/deeper").mkdir(parents=True)
    (root / "newdir/deeper/x.txt").write_text("x\n")
    before = Workspace(root, store).snapshot()  # what a rollback returns to
    check(ws, store, root)
    (root / "later2.txt").write_text("after\n")
    (root / "newdir/deeper/y.txt").write_text("y\n")
    check(ws, store, root)
    assert "later2.txt" in ws.index.quick
    ws.restore(before, watch=True)  # a rollback to a checkpoint of the run
    assert full_walk(store, root) == before
    check(ws, store, root, restored=True)  # no entry for later2.txt or newdir/deeper/y.txt
    shutil.rmtree(root / "newdir")  # the run goes on: a directory of files removed
    check(ws, store, root, restored=True)
    assert not any(rel.startswith("newdir/") for rel in ws.index.quick)


def test_a_directory_a_rollback_keeps_for_its_ignored_paths_is_recorded_as_a_walk_does(
        store, tmp_path):
    """A rollback removes a directory the checkpoint lacks but for its ignored paths, so the
    directory stays: the next watched checkpoint lists it as a full walk does (it used to
    reuse the checkpoint's listing of the parent, leaving the directory out)."""
    root, ws = watched(store, tmp_path, ignore=["*.tmp"])
    before = full_walk(store, root, ["*.tmp"])
    (root / "d1" / "made").mkdir()
    (root / "d1" / "made" / "scratch.tmp").write_text("ignored\n")
    (root / "d1" / "made" / "out.txt").write_text("tracked\n")
    check(ws, store, root)
    ws.restore(before, watch=True)
    assert sorted(p.name for p in (root / "d1" / "made").iterdir()) == ["scratch.tmp"]
    after = check(ws, store, root, restored=True)  # equal to a full walk's
    assert "d1/made" in dict(TreeReader(store).walk(after)) and after != before


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


def _inotify_fds() -> int:
    """How many inotify instances this process holds open (closing threads may close some
    while they are counted)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


def test_closed_watches_release_their_inotify_instances(tmp_path):
    """Closing is handed to a thread (the kernel makes it wait); every instance is still
    released, and counted as held until it is, so a process keeps starting watches."""
    from wtb_ray.workspace import watch

    before, held = _inotify_fds(), watch._held
    for _ in range(watch.MAX_PER_PROCESS * 2):
        w = None
        deadline = time.monotonic() + 30
        while w is None and time.monotonic() < deadline:  # all held: wait for a release
            w = watch.Watch.start(lambda *_: False)
        assert w is not None, "closed watches were never released"
        w.add(str(tmp_path), "")
        w.close()
        assert w.fd is None and w.broken

    def released() -> bool:  # (earlier tests' watches may be released meanwhile too)
        return watch._held <= held and _inotify_fds() <= before

    deadline = time.monotonic() + 30
    while not released() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert released()


def _paths(root: Path) -> tuple[list[Path], list[Path]]:
    """The workspace's files (and links) and directories, WTB's own directory left out."""
    files, dirs = [], []
    for path in sorted(root.rglob("*")):
        if path.relative_to(root).parts[0] == ".wtb":
            continue
        (dirs if path.is_dir() and not path.is_symlink() else files).append(path)
    return files, dirs


def _random_change(rng: random.Random, root: Path) -> None:
    files, dirs = _paths(root)
    where = rng.choice([root, *dirs])
    kind = rng.choice(["new", "new", "rewrite", "append", "delete", "mkdir", "rmtree",
                       "rename", "chmod", "file-to-dir", "dir-to-file", "link", "move-dir"])
    name = f"n{rng.randrange(10**9)}"  # new each time
    if kind == "new" or (kind != "mkdir" and not files):
        (where / f"{name}.txt").write_text(name * rng.randint(1, 300))
    elif kind == "rewrite":
        target = rng.choice(files)
        if not target.is_symlink():
            target.write_bytes(rng.randbytes(rng.randint(0, 5000)))
    elif kind == "append":
        target = rng.choice(files)
        if not target.is_symlink():
            with open(target, "a") as f:
                f.write("more\n")
    elif kind == "delete":
        rng.choice(files).unlink()
    elif kind == "mkdir":
        (where / name / "inner").mkdir(parents=True)
        (where / name / "inner" / "f.txt").write_text(name)
    elif kind == "rmtree" and dirs:
        shutil.rmtree(rng.choice(dirs))
    elif kind == "rename":
        target = rng.choice(files)
        os.rename(target, where / f"{name}.moved")
    elif kind == "chmod":
        target = rng.choice(files)
        if not target.is_symlink():
            os.chmod(target, rng.choice([0o600, 0o644, 0o755]))
    elif kind == "file-to-dir":
        target = rng.choice(files)
        target.unlink()
        target.mkdir()
        (target / "inside.txt").write_text("inside")
    elif kind == "dir-to-file" and dirs:
        target = rng.choice(dirs)
        shutil.rmtree(target)
        target.write_text("was a directory")
    elif kind == "link":
        os.symlink(rng.choice(files).name, where / f"{name}.link")
    elif kind == "move-dir" and dirs:  # the watch gives up: the next checkpoint walks all
        target = rng.choice(dirs)
        if not (root / f"{name}-moved").exists():
            os.rename(target, root / f"{name}-moved")


# Ignoring about a tenth of new files and every directory made by "mkdir", tracking a tenth
# of those files again, and one directory of the initial tree.
IGNORE = ["*5.txt", "!*55.txt", "inner/", "d2/"]


@pytest.mark.parametrize("seed, ignore", [(0, None), (1, None), (2, None), (3, None),
                                          (4, IGNORE), (5, IGNORE)])
def test_random_changes_and_rollbacks_record_what_a_full_walk_records(store, tmp_path, seed,
                                                                      ignore):
    """Every kind of change, several at a time, and rollbacks to earlier checkpoints: each
    checkpoint of the watched run (the index updated in place, only named paths examined)
    records what a full walk does, and its index holds exactly the files there are (that
    its ignore patterns, negations among them, leave tracked)."""
    rng = random.Random(seed)
    root, ws = watched(store, tmp_path, ignore=ignore)
    trees = [check(ws, store, root)]
    restored = False
    for _ in range(40):
        for _ in range(rng.randint(1, 4)):
            _random_change(rng, root)
        trees.append(check(ws, store, root, restored))
        if rng.random() < 0.2:
            target = rng.choice(trees)
            ws.restore(target, watch=True)
            restored = True
            for tree in (full_walk(store, root, ignore), check(ws, store, root, restored)):
                if ignore is None:
                    assert tree == target
                else:  # a directory the target lacks stays if it holds ignored paths
                    assert not_dirs(store, tree) == not_dirs(store, target)
